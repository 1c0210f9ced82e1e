"""``orch report``: results.parquet -> the thesis-style table (mean ± std over seeds), Markdown, CSV and plots.

Rows are the distinct values of the swept parameters (``orch.swept`` in the Parquet metadata), each with a
``best`` and a ``last`` line, like Table II/III of the thesis: Clean, PGD-10, PGD-20, PGD-50, C&W, APGD, AA
(percent, at the threat model's ε), training time in minutes, and the trials' outcomes (how many finished, hit
catastrophic overfitting, diverged, failed). Columns nobody evaluated are left out; evaluated columns the
thesis does not show (FGSM, APGD-T, FAB-T, Square) are appended. Failed and stopped trials are counted but
not averaged (they have no final numbers).

Files written to ``<sweep>/report/``: ``table.md``, ``table.csv`` (mean and std of every final column per
group and checkpoint), ``<param>.png`` (each thesis column against each swept parameter, best and last, error
bars = std over seeds), ``curves.png`` (per-epoch validation PGD / clean accuracy, training PGD accuracy and
loss, mean over seeds per group, from the trials' ``metrics.jsonl``).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# (column label, result column name without checkpoint prefix; {eps} is the threat model's ε)
THESIS_COLUMNS = (
    ("Clean", "clean"), ("PGD-10", "pgd10@{eps}"), ("PGD-20", "pgd20@{eps}"), ("PGD-50", "pgd50@{eps}"),
    ("C&W", "cw@{eps}"), ("APGD", "apgd_ce@{eps}"), ("AA", "aa@{eps}"),
)
EXTRA_COLUMNS = (("FGSM", "fgsm@{eps}"), ("APGD-T", "apgd_t@{eps}"), ("FAB-T", "fab_t@{eps}"), ("Square", "square@{eps}"))
CURVE_KEYS = (("val/pgd_acc", "val PGD-10 acc"), ("val/clean_acc", "val clean acc"), ("train/pgd_acc", "train-batch PGD-10 acc"), ("train/loss", "train loss"))


@dataclass
class Group:
    values: dict[str, Any]  # swept key -> value
    rows: list[dict[str, Any]]

    @property
    def label(self) -> str:
        from orchestrator.space import format_value, short_names

        names = short_names(list(self.values))
        return ",".join(f"{names[k]}={format_value(v)}" for k, v in self.values.items()) or "all"

    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "finished"]

    def stats(self, col: str) -> tuple[float, float, int] | None:
        xs = [float(r[col]) for r in self.good() if isinstance(r.get(col), (int, float)) and math.isfinite(r[col])]
        if not xs:
            return None
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return m, sd, len(xs)

    def outcomes(self) -> str:
        c: dict[str, int] = {}
        for r in self.rows:
            c[r.get("outcome") or "?"] = c.get(r.get("outcome") or "?", 0) + 1
        short = {"finished": "ok", "catastrophic_overfitting": "CO", "diverged": "div", "failed": "fail", "stopped": "stop"}
        return " ".join(f"{n} {short.get(k, k)}" for k, n in sorted(c.items(), key=lambda kv: kv[0] != "finished"))


def load(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from orchestrator.results import read_rows

    return read_rows(path)


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def groups(rows: list[dict[str, Any]], swept: list[str]) -> list[Group]:
    """Rows grouped by their swept values (seeds pooled), in the order of first appearance."""
    out: dict[str, Group] = {}
    for r in rows:
        vals = {k: _parse(r.get(f"config.{k}")) for k in swept}
        out.setdefault(_key(vals), Group(vals, [])).rows.append(r)
    return list(out.values())


def _parse(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":  # a mixed-type column stored as JSON
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def eps_of(rows: list[dict[str, Any]]) -> str:
    for r in rows:
        if r.get("config.threat.eps_255") is not None:
            return f"{float(r['config.threat.eps_255']):g}"
    return "8"


def columns_present(rows: list[dict[str, Any]], eps: str) -> list[tuple[str, str]]:
    present = {k for r in rows for k in r}
    cols = []
    for label, pat in THESIS_COLUMNS + EXTRA_COLUMNS:
        name = pat.format(eps=eps)
        if f"best/{name}" in present or f"last/{name}" in present:
            cols.append((label, name))
    return cols


def _pct(s: tuple[float, float, int] | None) -> str:
    if s is None:
        return "–"
    m, sd, n = s
    return f"{100 * m:.2f}" + (f" ± {100 * sd:.2f}" if n > 1 else "")


def _minutes(s: tuple[float, float, int] | None) -> str:
    if s is None:
        return "–"
    m, sd, n = s
    return f"{m / 60:.2f}" + (f" ± {sd / 60:.2f}" if n > 1 else "")


def table_rows(gs: list[Group], cols: list[tuple[str, str]]) -> list[list[str]]:
    """[config, checkpoint, *columns, train min, n seeds, outcomes] per group and checkpoint."""
    out = []
    for g in gs:
        for ck in ("best", "last"):
            if not any(g.stats(f"{ck}/{c}") for _, c in cols):
                continue
            row = [g.label if ck == "best" or not out or out[-1][0] != g.label else "", ck.capitalize()]
            row += [_pct(g.stats(f"{ck}/{c}")) for _, c in cols]
            row += [_minutes(g.stats("time/train_s")), str(len(g.good())), g.outcomes()] if ck == "best" else ["", "", ""]
            out.append(row)
        if not g.good():
            out.append([g.label, "–", *["–"] * len(cols), "–", "0", g.outcomes()])
    return out


def render(rows: list[dict[str, Any]], meta: dict[str, str], title: str = "") -> tuple[Table, str, list[str], list[list[str]]]:
    swept = json.loads(meta.get("orch.swept", "[]"))
    eps = eps_of(rows)
    cols = columns_present(rows, eps)
    gs = groups(rows, swept)
    header = ["Config", "Ckpt", *[label for label, _ in cols], "Train (min)", "Seeds", "Outcomes"]
    body = table_rows(gs, cols)
    t = Table(title=title or f"{meta.get('orch.sweep', 'sweep')}: accuracy (%) at ε = {eps}/255, mean ± std over seeds")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 or h == "Outcomes" else "right", no_wrap=i == 0)
    best = _best_cells(body, header)
    for r in body:
        t.add_row(*[f"[bold]{c}[/]" if (id(r), j) in best else c for j, c in enumerate(r)])
    md = _markdown(header, body, title or f"accuracy (%) at ε = {eps}/255, mean ± std over seeds")
    return t, md, header, body


def _best_cells(body: list[list[str]], header: list[str]) -> set[tuple[int, int]]:
    """The highest mean per accuracy column and checkpoint (bold, like the thesis's tables)."""
    marks: set[tuple[int, int]] = set()
    for j in range(2, len(header) - 3):
        for ck in ("Best", "Last"):
            cand = [(float(r[j].split(" ")[0]), id(r)) for r in body if r[1] == ck and r[j] not in ("–", "")]
            if len(cand) > 1:
                top = max(c[0] for c in cand)
                marks |= {(i, j) for v, i in cand if v == top}
    return marks


def _markdown(header: list[str], body: list[list[str]], caption: str) -> str:
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, gs: list[Group], rows: list[dict[str, Any]]) -> None:
    """Mean and std of every final numeric column per group (machine-readable companion of table.md)."""
    finals = sorted({k for r in rows for k in r if k.startswith(("best/", "last/", "time/")) and isinstance(r[k], (int, float))})
    swept = list(gs[0].values) if gs else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*swept, "n", "outcomes", *[f"{c}_{s}" for c in finals for s in ("mean", "std")]])
        for g in gs:
            vals = [json.dumps(g.values[k]) if isinstance(g.values[k], (list, dict)) else g.values[k] for k in swept]
            stats = [g.stats(c) for c in finals]
            w.writerow([*vals, len(g.good()), g.outcomes(), *[x for s in stats for x in ((f"{s[0]:.6g}", f"{s[1]:.6g}") if s else ("", ""))]])


