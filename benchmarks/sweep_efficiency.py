"""How much of the machine a sweep keeps busy: the demo sweep, end to end, as a user runs it.

    python benchmarks/sweep_efficiency.py                      # sweeps/k_interval.yaml, demo profile
    python benchmarks/sweep_efficiency.py --set seeds=1         # any `orch sweep` --set / --profile

efficiency = sum of trial compute seconds / (wall seconds x concurrent trials)

- trial compute seconds: ``time/trial_s`` of each trial in results.parquet, i.e. the wall time of the trial
  function on its worker over all its attempts (building the model and data, training, per-epoch and final
  evaluation, checkpoints), each trial holding one of the ``concurrent trials`` slots;
- wall seconds: from launching ``orch sweep`` to its exit, so Python imports, validation, Ray start-up, MLflow
  start-up (a fresh SQLite store), Tune's scheduling gaps, the driver's logging, the idle tail while the last
  trials finish, and the closing report are all counted against it;
- concurrent trials: what the sweep runs at once here (``max_concurrent_trials``, else CPUs / ``resources.cpu``).

Target: >= 0.85. The sweep runs in a temporary data folder (``--keep DIR`` to keep it). Exit code 1 below target.
Other processes on a shared machine lower the number (they slow the trials less than they steal wall time
from the driver); run it on a quiet machine to compare changes.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", default=str(ROOT / "sweeps" / "k_interval.yaml"))
    ap.add_argument("--profile", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--keep", type=Path, default=None, help="data folder to keep (default: a temporary one)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from orchestrator.results import read_rows
    from orchestrator.spec import load_spec

    spec = load_spec(args.file, profile=args.profile, sets=args.sets)
    concurrency = spec.max_concurrent_trials or max(1, int((os.cpu_count() or 1) // spec.resources.cpu))
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="orch-bench-")
        data = Path(tmp.name)
    else:
        data = args.keep.resolve()
    cmd = [sys.executable, "-m", "orchestrator", "sweep", args.file, "--data-dir", str(data)]
    cmd += (["--profile", args.profile] if args.profile else []) + [x for s in args.sets for x in ("--set", s)]
    print(f"running: {' '.join(cmd)}\n({spec.num_trials} trials, {concurrency} at a time, {os.cpu_count()} CPUs)", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "COLUMNS": os.environ.get("COLUMNS", "180")})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"orch sweep failed (exit {proc.returncode})")
        return 2
    rows, _ = read_rows(data / "sweeps" / spec.name / "results.parquet")
    compute = sum(float(r.get("time/trial_s") or 0.0) for r in rows)
    train = sum(float(r.get("time/train_s") or 0.0) for r in rows)
    evals = sum(float(r.get("time/eval_s") or 0.0) for r in rows)
    eff = compute / (wall * concurrency)
    print()
    print(f"trials                 {len(rows)} ({sum(r['status'] == 'finished' for r in rows)} finished)")
    print(f"wall (launch to exit)  {wall:8.1f} s")
    print(f"trial compute          {compute:8.1f} s  (training {train:.1f} s, final evaluation {evals:.1f} s, "
          f"other {compute - train - evals:.1f} s: per-epoch evaluation, data, model, checkpoints)")
    print(f"concurrent trials      {concurrency}")
    print(f"efficiency             {eff:8.3f}  (target >= {TARGET})")
    print(f"idle slot-seconds      {wall * concurrency - compute:8.1f} s  (start-up, scheduling, logging, tail, report)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if eff >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
