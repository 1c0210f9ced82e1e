"""The run schema: every number a run reports, how it is spelled, and the one reader of a run folder's epochs.
Every other module asks here (adding a metric or a column: ``docs/architecture.md``). Torch-free.

Spelling: one name per number, the same in a sweep file, ``results.parquet``, MLflow and the report. An
accuracy under attack at ε = 8/255 is ``pgd10_eps8`` (``best/pgd10_eps8`` for the best checkpoint). MLflow
refuses ``@`` in metric names, so the old spelling ``pgd10@8`` is only accepted on the way in (a sweep file's
``metric:``, a results.parquet written before) and rewritten by :func:`canonical`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Every epoch record (one line of metrics.jsonl, one result reported to Tune) has these keys, plus the method's
# own counters as ``method/<name>`` (FGSM-SDI: ``method/gen_steps``).
EPOCH_KEYS = (
    "epoch", "train/loss", "train/acc", "train/adv_success", "train/pgd_acc", "val/clean_acc", "val/pgd_acc",
    "lr", "time/epoch_s", "time/epoch_eval_s", "time/images_per_s", "time/train_s", "co/detected",
)
METHOD_PREFIX = "method/"
# validation metrics a run can maximise to choose its `best` checkpoint (eval.best_metric)
MAXIMISED = ("val/pgd_acc", "val/clean_acc")
ROBUST_KEY = "val/pgd_acc"  # the per-epoch robust accuracy (PGD on the validation split)
# per-epoch curves of the report and of a trial's curves.png: (key, axis label); accuracies are drawn in %
CURVES = (("val/pgd_acc", "val PGD-10 acc (%)"), ("val/clean_acc", "val clean acc (%)"),
          ("train/pgd_acc", "train-batch PGD-10 acc (%)"), ("train/loss", "train loss"))


def is_epoch_metric(key: str) -> bool:
    return key in EPOCH_KEYS or key.startswith(METHOD_PREFIX)


def curve_scale(key: str) -> float:
    """100 for an accuracy (drawn in %), 1 otherwise."""
    return 100.0 if key.endswith("acc") else 1.0


# the final evaluation's columns, in the order of the thesis's tables: name -> (label, in the thesis's table).
# A new column: its attack preset in training/attacks/presets.py and one line here.
COLUMNS: dict[str, tuple[str, bool]] = {
    "clean": ("Clean", True),
    "fgsm": ("FGSM", False),
    "pgd10": ("PGD-10", True),
    "pgd20": ("PGD-20", True),
    "pgd50": ("PGD-50", True),
    "cw": ("C&W", True),
    "apgd_ce": ("APGD", True),
    "apgd_t": ("APGD-T", False),
    "fab_t": ("FAB-T", False),
    "square": ("Square", False),
    "aa": ("AA", True),
}
AA_STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")  # AutoAttack's stages, each with its accuracy after it
CHECKPOINTS = ("best", "last")
# scalar keys of the final record, whatever the evaluation list
FINAL_SCALARS = ("best_epoch", "co_epoch", "diverged_epoch", "epochs_run", "time/train_s", "time/eval_s", "n_test")
INT_KEYS = ("best_epoch", "co_epoch", "diverged_epoch", "epochs_run", "n_test")
# keys of the robustness matrix: accuracies per checkpoint, and the seconds each entry took
MATRIX_PREFIXES = tuple(f"{c}/" for c in CHECKPOINTS) + ("seconds/",)
TIME_KEYS = ("time/train_s", "time/eval_s", "time/trial_s")


def eps_tag(eps_255: float) -> str:
    return f"{float(eps_255):g}"  # 8 -> "8", 8.0 -> "8", 0.5 -> "0.5"


def column_key(column: str, eps_255: float | None = None, stage: str | None = None) -> str:
    """``clean``; ``pgd10_eps8``; AutoAttack's accuracy after a stage: ``aa/apgd_t_eps8``."""
    if eps_255 is None:
        return column
    return f"{column}/{stage}_eps{eps_tag(eps_255)}" if stage else f"{column}_eps{eps_tag(eps_255)}"


def canonical(key: str) -> str:
    """Today's spelling of a metric name: ``best/pgd10@8`` (before MLflow's rules were followed) -> ``best/pgd10_eps8``."""
    return key.replace("@", "_eps") if "@" in key else key


def eval_eps(threat_eps_255: float, extra_eps_255: tuple[float, ...] | list[float]) -> list[float]:
    """The ε values the final evaluation attacks at: the threat model's first, then the extra ones."""
    return [threat_eps_255] + [e for e in extra_eps_255 if e != threat_eps_255]


def final_keys(cfg: Any) -> set[str]:
    """Every metric name a run with this RunConfig reports: epoch keys and final keys (``training.loop.run``).

    Final keys: ``{ckpt}/clean``, ``{ckpt}/{column}_eps{eps}`` for every evaluated checkpoint, column and ε,
    AutoAttack's stages ``{ckpt}/aa/{stage}_eps{eps}``, and the seconds of each entry ``seconds/{ckpt}/...``.
    (``best`` is missing when a run diverges before its first epoch: not predictable.)
    """
    names = set(EPOCH_KEYS) | set(FINAL_SCALARS)
    eps_list = eval_eps(cfg.threat.eps_255, cfg.eval.eps_255)
    for ck in cfg.eval.checkpoints:
        for col in cfg.eval.attacks:
            keys = [col] if col == "clean" else [column_key(col, e) for e in eps_list]
            for k in keys:
                names |= {f"{ck}/{k}", f"seconds/{ck}/{k}"}
            if col == "aa":
                names |= {f"{ck}/{column_key(col, e, s)}" for s in AA_STAGES for e in eps_list}
    return names


def table_columns(keys: set[str] | list[str], eps: str) -> list[tuple[str, str]]:
    """(label, column key) of the evaluation columns present in ``keys`` (``best/...``/``last/...`` stripped)
    at ε ``eps`` (an :func:`eps_tag`), thesis columns first, then the others, each group in table order."""
    have = {k.split("/", 1)[1] for k in keys if k.startswith(MATRIX_PREFIXES[:-1])}
    out = []
    for thesis in (True, False):
        for col, (label, in_thesis) in COLUMNS.items():
            key = col if col == "clean" else column_key(col, float(eps)) if eps else None
            if in_thesis == thesis and key in have:
                out.append((label, key))
    return out


METRICS_FILE = "metrics.jsonl"  # one epoch record per line, appended as the run goes
RESULTS_FILE = "results.json"  # {"config", "final", "epochs"}, written at the end
CONFIG_FILE = "config.json"  # the resolved RunConfig


def read_epochs(folder: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run folder's metrics.jsonl, one per epoch in epoch order ([] without one).

    An epoch written twice (a resumed or retried run repeats the epochs after its last checkpoint) keeps its
    last record; a line cut short by a kill is skipped."""
    p = Path(folder) / METRICS_FILE
    try:
        text = p.read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]
