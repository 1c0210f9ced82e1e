"""Results through Arrow: one row per trial in ``<sweep>/results.parquet``, rewritten atomically as trials finish.

Schema (columns appear only when some trial has them; every accuracy is a fraction in [0, 1]):

==========================  =========  ===================================================================
column                      type       meaning
==========================  =========  ===================================================================
trial_key                   string     stable trial id: hash(sweep name, swept values, seed[, sample/trial #])
trial_name                  string     ``k=20,seed=0`` (MLflow run name, trial folder prefix)
trial_index                 int64      position in the grid / random plan (null for Optuna trials)
seed                        int64      the trial's seed (the ``seeds:`` axis)
status                      string     ``finished`` (a final record arrived), ``failed`` (error after all
                                       retries), ``stopped`` (ended by the scheduler, e.g. ASHA, or by Ctrl-C)
outcome                     string     ``finished`` | ``diverged`` | ``catastrophic_overfitting`` (from the
                                       training core) | ``failed`` | ``stopped``
co_epoch, diverged_epoch    int64      epoch of catastrophic overfitting / divergence (null if none)
best_epoch, epochs_run      int64      epoch of the ``best`` checkpoint; epochs trained
swept.<axis>                (value)    the trial's value of each swept key, as the sweep file names it
                                       (``swept.method.k``); the same value is in its ``config.`` column
best/<col>[_eps<e>]         double     robust accuracy of the best checkpoint per evaluation column and ε in
                                       /255 (``best/clean``, ``best/pgd10_eps8``, ``best/aa_eps8``,
                                       ``best/aa/apgd_t_eps8``; names from ``training.metrics``)
last/<col>[_eps<e>]         double     the same for the last checkpoint
seconds/<ckpt>/<col>[_eps<e>] double   wall seconds of that evaluation
time/train_s                double     training seconds (sum of epochs, per-epoch evaluation excluded)
time/eval_s                 double     seconds of the final robustness evaluation
time/trial_s                double     wall seconds of the trial on its worker, all attempts (efficiency)
n_test                      int64      test images evaluated
epoch/<key>                 double     the last epoch's record (``epoch/val/pgd_acc``, ``epoch/train/loss``...), also
                                       for finished trials (from their ``metrics.jsonl``)
error                       string     last line of the error of a failed trial
attempts                    int64      attempts of the trial (1 + retries)
config_hash                 string     ``RunConfig.hash()`` (identical configs, identical hash)
host                        string     the worker's host name
tune_trial_id               string     Ray Tune's trial id
mlflow_run_id               string     the trial's MLflow run
out_dir                     string     the trial folder (checkpoints, metrics.jsonl, results.json)
config.<dotted.key>         (value)    the resolved RunConfig, flattened (``config.method.k``); lists as lists
==========================  =========  ===================================================================

File metadata (Parquet key-value): ``orch.sweep`` (name), ``orch.swept`` (JSON list of swept keys, without
``seed``), ``orch.metric`` and ``orch.mode``, ``orch.schema_version``. A file written before metric names were
spelled as MLflow allows (``best/pgd10@8``) is read with today's names.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from training import metrics
from training.numbers import is_number
from training.config import flatten

SCHEMA_VERSION = "1"
ID_COLUMNS = ("trial_key", "trial_name", "trial_index", "seed", "status", "outcome")
INT_COLUMNS = ("trial_index", "seed", *metrics.INT_KEYS, "attempts")


def trial_row(
    *,
    key: str,
    name: str,
    index: int | None,
    seed: int,
    status: str,
    last_result: dict[str, Any] | None,
    config: dict[str, Any] | None,
    error: str | None = None,
    tune_trial_id: str | None = None,
    mlflow_run_id: str | None = None,
    out_dir: str | None = None,
    epoch_record: dict[str, Any] | None = None,
    swept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One results row from a trial's last reported record (its final record when it finished); ``epoch_record``
    (the last line of its ``metrics.jsonl``) gives a finished trial its ``epoch/*`` columns too; ``swept`` (axis ->
    value) its ``swept.*`` columns."""
    r = dict(last_result or {})
    final = bool(r.get("final"))
    if status == "failed":
        outcome = "failed"
    elif final:
        outcome = r.get("outcome", "finished")
    else:
        outcome = "stopped"
    row: dict[str, Any] = {
        "trial_key": key, "trial_name": name, "trial_index": index, "seed": seed,
        "status": status if (status != "finished" or final) else "stopped", "outcome": outcome,
    }
    for k, v in (swept or {}).items():
        row[f"swept.{k}"] = v
    for k in metrics.INT_KEYS:
        row[k] = r.get(k)
    if not final and r.get("epoch") is not None:
        row["epochs_run"] = r.get("epoch")
    for k, v in r.items():
        if k.startswith(metrics.MATRIX_PREFIXES) and is_number(v):
            row[metrics.canonical(k)] = float(v)
    for k in metrics.TIME_KEYS:
        if is_number(r.get(k)):
            row[k] = float(r[k])
    last_epoch = r if not final else (epoch_record or {})  # the last epoch's record
    if last_epoch:
        for k, v in last_epoch.items():
            if "/" in k and not k.startswith(("orch/", "time/trial_s")) and is_number(v):
                row[f"epoch/{k}"] = float(v)
    row["error"] = (error or "").strip().splitlines()[-1][:1000] if error else None
    row["attempts"] = r.get("orch/attempt")
    row["config_hash"] = r.get("orch/config_hash")
    row["host"] = r.get("orch/host")
    row["tune_trial_id"] = tune_trial_id
    row["mlflow_run_id"] = mlflow_run_id
    row["out_dir"] = out_dir or r.get("orch/out_dir")
    for k, v in flatten(config or {}).items():
        row[f"config.{k}"] = v
    return row