# ---------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trial_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """One trial's per-epoch curves (the MLflow artifact ``curves.png``)."""
    plt = _plt()
    fig, axs = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3))
    ep = [r["epoch"] for r in records]
    for ax, (k, lab) in zip(axs, CURVE_KEYS):
        ax.plot(ep, [r.get(k, float("nan")) for r in records], marker="o", ms=3)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("epoch")
        co = [r["epoch"] for r in records if r.get("co/detected")]
        for e in co:
            ax.axvline(e, color="red", ls="--", lw=1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_params(gs: list[Group], cols: list[tuple[str, str]], out_dir: Path) -> list[Path]:
    """For each swept parameter: each thesis column against it (best and last), error bars = std over seeds.
    With several swept parameters, one line per combination of the others."""
    plt = _plt()
    written = []
    swept = list(gs[0].values) if gs else []
    for p in swept:
        xs_all = []
        for g in gs:
            if g.values[p] not in xs_all:
                xs_all.append(g.values[p])
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
        pos = {(_key(x)): (x if numeric else i) for i, x in enumerate(xs_all)}
        others: dict[str, list[Group]] = {}
        for g in gs:
            rest = {k: v for k, v in g.values.items() if k != p}
            others.setdefault(_key(rest), []).append(g)
        panels = cols + [("Train time (min)", "time/train_s")]
        n = len(panels)
        ncol = min(4, n)
        nrow = math.ceil(n / ncol)
        fig, axs = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
        for ax, (label, c) in zip(axs.flat, panels):
            for rest_key, grp in others.items():
                rest_label = "" if rest_key == "{}" else " " + ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in json.loads(rest_key).items())
                for ck, style in (("best", "-o"), ("last", "--s")) if c != "time/train_s" else (("", "-o"),):
                    col = f"{ck}/{c}" if ck else c
                    pts = [(pos[_key(g.values[p])], g.stats(col)) for g in grp]
                    pts = [(x, s) for x, s in pts if s is not None]
                    if not pts:
                        continue
                    scale = 100 if ck else 1 / 60
                    pts.sort(key=lambda t: t[0])
                    ax.errorbar([x for x, _ in pts], [s[0] * scale for _, s in pts], yerr=[s[1] * scale for _, s in pts],
                                fmt=style, ms=3, capsize=3, label=(ck or "train") + rest_label)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(p, fontsize=8)
            if not numeric:
                ax.set_xticks(range(len(xs_all)), [str(x)[:12] for x in xs_all], fontsize=7, rotation=30)
            ax.tick_params(labelsize=7)
        for ax in list(axs.flat)[n:]:
            ax.axis("off")
        h, lab = axs.flat[0].get_legend_handles_labels()
        if h:
            fig.legend(h, lab, loc="lower right", fontsize=7)
        fig.suptitle(f"accuracy (%) vs {p} (mean ± std over seeds)", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{p.replace('/', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def plot_curves(gs: list[Group], out_dir: Path) -> Path | None:
    """Per-epoch curves of every group (mean over its seeds, band = std), read from the trials' metrics.jsonl."""
    plt = _plt()
    series: list[tuple[str, dict[str, dict[int, list[float]]]]] = []
    for g in gs:
        acc: dict[str, dict[int, list[float]]] = {k: {} for k, _ in CURVE_KEYS}
        for r in g.rows:
            p = Path(r.get("out_dir") or "") / "metrics.jsonl"
            if not p.is_file():
                continue
            for line in p.read_text().splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                for k, _ in CURVE_KEYS:
                    if isinstance(rec.get(k), (int, float)):
                        acc[k].setdefault(int(rec["epoch"]), []).append(float(rec[k]))
        if any(acc.values()):
            series.append((g.label, acc))
    if not series:
        return None
    fig, axs = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.2))
    for ax, (k, lab) in zip(axs, CURVE_KEYS):
        for label, acc in series:
            eps = sorted(acc[k])
            if not eps:
                continue
            m = [sum(acc[k][e]) / len(acc[k][e]) for e in eps]
            sd = [math.sqrt(sum((x - mm) ** 2 for x in acc[k][e]) / max(len(acc[k][e]) - 1, 1)) for e, mm in zip(eps, m)]
            ax.plot(eps, m, marker="o", ms=2, label=label)
            ax.fill_between(eps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("epoch")
    axs[0].legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def make_report(sweep_dir: str | Path, console: Console | None = None, plots: bool = True) -> dict[str, Any]:
    """Print the table and write table.md, table.csv and the plots into ``<sweep_dir>/report``."""
    sweep_dir = Path(sweep_dir)
    rows, meta = load(sweep_dir / "results.parquet")
    if not rows:
        raise FileNotFoundError(f"no results in {sweep_dir / 'results.parquet'} (has a trial finished?)")
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    table, md, header, body = render(rows, meta)
    (out / "table.md").write_text(md)
    swept = json.loads(meta.get("orch.swept", "[]"))
    gs = groups(rows, swept)
    write_csv(out / "table.csv", gs, rows)
    written = [out / "table.md", out / "table.csv"]
    if plots:
        cols = columns_present(rows, eps_of(rows))
        written += plot_params(gs, cols, out)
        c = plot_curves(gs, out)
        if c:
            written.append(c)
    if console is not None:
        console.print(table)
    return {"table": table, "markdown": md, "header": header, "body": body, "files": written, "rows": rows, "meta": meta}

