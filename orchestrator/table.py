"""The sweep's table and its statistics: results.parquet rows grouped by their swept values (seeds pooled), mean,
std and count of every final column per group (one Arrow group-by), the thesis-style table (rich, Markdown, CSV),
the differences from a baseline row (:mod:`orchestrator.compare`), and the per-epoch statistics the figures draw
(time to a robust-accuracy threshold). No matplotlib here: the figures are :mod:`orchestrator.figures`.

Rows are the distinct values of the swept parameters (``orch.swept`` in the Parquet metadata), each with a
``best`` and a ``last`` line, like Table II/III of the thesis: Clean, PGD-10, PGD-20, PGD-50, C&W, APGD, AA
(percent, at the threat model's ε), training time in minutes, and the trials' outcomes (how many finished, hit
catastrophic overfitting, diverged, failed). Columns nobody evaluated are left out; evaluated columns the
thesis does not show (FGSM, APGD-T, FAB-T, Square) are appended. Failed and stopped trials are counted but
not averaged (they have no final numbers).
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from orchestrator import compare
from training import metrics
from training.metrics import ROBUST_KEY
from training.numbers import is_finite
from orchestrator.space import format_value, short_names

# counts a method records every epoch (``method/<name>``), shown as a column when some trial has them
COUNT_COLUMNS = (("Gen. updates", "epoch/method/gen_steps"),)


Stats = tuple[float, float, int]  # mean, std over seeds (0 for one), count


@dataclass
class Group:
    values: dict[str, Any]  # swept key -> value
    rows: list[dict[str, Any]]
    _stats: dict[str, Stats | None] = field(default_factory=dict, repr=False, compare=False)  # filled by summarize

    @property
    def label(self) -> str:
        names = short_names(list(self.values))
        return ",".join(f"{names[k]}={format_value(v)}" for k, v in self.values.items()) or "all"

    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "finished"]

    def stats(self, col: str) -> Stats | None:
        """(mean, std, n) of ``col`` over the finished trials with a finite value; None without any."""
        if col not in self._stats:
            summarize([self], [col])
        return self._stats[col]

    def outcomes(self) -> str:
        c = Counter(r.get("outcome") or "?" for r in self.rows)
        short = {"finished": "ok", "catastrophic_overfitting": "CO", "diverged": "div", "failed": "fail", "stopped": "stop"}
        co = sorted(r["co_epoch"] for r in self.rows if isinstance(r.get("co_epoch"), int))
        where = f" (epoch {', '.join(map(str, co))})" if co else ""  # catastrophic overfitting: at which epochs
        return " ".join(f"{n} {short.get(k, k)}" + (where if k == "catastrophic_overfitting" else "")
                        for k, n in sorted(c.items(), key=lambda kv: kv[0] != "finished"))


def summarize(gs: list[Group], cols: list[str]) -> None:
    """Mean, std (n - 1) and count of each of ``cols`` over each group's finished trials (finite values only), in
    one Arrow group-by; stored in the groups for :meth:`Group.stats`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = [i for i, g in enumerate(gs) for _ in g.good()]
    data = {"g": pa.array(ids, pa.int64())}
    for j, c in enumerate(cols):
        data[f"c{j}"] = pa.array([float(r[c]) if is_finite(r.get(c)) else None for g in gs for r in g.good()], pa.float64())
    aggs = [(f"c{j}", fn, *opt) for j in range(len(cols))
            for fn, *opt in (("mean",), ("stddev", pc.VarianceOptions(ddof=1)), ("count",))]
    out = pa.table(data).group_by("g", use_threads=False).aggregate(aggs).to_pydict()
    at = {i: k for k, i in enumerate(out["g"])}
    for i, g in enumerate(gs):
        for j, c in enumerate(cols):
            n = out[f"c{j}_count"][at[i]] if i in at else 0
            g._stats[c] = (out[f"c{j}_mean"][at[i]], out[f"c{j}_stddev"][at[i]] if n > 1 else 0.0, n) if n else None


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std of a non-empty list (std 0 for one value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def swept_keys(meta: dict[str, str]) -> list[str]:
    """The swept parameters of a results file (its ``orch.swept`` metadata)."""
    return json.loads(meta.get("orch.swept", "[]"))


def value_key(v: Any) -> str:
    """A swept value as a hashable, order-independent key (JSON with sorted keys)."""
    return json.dumps(v, sort_keys=True, default=str)


def groups(rows: list[dict[str, Any]], swept: list[str]) -> list[Group]:
    """Rows grouped by their swept values (seeds pooled), in the order of first appearance."""
    out: dict[str, Group] = {}
    sections = _section_keys(rows, swept)
    for r in rows:
        vals = {k: _section_value(r, k, sections[k]) if k in sections else _swept_value(r, k) for k in swept}
        out.setdefault(value_key(vals), Group(vals, [])).rows.append(r)
    return list(out.values())


def _swept_value(r: dict[str, Any], k: str) -> Any:
    """A trial's value of a swept key: its ``swept.<key>`` column (a results file written before there were such
    columns: the resolved ``config.<key>``)."""
    return _parse(r[f"swept.{k}"] if f"swept.{k}" in r else r.get(f"config.{k}"))


def _section_keys(rows: list[dict[str, Any]], swept: list[str]) -> dict[str, list[str]]:
    """Swept keys that are whole config sections (``method: [{name: pgd_at}, {name: fgsm_sdi, k: 20}]``): the rows
    hold ``config.method.*``, not ``config.method``. For each, the sub-keys that tell the values apart: ``name``
    and every sub-key whose set values differ between rows (defaults shared by all are left out of the label)."""
    out: dict[str, list[str]] = {}
    for k in swept:
        if any(f"config.{k}" in r for r in rows):
            continue
        prefix = f"config.{k}."
        subs = sorted({c[len(prefix):] for r in rows for c in r if c.startswith(prefix)}, key=lambda s: (s != "name", s))
        out[k] = [s for s in subs if s == "name" or _tells_apart(rows, prefix, s)]
    return out


def _tells_apart(rows: list[dict[str, Any]], prefix: str, sub: str) -> bool:
    """A sub-key tells rows apart when its set values differ, or when rows of one method differ in it, one at the
    default (unset: ``{name: fgsm_rs}``) and one set (``{name: fgsm_rs, alpha_255: 16}``)."""
    if len({value_key(r[prefix + sub]) for r in rows if r.get(prefix + sub) is not None}) > 1:
        return True
    per_method: dict[str, set[str]] = {}
    for r in rows:
        per_method.setdefault(value_key(r.get(prefix + "name")), set()).add(value_key(r.get(prefix + sub)))
    return any(len(v) > 1 for v in per_method.values())


def _section_value(r: dict[str, Any], k: str, subs: list[str]) -> dict[str, Any]:
    return {s: _parse(r[f"config.{k}.{s}"]) for s in subs if r.get(f"config.{k}.{s}") is not None}

def _parse(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":  # a mixed-type column stored as JSON
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def eps_of(rows: list[dict[str, Any]]) -> str:
    return next((f"{float(r['config.threat.eps_255']):g}" for r in rows if r.get("config.threat.eps_255") is not None), "8")


def columns_present(rows: list[dict[str, Any]], eps: str) -> list[tuple[str, str]]:
    """(label, column) of the evaluation columns some trial has at ε ``eps``: the thesis's first, in its order
    (training.metrics.COLUMNS names and labels them)."""
    return metrics.table_columns({k for r in rows for k in r}, eps)


# how a (mean, std, n) cell is written: the mean's scale, decimals, and whether a zero std is shown
_CELLS = {"pct": (lambda x: 100 * x, 2, True), "min": (lambda x: x / 60, 2, True), "count": (lambda x: x, 0, False)}


def cell(s: Stats | None, kind: str) -> str:
    """``mean ± std`` of a group's column (``–`` without values; no std for one seed): ``pct`` an accuracy in %,
    ``min`` seconds in minutes, ``count`` a whole number (a zero std left out)."""
    if s is None:
        return "–"
    scale, prec, zero_sd = _CELLS[kind]
    m, sd, n = s
    return f"{scale(m):.{prec}f}" + (f" ± {scale(sd):.{prec}f}" if n > 1 and (zero_sd or sd) else "")


def count_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    present = {k for r in rows for k in r if r.get(k) is not None}
    return [(label, key) for label, key in COUNT_COLUMNS if key in present]


def table_rows(gs: list[Group], cols: list[tuple[str, str]], counts: list[tuple[str, str]] = ()) -> list[list[str]]:
    """[config, checkpoint, *columns, train min, *counts, n seeds, outcomes] per group and checkpoint."""
    out = []
    for g in gs:
        n = len(out)
        for ck in ("best", "last"):
            if not any(g.stats(f"{ck}/{c}") for _, c in cols):
                continue
            row = [g.label if ck == "best" or not out or out[-1][0] != g.label else "", ck.capitalize()]
            row += [cell(g.stats(f"{ck}/{c}"), "pct") for _, c in cols]
            tail = [cell(g.stats("time/train_s"), "min"), *[cell(g.stats(k), "count") for _, k in counts], str(len(g.good())), g.outcomes()]
            row += tail if ck == "best" else [""] * len(tail)
            out.append(row)
        if len(out) == n:  # no numbers: every trial failed, or diverged before its first checkpoint
            out.append([g.label, "–", *["–"] * len(cols), cell(g.stats("time/train_s"), "min") if g.good() else "–",
                        *["–"] * len(counts), str(len(g.good())), g.outcomes()])
    return out


def render(rows: list[dict[str, Any]], meta: dict[str, str], title: str = "") -> tuple[Table, str, list[str], list[list[str]]]:
    """The thesis-style table of ``rows``: (rich table, Markdown, header, body)."""
    eps = eps_of(rows)
    cols = columns_present(rows, eps)
    gs = groups(rows, swept_keys(meta))
    counts = count_columns(rows)
    summarize(gs, [f"{ck}/{c}" for ck in ("best", "last") for _, c in cols] + ["time/train_s"] + [k for _, k in counts])
    header = ["Config", "Ckpt", *[label for label, _ in cols], "Train (min)", *[label for label, _ in counts], "Seeds", "Outcomes"]
    body = table_rows(gs, cols, counts)
    caption = f"accuracy (%) at ε = {eps}/255, mean ± std over seeds"
    t = rich_table(header, body, title or f"{meta.get('orch.sweep', 'sweep')}: {caption}", _best_cells(body, len(cols)))
    return t, markdown(header, body, title or caption), header, body


def _best_cells(body: list[list[str]], n_acc: int) -> set[tuple[int, int]]:
    """The highest mean per accuracy column and checkpoint (bold, like the thesis's tables)."""
    marks: set[tuple[int, int]] = set()
    for j in range(2, 2 + n_acc):
        for ck in ("Best", "Last"):
            cand = [(float(r[j].split(" ")[0]), id(r)) for r in body if r[1] == ck and r[j] not in ("–", "")]
            if len(cand) > 1:
                top = max(c[0] for c in cand)
                marks |= {(i, j) for v, i in cand if v == top}
    return marks


def rich_table(header: list[str], body: list[list[str]], title: str, bold: set[tuple[int, int]] = frozenset()) -> Table:
    """A table for the terminal: the first two columns and the last (config, checkpoint; outcomes or test) to the
    left, the numbers to the right; ``bold`` cells as (id(row), column)."""
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 or i == len(header) - 1 else "right", no_wrap=i == 0)
    for r in body:
        t.add_row(*[f"[bold]{c}[/]" if (id(r), j) in bold else c for j, c in enumerate(r)])
    return t


def markdown(header: list[str], body: list[list[str]], caption: str) -> str:
    """The same table in Markdown, under its caption in bold."""
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def baseline_diffs(gs: list[Group], rows: list[dict[str, Any]], meta: dict[str, str], baseline: str, where: str = "") -> dict[str, Any]:
    """Every other group's difference from the group named ``baseline`` with 95% intervals over seeds
    (:func:`orchestrator.compare.compare`); raises BaselineError when the name matches no single group."""
    heads = compare.headline_columns(rows, meta, columns_present(rows, eps_of(rows)))
    return compare.compare(gs, compare.find_baseline(gs, baseline, where), heads)


def write_csv(path: Path, gs: list[Group], rows: list[dict[str, Any]], diffs: dict[str, Any] | None = None) -> None:
    """Mean and std of every final numeric column per group (machine-readable companion of table.md); with
    ``diffs`` (:func:`baseline_diffs`), a ``baseline`` column and each headline column's difference from it."""
    finals = sorted({k for r in rows for k in r if k.startswith(("best/", "last/", "time/")) and isinstance(r[k], (int, float))})
    swept = list(gs[0].values) if gs else []
    extra = list(dict.fromkeys(k for d in (diffs or {}).get("csv", {}).values() for k in d))
    summarize(gs, finals)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*swept, "n", "outcomes", *[f"{c}_{s}" for c in finals for s in ("mean", "std")],
                    *(["baseline", *extra] if diffs else [])])
        for g in gs:
            vals = [json.dumps(g.values[k]) if isinstance(g.values[k], (list, dict)) else g.values[k] for k in swept]
            stats = [g.stats(c) for c in finals]
            row = [*vals, len(g.good()), g.outcomes(), *[x for s in stats for x in ((f"{s[0]:.6g}", f"{s[1]:.6g}") if s else ("", ""))]]
            if diffs:
                d = diffs["csv"].get(id(g), {})
                row += [int(g.label == diffs["baseline"]), *[f"{d[k]:.6g}" if isinstance(d.get(k), float) else d.get(k, "") for k in extra]]
            w.writerow(row)