def to_table(rows: Iterable[dict[str, Any]], metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows -> Arrow table with stable column order (ids, outcome, final numbers, times, epoch, meta, config)."""
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    cols.sort(key=_column_rank)
    arrays, fields = [], []
    for c in cols:
        values = [r.get(c) for r in rows]
        arr = _array(c, values)
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    meta = {"orch.schema_version": SCHEMA_VERSION, **(metadata or {})}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()}))


_GROUPS: tuple[tuple[str, ...], ...] = (
    ID_COLUMNS,
    ("swept.",),
    ("co_epoch", "diverged_epoch", "best_epoch", "epochs_run"),
    ("best/",), ("last/",), ("seconds/",), ("time/", "n_test"), ("epoch/",),
    ("error", "attempts", "config_hash", "host", "tune_trial_id", "mlflow_run_id", "out_dir"),
    ("config.",),
)


def _column_rank(c: str) -> tuple[int, int]:
    """(group, position in a fixed group); sorting is stable, so prefix groups keep the records' order."""
    for i, group in enumerate(_GROUPS):
        if c in group:
            return (i, group.index(c))
        if any(g.endswith(("/", ".")) and c.startswith(g) for g in group):
            return (i, 0)
    return (len(_GROUPS), 0)


def _array(name: str, values: list[Any]) -> pa.Array:
    if name in INT_COLUMNS:
        return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
    if name.startswith("swept.") and any(isinstance(v, (dict, list)) for v in values):  # a section or a list: as written
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
    if name.startswith(metrics.MATRIX_PREFIXES + ("time/", "epoch/")):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    try:
        arr = pa.array(values)
        if pa.types.is_null(arr.type):
            return pa.array(values, type=pa.string())
        return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across trials (e.g. an axis of str and int)
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def natural_key(name: str) -> list[Any]:
    """Sort key with numbers compared as numbers: Optuna's t2 before t10 (not t0, t1, t10, t11, t2)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written file, a kill never leaves one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows and key-value metadata of an existing results file (empty if there is none)."""
    path = Path(path)
    if not path.exists():
        return [], {}
    t = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    t = t.rename_columns([metrics.canonical(c) for c in t.column_names])  # best/pgd10@8 (before) -> best/pgd10_eps8
    if "orch.metric" in meta:
        meta["orch.metric"] = metrics.canonical(meta["orch.metric"])
    rows = [{k: v for k, v in r.items() if v is not None} for r in t.to_pylist()]  # absent columns read as null
    return rows, meta


class ResultsFile:
    """``results.parquet`` of one sweep: rows upserted by trial key, the whole file rewritten in bounded batches.

    A rewrite costs time proportional to the rows, so rewriting after every trial is quadratic in the trials.
    ``upsert`` writes at once when the last write is older than ``WRITE_EVERY_S`` or ten times its own cost
    (whichever is longer: writing takes at most ~10% of the driver's time at any size); otherwise the row waits
    for ``flush`` (called at every Tune step and at the end of the sweep). A driver killed meanwhile loses only
    rows that Tune's own state still has: ``--resume`` writes them again (SweepCallback.reconcile).
    """

    WRITE_EVERY_S = 2.0

    def __init__(self, path: str | Path, metadata: dict[str, str]) -> None:
        self.path = Path(path)
        old, _ = read_rows(self.path)
        self.rows: dict[str, dict[str, Any]] = {r["trial_key"]: r for r in old}
        self.metadata = metadata
        self.dirty = False
        self._next_write = 0.0  # monotonic time after which a change is written at once

    def upsert(self, row: dict[str, Any], write: bool = True) -> None:
        self.rows[row["trial_key"]] = row
        self.dirty = True
        if write:
            self.flush(force=False)

    def flush(self, force: bool = True) -> bool:
        """Write pending rows (``force``: now; else only once the interval has passed). True if written."""
        if not self.dirty or (not force and time.monotonic() < self._next_write):
            return False
        self.write()
        return True

    def write(self) -> None:
        t0 = time.monotonic()
        rows = sorted(self.rows.values(), key=lambda r: (r.get("trial_index") is None, r.get("trial_index") or 0, natural_key(r["trial_name"])))
        write_parquet(to_table(rows, self.metadata), self.path)
        self.dirty = False
        now = time.monotonic()
        self._next_write = now + max(self.WRITE_EVERY_S, 10 * (now - t0))
