"""Many short trials: orch sweep against a bare Ray Tune function trainable, same workload, side by side.

    python benchmarks/sweep_scale.py                  # 20, 100 and 500 trials, both ways, + bookkeeping at 2000
    python benchmarks/sweep_scale.py --quick          # 20 trials both ways + bookkeeping at 200 (~3 min here)
    python benchmarks/sweep_scale.py --sizes 100 --bookkeeping 0
    python benchmarks/sweep_scale.py --sizes 100 --bookkeeping 0 --train-size 2048 --repeat 2   # ~1 s trials, twice

The workload (issue 14): 1 epoch of ``standard`` on ``synthetic`` (512 training images), small_cnn width 4, clean
evaluation on 64 test images; n/2 learning rates x 2 seeds. Run two ways, each in its own process:

- **bare**: ``tune.Tuner`` over the same run configs, a function trainable that calls ``training.run`` and
  reports every record (one CPU per trial, ``reuse_actors=True``, orch's Ray/Tune environment settings);
- **orch**: ``orch sweep`` on the equivalent sweep file (MLflow in a SQLite store in the sweep folder, Parquet,
  live view, checkpoints, the closing report), with ``ORCH_TIMING`` set so every process records spans.

Printed per size: wall seconds (launch to exit), efficiency = Σ trial_s / (wall x CPUs), where trial_s is the
time each trial function ran on its worker, orch/bare = bare wall / orch wall (orch's throughput relative to bare
Tune's), the driver's peak RSS and CPU seconds (its own process, all threads), and per-trial driver overhead =
(orch wall - bare wall) / trials. Then a table of where a short trial's time goes, from the spans (driver: MLflow, Parquet, live view, the curves plot; worker:
actor start, imports, run() set-up, training, evaluation, reporting) and from direct measurements of data load,
model build and a checkpoint write for this config.

``--bookkeeping N`` runs N trials through orch's driver whose trainable reports one epoch record and a final
record and returns at once (no torch), and prints the driver's cost per trial at N/10 and N trials: it must stay
flat (no growth with the number of trials). Machine load skews every figure: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# --train-size / --epochs reach the child processes through these (default: the workload)
BASE = {
    "epochs": int(os.environ.get("ORCH_SCALE_EPOCHS", "1")),
    "data": {"name": "synthetic", "train_size": int(os.environ.get("ORCH_SCALE_TRAIN_SIZE", "512")), "test_size": 64},
    "model": {"name": "small_cnn", "width": 4},
    "method": {"name": "standard"},
    "eval": {"attacks": ["clean"], "subset": 64},
}


def lrs(n_trials: int) -> list[float]:
    k = max(1, n_trials // 2)
    return [round(0.01 + 0.19 * i / max(1, k - 1), 6) for i in range(k)]


def sweep_file(folder: Path, n: int, name: str) -> Path:
    import yaml

    doc = {"name": name, "base": BASE, "axes": {"optim.lr": lrs(n)}, "seeds": 2}
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def run_child(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> tuple[float, int, float]:
    """Run a child process; returns (wall s, exit code, its peak RSS in MB)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    p = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, p.returncode, ru.ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- bare Ray Tune