def trial_records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The epoch records of a trial's ``metrics.jsonl``, one per epoch in epoch order (training.metrics.read_epochs)."""
    return metrics.read_epochs(row["out_dir"]) if row.get("out_dir") else []


def time_to_threshold(records: list[dict[str, Any]], threshold: float, key: str = ROBUST_KEY) -> tuple[float, int] | None:
    """(training seconds, epoch) at the first epoch whose ``key`` is >= ``threshold``; None if none is.

    Training seconds are the record's cumulative ``time/train_s`` (per-epoch evaluation excluded); records
    without it count the sum of ``time/epoch_s`` up to that epoch."""
    total = 0.0
    for rec in records:
        if is_finite(rec.get("time/epoch_s")):
            total += float(rec["time/epoch_s"])
        if is_finite(rec.get(key)) and rec[key] >= threshold:
            t = float(rec["time/train_s"]) if is_finite(rec.get("time/train_s")) else total
            return t, int(rec["epoch"])
    return None


def best_epoch_value(gs: list[Group], key: str = ROBUST_KEY) -> float | None:
    """The highest ``key`` of any epoch of any trial (the reference of the default threshold)."""
    vals = [float(rec[key]) for g in gs for r in g.rows for rec in trial_records(r) if is_finite(rec.get(key))]
    return max(vals) if vals else None


def threshold_times(gs: list[Group], threshold: float, key: str = ROBUST_KEY) -> list[tuple[Group, list[tuple[dict[str, Any], tuple[float, int] | None]]]]:
    """Per group: (trial row, (seconds, epoch) or None when never reached) for every trial with epoch records."""
    return [(g, [(r, time_to_threshold(recs, threshold, key)) for r in g.rows if (recs := trial_records(r))]) for g in gs]

