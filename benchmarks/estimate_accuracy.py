"""How close the final-evaluation estimates come to a real run: estimate / actual, per attack and in total.

    python benchmarks/estimate_accuracy.py                       # one trial of sweeps/k_interval.yaml's demo profile (k=20, seed 0)
    python benchmarks/estimate_accuracy.py --set base.epochs=3   # any `orch sweep` --set / --profile

Three numbers for the same config, measured in one process, one after the other:

- **dry run**: what ``orch sweep --dry-run`` prints per trial (``orchestrator.estimate.probe``: a probe model
  trained on a few batches, every final attack timed on a few unfoolable points, scaled; every point assumed to
  stay robust, so it should be an upper bound: ratio >= 1);
- **in run**: what ``orch train`` / a sweep's trial prints before its evaluation starts (the same probe on the
  trained checkpoint, scaled by its validation clean / PGD accuracy);
- **actual**: ``seconds/<ckpt>/<entry>`` of the real run's final evaluation (``training.run``).

Timings on a shared machine are noisy: read the ratios, measured side by side in one run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", default=str(ROOT / "sweeps" / "k_interval.yaml"))
    ap.add_argument("--profile", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--trial", type=int, default=6, help="index of the trial to run (default 6: k=20, seed 0)")
    args = ap.parse_args()

    import torch

    from orchestrator.estimate import probe
    from orchestrator.spec import load_spec
    from training import run
    from training.config import RunConfig

    torch.set_num_threads(1)  # as a sweep's trial (1 CPU)
    spec = load_spec(Path(args.file), profile=args.profile, sets=args.sets)
    trial = spec.trials[args.trial]
    with tempfile.TemporaryDirectory(prefix="orch-estimate-") as tmp:
        d = spec.run_dict(trial.swept, trial.seed, name=trial.name, out_dir=tmp)
        cfg = RunConfig.from_dict(d)
        print(f"{spec.name} trial {trial.name}: {cfg.epochs} epochs, attacks {', '.join(cfg.eval.attacks)}, "
              f"{cfg.eval.subset} test images, checkpoints {', '.join(cfg.eval.checkpoints)}", flush=True)
        t0 = time.perf_counter()
        dry = probe(d, trial.name)
        dry_s = time.perf_counter() - t0
        events: list[dict] = []
        t0 = time.perf_counter()
        final = [r for r in run(cfg, on_eval=events.append) if r.get("final")][0]
        run_s = time.perf_counter() - t0
    start = next(e for e in events if e["event"] == "eval_start")
    actual = final["time/eval_s"]
    shared = final.get("best_epoch") == final.get("epochs_run")
    print(f"dry-run probe took {dry_s:.1f} s; the run {run_s:.1f} s (training {final['time/train_s']:.1f} s)")
    print(f"best epoch {final.get('best_epoch')} of {final.get('epochs_run')}"
          + (" (best = last: attacked once)" if shared else ""))
    print(f"{'':28s} {'estimate':>10s} {'actual':>10s} {'ratio':>7s}")
    print(f"{'dry run (upper bound)':28s} {dry.final_eval_s:10.1f} {actual:10.1f} {dry.final_eval_s / actual:7.2f}")
    print(f"{'in run (before evaluating)':28s} {start['estimate_s']:10.1f} {actual:10.1f} {start['estimate_s'] / actual:7.2f}")
    acc = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(("best/", "last/")) and "/aa/" not in k}
    print("accuracies: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    print("actual seconds per entry: " + ", ".join(f"{k[len('seconds/'):]} {v:.1f}" for k, v in final.items() if k.startswith("seconds/")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
