"""Do two runs of a sweep give the same results, trial by trial? ``python benchmarks/same_results.py A B``

A and B are results.parquet files (or sweep folders) of the same sweep, e.g. the k-interval demo before and after
a refactor. Trials are matched by name (``k=20,seed=0``); columns by today's names (``best/pgd10@8`` in an older
file is ``best/pgd10_eps8``). Compared: outcome, the epochs (best, CO, run), every accuracy of the robustness
matrix, the last epoch's record and the resolved config. Not compared: what differs between any two runs (times,
ids, paths, hosts, MLflow run ids). Prints one line per trial and exits 1 if any value differs.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from orchestrator.results import read_rows

SAME_RUN_ONLY = ("trial_key", "tune_trial_id", "mlflow_run_id", "out_dir", "host", "attempts", "config_hash",
                 "config.out_dir", "trial_index")
NOT_RESULTS = ("seconds/", "time/", "epoch/time/", "swept.")  # swept.* is new: the values are in config.* too


def compared(col: str) -> bool:
    return col not in SAME_RUN_ONLY and not col.startswith(NOT_RESULTS)


def equal(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def main(a: str, b: str) -> int:
    pa, pb = (Path(p) / "results.parquet" if Path(p).is_dir() else Path(p) for p in (a, b))
    ra = {r["trial_name"]: r for r in read_rows(pa)[0]}
    rb = {r["trial_name"]: r for r in read_rows(pb)[0]}
    if set(ra) != set(rb):
        print(f"different trials: only in A {sorted(set(ra) - set(rb))}, only in B {sorted(set(rb) - set(ra))}")
        return 1
    bad = 0
    for name in sorted(ra):
        x, y = ra[name], rb[name]
        cols = sorted(c for c in set(x) | set(y) if compared(c))
        diff = [c for c in cols if not equal(x.get(c), y.get(c))]
        n_acc = sum(c.startswith(("best/", "last/")) for c in cols)
        print(f"{name}: {len(cols)} values compared ({n_acc} accuracies): " + ("identical" if not diff else
              "DIFFERENT " + ", ".join(f"{c}: {x.get(c)!r} vs {y.get(c)!r}" for c in diff[:8])))
        bad += bool(diff)
    print(f"{len(ra)} trials, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