def bare_main(n: int, folder: str, out_json: str) -> None:
    """The child process of the bare way: Tune over the same configs, no orch machinery."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.tuner import configure_env

    configure_env(local=True)
    import ray
    from ray import tune

    def trial(config: dict[str, Any]) -> None:
        import torch

        from training import run
        from training.config import RunConfig

        t0 = time.time()
        torch.set_num_threads(1)
        for rec in run(RunConfig.from_dict(config["run"])):
            if rec.get("final"):
                rec = {**rec, "time/trial_s": time.time() - t0}
            tune.report(rec)

    cpus = os.cpu_count() or 1
    runs = []
    for i, lr in enumerate(lrs(n)):
        for seed in (0, 1):
            d = json.loads(json.dumps(BASE))
            d["optim"] = {"lr": lr}
            d.update(seed=seed, name=f"lr={lr},seed={seed}", out_dir=f"{folder}/trials/{i}-{seed}")
            runs.append(d)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    grid = tune.Tuner(
        tune.with_resources(trial, {"cpu": 1}),
        param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cpus, reuse_actors=True),
        run_config=tune.RunConfig(name="bare", storage_path=folder, verbose=0),
    ).fit()
    trial_s = [r.metrics.get("time/trial_s", 0.0) for r in grid]
    ray.shutdown()
    import resource

    Path(out_json).write_text(json.dumps({"trial_s": trial_s, "errors": sum(r.error is not None for r in grid),
                                          "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))


def run_bare(n: int, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"bare-{n}"
    folder.mkdir()
    out = folder / "result.json"
    wall, rc, rss = run_child([sys.executable, __file__, "--bare-child", str(n), str(folder), str(out)], log=folder / "log.txt")
    if rc != 0:
        raise SystemExit(f"bare run failed ({rc}); see {folder / 'log.txt'}")
    r = json.loads(out.read_text())
    return {"wall": wall, "rss_mb": rss, "trial_s": r["trial_s"], "errors": r["errors"], "cpu_s": r["cpu_s"]}


# ---------------------------------------------------------------------------------------------- orch


def run_orch(n: int, tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from orchestrator.results import read_rows

    folder = tmp / f"orch-{n}"
    (folder / "timing").mkdir(parents=True)
    f = sweep_file(folder, n, f"scale-{n}")
    wall, rc, rss = run_child([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(folder / "data"), "--yes"],
                              env={"ORCH_TIMING": str(folder / "timing"), "COLUMNS": "160"}, log=folder / "log.txt")
    if rc != 0:
        raise SystemExit(f"orch sweep failed ({rc}); see {folder / 'log.txt'}")
    rows, _ = read_rows(folder / "data" / "sweeps" / f"scale-{n}" / "results.parquet")
    from orchestrator.timing import read

    cpu = sum(s["s"] for s in read(folder / "timing") if s["what"] == "driver/cpu")
    return {"wall": wall, "rss_mb": rss, "cpu_s": cpu, "trial_s": [r.get("time/trial_s") or 0.0 for r in rows], "rows": rows,
            "timing": folder / "timing", "statuses": sorted({r["status"] for r in rows})}


# ---------------------------------------------------------------------------------------------- where the time goes


def direct_costs(reps: int = 5) -> dict[str, float]:
    """Data load, model build and one checkpoint write for the benchmark's config, measured in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from training import checkpoint as ckpt
    from training.config import RunConfig
    from training.data import load as load_data
    from training.models import create_model

    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({**BASE, "out_dir": "/nonexistent"})
    out: dict[str, list[float]] = {"data load": [], "model build": [], "checkpoint write": []}
    with tempfile.TemporaryDirectory() as d:
        from training import data as data_module

        for _ in range(reps):
            data_module._LAST.clear()  # a worker's first trial: the load a cached worker skips afterwards
            t0 = time.perf_counter()
            data = load_data(cfg.data)
            t1 = time.perf_counter()
            model = create_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.channels, image_size=data.image_size,
                                 activation=cfg.model.activation, width=cfg.model.width, mean=data.mean, std=data.std)
            t2 = time.perf_counter()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            ckpt.save(Path(d) / "last.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict()})
            t3 = time.perf_counter()
            out["data load"].append(t1 - t0)
            out["model build"].append(t2 - t1)
            out["checkpoint write"].append(t3 - t2)
    return {k: statistics.median(v) for k, v in out.items()}


def breakdown(o: dict[str, Any], direct: dict[str, float]) -> list[tuple[str, str, float, str]]:
    """(side, what, mean seconds per trial, how measured) from the orch run's spans and results."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.timing import read

    spans = read(o["timing"])
    n = len(o["rows"])
    tot: dict[str, float] = {}
    for s in spans:
        tot[s["what"]] = tot.get(s["what"], 0.0) + s["s"]
    start = {s["key"]: s["t"] for s in spans if s["what"] == "driver/trial_start"}
    enter = {s["key"]: s["t"] for s in spans if s["what"] == "worker/enter"}
    actor = [enter[k] - start[k] for k in enter if k in start and enter[k] >= start[k]]
    epoch_s = sum((r.get("epoch/time/epoch_s") or 0.0) for r in o["rows"])
    epoch_eval_s = sum((r.get("epoch/time/epoch_eval_s") or 0.0) for r in o["rows"])
    eval_s = sum((r.get("time/eval_s") or 0.0) for r in o["rows"])
    per = lambda x: x / max(n, 1)  # noqa: E731
    setup = tot.get("worker/run_epoch", 0.0) - epoch_s - epoch_eval_s
    table = [
        ("driver", "MLflow: create run + params (trial start)", per(tot.get("driver/mlflow_start", 0.0)), "span"),
        ("driver", "MLflow: tags + epoch metrics", per(tot.get("driver/mlflow_epoch", 0.0)), "span"),
        ("driver", "MLflow: final metrics, artifacts, status (trial end)", per(tot.get("driver/mlflow_end", 0.0) - tot.get("driver/curves_png", 0.0)), "span"),
        ("driver", "  curves.png plot (in the trial end)", per(tot.get("driver/curves_png", 0.0)), "span"),
        ("driver", "results.parquet upsert", per(tot.get("driver/parquet", 0.0)), "span"),
        ("driver", "live view", per(tot.get("driver/live", 0.0)), "span"),
        ("worker", "trial start -> function entered (scheduling, actor start)", statistics.mean(actor) if actor else float("nan"), "spans"),
        ("worker", "imports (torch, ray, training; once per worker)", per(tot.get("worker/imports", 0.0)), "span"),
        ("worker", "config, trial folder, lock", per(tot.get("worker/prepare", 0.0)), "span"),
        ("worker", "run() set-up + checkpoint writes (epoch step - train - epoch eval)", per(setup), "span - records"),
        ("worker", "  of which: data load (a worker's first trial; cached after)", direct["data load"], "direct"),
        ("worker", "  of which: model build", direct["model build"], "direct"),
        ("worker", "  of which: one checkpoint write (best + last: 2)", direct["checkpoint write"], "direct"),
        ("worker", "training (time/epoch_s)", per(epoch_s), "record"),
        ("worker", "per-epoch evaluation (time/epoch_eval_s)", per(epoch_eval_s), "record"),
        ("worker", "final evaluation (time/eval_s)", per(eval_s), "record"),
        ("worker", "final step of run() other than evaluation", per(tot.get("worker/run_final", 0.0) - eval_s), "span - record"),
        ("worker", "reporting (state, checkpoint staging, tune.report)", per(tot.get("worker/report", 0.0)), "span"),
    ]
    return table


# ---------------------------------------------------------------------------------------------- bookkeeping only


def bookkeeping_trainable(config: dict[str, Any], ctx: Any) -> None:
    """Reports one epoch record and a final record, like a trial, and returns: the driver's work only."""
    from ray import tune

    from training.metrics import EPOCH_KEYS
    from orchestrator.sweepdir import trial_dir

    trial_dir(ctx.trials_dir, config["trial"]["name"], config["trial"]["key"]).mkdir(parents=True, exist_ok=True)
    rec = {k: 0.5 for k in EPOCH_KEYS}
    rec.update(epoch=1, **{"time/trial_s": 0.0})
    tune.report(rec)
    tune.report({"final": True, "outcome": "finished", "epochs_run": 1, "best_epoch": 1, "best/clean": 0.5,
                 "last/clean": 0.5, "time/train_s": 0.0, "time/eval_s": 0.0, "n_test": 64, "time/trial_s": 0.0})


def bookkeeping_child(n: int, folder: str, out_json: str) -> None:
    sys.path.insert(0, str(ROOT))
    from rich.console import Console

    import orchestrator.tuner as tuner
    from orchestrator.spec import load_spec

    tuner.train_trial = bookkeeping_trainable  # the only change: the trial function
    f = sweep_file(Path(folder), n, f"book-{n}")
    spec = load_spec(f, yes=True)
    t0 = time.perf_counter()
    res = tuner.run_sweep(spec, sweep_dir=Path(folder) / "sweep", console=Console(file=open(os.devnull, "w")))
    wall = time.perf_counter() - t0
    from orchestrator.timing import read

    spans = read(os.environ["ORCH_TIMING"])
    ends = sorted(s["t"] for s in spans if s["what"] == "driver/trial_start")  # one per trial
    driver = sorted((s["t"], s["s"]) for s in spans if s["what"].startswith("driver/") and s["what"] != "driver/curves_png")
    Path(out_json).write_text(json.dumps({"wall": wall, "statuses": res.statuses, "ends": ends, "driver": driver}))


def run_bookkeeping(n: int, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"book-{n}"
    (folder / "timing").mkdir(parents=True)
    out = folder / "result.json"
    wall, rc, rss = run_child([sys.executable, __file__, "--bookkeeping-child", str(n), str(folder), str(out)],
                              env={"ORCH_TIMING": str(folder / "timing")}, log=folder / "log.txt")
    if rc != 0:
        raise SystemExit(f"bookkeeping run failed ({rc}); see {folder / 'log.txt'}")
    r = json.loads(out.read_text())
    r["rss_mb"] = rss
    return r


def flatness(r: dict[str, Any], n: int) -> list[tuple[str, float, float]]:
    """Driver callback seconds per trial and wall seconds per trial over the first, middle and last tenth of the
    trials (windows between trial starts)."""
    ends = r["ends"]
    out = []
    tenth = max(1, n // 10)
    for i in (0, 4, 9):
        lo, hi = i * tenth, min(len(ends), (i + 1) * tenth) - 1
        if hi <= lo:
            continue
        t_lo, t_hi = ends[lo], ends[hi]
        cb = sum(s for t, s in r["driver"] if t_lo < t <= t_hi)
        out.append((f"trials {lo + 1}-{hi + 1}", cb / (hi - lo), (t_hi - t_lo) / (hi - lo)))
    return out


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20,100,500", help="trial counts, comma-separated (default 20,100,500)")
    ap.add_argument("--ways", default="bare,orch", help="bare, orch or both")
    ap.add_argument("--bookkeeping", type=int, default=2000, help="trials of the bookkeeping-only run (0: skip)")
    ap.add_argument("--quick", action="store_true", help="--sizes 20 --bookkeeping 200")
    ap.add_argument("--keep", type=Path, default=None, help="keep the folders here (default: a temporary folder)")
    ap.add_argument("--train-size", type=int, default=512, help="training images per trial (default 512: ~0.4 s trials here)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="run each size's ways this many times, alternating (noise)")
    args = ap.parse_args()
    os.environ["ORCH_SCALE_TRAIN_SIZE"], os.environ["ORCH_SCALE_EPOCHS"] = str(args.train_size), str(args.epochs)
    BASE["data"]["train_size"], BASE["epochs"] = args.train_size, args.epochs
    if args.quick:
        args.sizes, args.bookkeeping = "20", 200
    sizes = [int(x) for x in args.sizes.split(",") if x]
    ways = args.ways.split(",")
    tmpd = None
    if args.keep:
        tmp = args.keep.resolve()
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        tmpd = tempfile.TemporaryDirectory(prefix="orch-scale-")
        tmp = Path(tmpd.name)
    cpus = os.cpu_count() or 1
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f} at the start; workload: {json.dumps(BASE)}", flush=True)
    last_orch = None
    for n in sizes:
        for rep in range(args.repeat):
            res = {}
            for way in ways:
                sub = tmp / f"rep{rep}" if args.repeat > 1 else tmp
                sub.mkdir(exist_ok=True)
                res[way] = run_bare(n, sub) if way == "bare" else run_orch(n, sub)
                r = res[way]
                eff = sum(r["trial_s"]) / (r["wall"] * cpus)
                print(f"{n:5d} trials  {way:4s}  wall {r['wall']:7.1f} s  Σ trial_s {sum(r['trial_s']):7.1f} s  "
                      f"efficiency {eff:.2f}  driver peak RSS {r['rss_mb']:.0f} MB, CPU {r['cpu_s']:.1f} s  "
                      f"({len(r['trial_s'])} trials)", flush=True)
            if "bare" in res and "orch" in res:
                b, o = res["bare"], res["orch"]
                print(f"{n:5d} trials  orch/bare {b['wall'] / o['wall']:.2f}  "
                      f"orch overhead {(o['wall'] - b['wall']) / n:+.3f} s per trial", flush=True)
            if "orch" in res:
                last_orch = res["orch"]
    if last_orch is not None:
        direct = direct_costs()
        n = len(last_orch["rows"])
        print(f"\nwhere a short trial's time goes (orch, {n} trials, mean seconds per trial)")
        print(f"{'side':7s} {'what':70s} {'s/trial':>8s}  how")
        for side, what, s, how in breakdown(last_orch, direct):
            print(f"{side:7s} {what:70s} {s:8.3f}  {how}")
    if args.bookkeeping:
        n = args.bookkeeping
        r = run_bookkeeping(n, tmp)
        print(f"\nbookkeeping only: {n} trials in {r['wall']:.1f} s ({r['wall'] / n:.3f} s per trial), statuses "
              f"{r['statuses']}, driver peak RSS {r['rss_mb']:.0f} MB")
        for label, cb, wall in flatness(r, n):
            print(f"  {label:>18s}: driver callbacks {cb * 1000:6.1f} ms per trial, wall {wall * 1000:6.1f} ms per trial")
    if args.keep:
        print(f"kept: {tmp}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--bare-child":
        bare_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "--bookkeeping-child":
        bookkeeping_child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(main())
