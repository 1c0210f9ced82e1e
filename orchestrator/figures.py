"""``orch report``'s figures (matplotlib, imported only when a figure is drawn), and the per-trial ``curves.png``
the sweep's driver draws at each trial's end (:func:`plot_trial_curves`).

Written to the report folder: ``<param>.png`` for each swept parameter that takes more than one value,
``curves.png`` (per-epoch curves of each group), and, for comparing trials, ``tradeoff.png``, ``robust_epochs.png``
and ``time_to_threshold.png``. What each shows is in ``docs/figures/README.md`` and in its function's docstring;
groups are named by the swept values that differ (a section-valued axis by the sub-keys that differ).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from orchestrator.table import (
    Group, value_key, best_epoch_value, columns_present, eps_of, mean_sd, threshold_times, trial_records,
)
from training import metrics
from training.metrics import CURVES as CURVE_KEYS, ROBUST_KEY, curve_scale
from training.numbers import is_finite
from orchestrator.space import format_value, short_names


def write_figures(gs: list[Group], rows: list[dict[str, Any]], meta: dict[str, str], out_dir: Path,
                  threshold: float | None = None, threshold_frac: float = 0.9) -> tuple[list[Path], float | None]:
    """Every figure of the report into ``out_dir``: (the files written, the time-to-threshold threshold used)."""
    written = plot_params(gs, columns_present(rows, eps_of(rows)), out_dir)
    written += [p for p in (plot_curves(gs, out_dir), plot_tradeoff(gs, rows, meta, out_dir), plot_robust_epochs(gs, rows, out_dir)) if p]
    p, used = plot_time_to_threshold(gs, rows, out_dir, threshold=threshold, frac=threshold_frac)
    return written + ([p] if p else []), used


def varying_keys(gs: list[Group]) -> list[str]:
    """The swept keys that take more than one value across the groups. A key swept over a single value
    (``model.name: [small_cnn]`` next to the real axes) is a constant: it gets no plot of its own and splits no
    lines."""
    swept = list(gs[0].values) if gs else []
    return [k for k in swept if len({value_key(g.values[k]) for g in gs}) > 1]


def _differing_subkeys(vals: list[dict[str, Any]]) -> list[str]:
    """The sub-keys of section values (dicts) that are not the same in every one (missing in one counts as
    different), ``name`` first, then in order of first appearance."""
    subs = sorted(dict.fromkeys(s for v in vals for s in v), key=lambda s: s != "name")
    return [s for s in subs if len({value_key(v.get(s, _MISSING)) for v in vals}) > 1]


_MISSING = "\x00missing"


def value_labels(vals: list[Any], multiline: bool = False) -> list[str]:
    """Display strings that tell the values of one swept key apart, in the order given.

    Section values (dicts, e.g. ``{name: small_cnn, activation: relu, smooth_grad_for: both}``) keep only the
    sub-keys whose value is not the same for all of them. ``multiline`` (axis ticks): ``sub=value`` per line
    (``name`` bare); else (legends) one line, the values of ``name`` and of string sub-keys bare and the others
    as ``sub=value``, joined by commas (``relu_softplus_grad,attacker``, ``fgsm_sdi,k=20``). Other values:
    ``format_value``."""
    if not vals or not all(isinstance(v, dict) for v in vals):
        return [format_value(v) for v in vals]
    subs = _differing_subkeys(vals)
    out = []
    for v in vals:
        parts = [(s, v[s]) for s in subs if s in v]
        if not parts:  # nothing that differs is set here (all defaults): the value as a whole
            out.append(format_value(v))
        elif multiline:
            out.append("\n".join(format_value(x) if s == "name" else f"{s}={format_value(x)}" for s, x in parts))
        else:
            out.append(",".join(format_value(x) if s == "name" or isinstance(x, str) else f"{s}={format_value(x)}"
                                for s, x in parts))
    return out


def tick_labels(vals: list[Any]) -> list[str]:
    """x tick labels of a swept key's values: section values as their differing ``sub=value`` lines (never cut),
    other values shortened to 22 characters."""
    if vals and all(isinstance(v, dict) for v in vals):
        return value_labels(vals, multiline=True)
    return [t if len(t := format_value(v)) <= 22 else t[:21] + "…" for v in vals]


def _value_maps(gs: list[Group], keys: list[str]) -> dict[str, dict[str, str]]:
    """Per key: JSON of a value -> its compact label among the key's values over the groups."""
    out: dict[str, dict[str, str]] = {}
    for k in keys:
        vals: dict[str, Any] = {}
        for g in gs:
            vals.setdefault(value_key(g.values[k]), g.values[k])
        out[k] = dict(zip(vals, value_labels(list(vals.values()))))
    return out


def _compose(values: dict[str, Any], keys: list[str], maps: dict[str, dict[str, str]]) -> str:
    names = short_names(keys)
    if len(keys) == 1 and isinstance(values[keys[0]], dict):  # one section axis: its label says enough
        return maps[keys[0]][value_key(values[keys[0]])]
    parts = []
    for k in keys:
        s = maps[k][value_key(values[k])]
        parts.append(f"{names[k]}=({s})" if isinstance(values[k], dict) and "," in s else f"{names[k]}={s}")
    return ",".join(parts)


def compact_labels(gs: list[Group]) -> list[str]:
    """The groups' labels for figures, aligned with ``gs``: only the swept keys that vary, section values by
    their differing sub-keys (:func:`value_labels`). Without a varying key: the full :attr:`Group.label`."""
    keys = varying_keys(gs)
    if not keys:
        return [g.label for g in gs]
    maps = _value_maps(gs, keys)
    return [_compose(g.values, keys, maps) for g in gs]


def log_x(vals: list[Any]) -> bool:
    """A log x axis: positive numbers spanning more than a factor 20 (a learning rate from a log-uniform range)."""
    nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(vals) > 1 and min(nums) > 0 and max(nums) / min(nums) > 20


MAX_LINES = 6  # more combinations of the other swept keys than this: one scatter instead of one line each


def param_series(gs: list[Group], p: str, keys: list[str] | None = None) -> tuple[dict[str, list[Group]], bool]:
    """The groups of ``p``'s figure split by the values of the other varying keys (JSON of them -> groups), and
    whether to draw one scatter of every trial instead of a line per combination: when there are more than
    ``MAX_LINES`` combinations, or none of them has two values of ``p`` (each "line" would be one point, as in
    a search where every trial has its own config)."""
    keys = varying_keys(gs) if keys is None else keys
    others: dict[str, list[Group]] = {}
    for g in gs:
        others.setdefault(value_key({k: g.values[k] for k in keys if k != p}), []).append(g)
    single = all(len({value_key(g.values[p]) for g in grp}) < 2 for grp in others.values())
    return others, len(others) > MAX_LINES or single


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_TRIAL_FIGURE: dict[str, Any] = {}  # the reusable figure of plot_trial_curves (one per process), and its lock
# margins of a trial's curves.png, fixed (tight_layout on every plot cost as much as drawing it); room for tick
# labels such as 0.00025 to the left of every panel
_TRIAL_MARGINS = {"left": 0.04, "right": 0.99, "bottom": 0.195, "top": 0.79, "wspace": 0.2}


def _trial_figure() -> tuple[Any, list[Any], list[Any], Any]:
    """The figure, panels, data lines and title of :func:`plot_trial_curves`, built once per process."""
    if "fig" not in _TRIAL_FIGURE:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4 * len(CURVE_KEYS), 3))
        axs = list(fig.subplots(1, len(CURVE_KEYS)))
        lines = []
        for ax, (_, lab) in zip(axs, CURVE_KEYS):
            (ln,) = ax.plot([], [], marker="o", ms=3)
            lines.append(ln)
            ax.set_title(lab, fontsize=9)
            ax.set_xlabel("epoch")
        fig.subplots_adjust(**_TRIAL_MARGINS)
        _TRIAL_FIGURE.update(fig=(fig, axs, lines, fig.suptitle("", fontsize=10)))
    return _TRIAL_FIGURE["fig"]


def plot_trial_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """One trial's per-epoch curves (the MLflow artifact ``curves.png``), one panel per :data:`CURVE_KEYS`, the
    epochs of catastrophic overfitting as red dashed lines. Drawn at every trial's end by the sweep's driver, so
    it reuses one bare ``Figure`` (no pyplot state) with fixed margins: only the data, limits and title change
    from trial to trial (a new figure with ``tight_layout`` took 2-3 times as long)."""
    import threading

    lock = _TRIAL_FIGURE.setdefault("lock", threading.Lock())
    with lock:
        fig, axs, lines, suptitle = _trial_figure()
        ep = [r["epoch"] for r in records]
        co = [r["epoch"] for r in records if r.get("co/detected")]
        marks = []
        try:
            for ax, ln, (k, _) in zip(axs, lines, CURVE_KEYS):
                ys = [curve_scale(k) * r.get(k, float("nan")) for r in records]
                ln.set_data(ep, ys)
                ax.relim()
                if not any(math.isfinite(x) and math.isfinite(y) for x, y in zip(ep, ys)):
                    ax.set_xlim(-0.055, 0.055)  # what a new panel shows for nothing finite (relim keeps the old limits)
                    ax.set_ylim(-0.055, 0.055)
                else:
                    ax.set_autoscale_on(True)
                    ax.autoscale_view()
                marks += [ax.axvline(e, color="red", ls="--", lw=1) for e in co]
            suptitle.set_text(title)
            fig.savefig(path, dpi=80)
        finally:
            for m in marks:
                m.remove()


def _numeric_axis(ax: Any, vals: list[float]) -> None:
    """The x axis of a numeric parameter: log when :func:`log_x` (written as plain numbers, 0.002 not 2x10^-3);
    ticks at the values of a small grid (up to 8), else at most 5 on a linear axis or 1, 2 and 5 of each decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    log = log_x(vals)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if len(set(vals)) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(vals))))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if log else MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))


def _cmap(n: int) -> Any:
    """tab10 up to 10 series, tab20 beyond (so 11 to 20 series have colours of their own)."""
    return _plt().get_cmap("tab10" if n <= 10 else "tab20")


def _savefig(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
    """Save with the bounding box grown to hold everything drawn (titles, legends outside the axes, long tick
    labels): nothing is cut at the figure's edge."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    return path


def plot_params(gs: list[Group], cols: list[tuple[str, str]], out_dir: Path) -> list[Path]:
    """For each swept parameter that takes more than one value (:func:`varying_keys`): ``<param>.png``
    (:func:`param_figure`)."""
    plt = _plt()
    keys = varying_keys(gs)
    return [_savefig(plt, param_figure(gs, cols, p, keys), out_dir / f"{p.replace('/', '_')}.png", 90) for p in keys]


def param_figure(gs: list[Group], cols: list[tuple[str, str]], p: str, keys: list[str] | None = None) -> Any:
    """Each thesis column against the swept parameter ``p`` (best and last checkpoint), error bars = std over
    seeds, and the training time. With several varying parameters, one line per combination of the others, in one
    colour in every panel (the training time's included); with many combinations (or none with two values of
    ``p``, as in a search), one scatter of every finished trial instead (:func:`param_series`)."""
    from matplotlib.lines import Line2D

    plt = _plt()
    keys = varying_keys(gs) if keys is None else keys
    maps = _value_maps(gs, keys)
    xs_all: list[Any] = []
    for g in gs:
        if g.values[p] not in xs_all:
            xs_all.append(g.values[p])
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
    pos = {(value_key(x)): (x if numeric else i) for i, x in enumerate(xs_all)}
    others, scatter = param_series(gs, p, keys)
    rest_keys = [k for k in keys if k != p]
    cmap = _cmap(len(others))
    colour = {rk: cmap(i % cmap.N) for i, rk in enumerate(others)}
    ticks = [] if numeric else tick_labels(xs_all)
    lines = max((t.count("\n") + 1 for t in ticks), default=1)
    long_ticks = any(len(s) > 8 for t in ticks for s in t.split("\n"))
    panels = cols + [("Train time (min)", "time/train_s")]
    n = len(panels)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axs = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, (2.8 + (0.25 * lines if long_ticks else 0)) * nrow),
                            squeeze=False)
    for ax, (label, c) in zip(axs.flat, panels):
        for ck, style in (("best", "-o"), ("last", "--s")) if c != "time/train_s" else (("", "-o"),):
            col = f"{ck}/{c}" if ck else c
            scale = 100 if ck else 1 / 60
            if scatter:  # every finished trial, one point each
                pts = [(pos[value_key(g.values[p])], float(r[col]) * scale) for g in gs for r in g.good() if is_finite(r.get(col))]
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], ls="none", marker=style[-1], ms=4,
                            color={"best": "C0", "last": "C1"}.get(ck, "dimgray"), mfc="none" if ck == "last" else None,
                            alpha=0.8)
                continue
            for rk, grp in others.items():
                pts = [(pos[value_key(g.values[p])], g.stats(col)) for g in grp]
                pts = sorted(((x, s) for x, s in pts if s is not None), key=lambda t: t[0])
                if pts:
                    ax.errorbar([x for x, _ in pts], [s[0] * scale for _, s in pts], yerr=[s[1] * scale for _, s in pts],
                                fmt=style, ms=3, capsize=3, color=colour[rk])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(p, fontsize=8)
        if not numeric:
            ax.set_xticks(range(len(xs_all)), ticks, fontsize=7, **({"rotation": 45 if lines > 1 else 30, "ha": "right",
                                                                       "rotation_mode": "anchor"} if long_ticks else {}))
        else:
            _numeric_axis(ax, xs_all)
        ax.tick_params(labelsize=7)
    for ax in list(axs.flat)[n:]:
        ax.axis("off")
    if scatter:
        handles = [Line2D([], [], ls="none", marker="o", color="C0", label="best checkpoint"),
                   Line2D([], [], ls="none", marker="s", mfc="none", color="C1", label="last checkpoint")]
        n_ok = sum(len(g.good()) for g in gs)
        title = (f"accuracy (%) vs {p}: one point per finished trial ({n_ok} trial{'s' if n_ok != 1 else ''} of "
                 f"{len(gs)} configs; the other swept parameters vary too)")
    else:
        handles = [Line2D([], [], color="black", ls="-", marker="o", ms=4, label="best checkpoint"),
                   Line2D([], [], color="black", ls="--", marker="s", ms=4, label="last checkpoint")]
        if rest_keys:
            handles += [Line2D([], [], color=colour[rk], lw=2.5, label=_compose(grp[0].values, rest_keys, maps))
                        for rk, grp in others.items()]
        title = f"accuracy (%) vs {p} (mean ± std over seeds" + (", one colour per value of the others)" if rest_keys else ")")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


MAX_CURVE_LEGEND = 20  # more groups than this: curves.png has no legend (the colours are those of robust_epochs.png)


def plot_curves(gs: list[Group], out_dir: Path) -> Path | None:
    """Per-epoch curves of every group (mean over its seeds, band = std), read from the trials' metrics.jsonl.
    Colours and labels are those of the comparison figures; the legend goes below the panels."""
    plt = _plt()
    style = _styles(gs)
    series: list[tuple[str, Any, dict[str, dict[int, list[float]]]]] = []
    for g in gs:
        acc: dict[str, dict[int, list[float]]] = {k: {} for k, _ in CURVE_KEYS}
        for r in g.rows:
            for rec in trial_records(r):
                for k, _ in CURVE_KEYS:
                    if is_finite(rec.get(k)):
                        acc[k].setdefault(int(rec["epoch"]), []).append(curve_scale(k) * float(rec[k]))
        if any(acc.values()):
            series.append((style[id(g)][2], style[id(g)][0], acc))
    if not series:
        return None
    width = 4 * len(CURVE_KEYS)
    fig, axs = plt.subplots(1, len(CURVE_KEYS), figsize=(width, 3.2))
    for ax, (k, lab) in zip(axs, CURVE_KEYS):
        for label, color, acc in series:
            eps = sorted(acc[k])
            if not eps:
                continue
            m, sd = map(list, zip(*(mean_sd(acc[k][e]) for e in eps)))
            ax.plot(eps, m, marker="o", ms=2, color=color, label=label)
            ax.fill_between(eps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.15)
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    title = f"per-epoch curves of {len(series)} group{'s' if len(series) > 1 else ''} (mean over seeds, band: std)"
    if len(series) > MAX_CURVE_LEGEND:
        title += f"; legend left out ({len(series)} groups): colours as in robust_epochs.png"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if len(series) <= MAX_CURVE_LEGEND:
        h, lab = axs[0].get_legend_handles_labels()
        per_col = 0.6 * 7 / 72 * max(len(s) for s in lab) + 0.5  # inches one entry takes at fontsize 7
        fig.legend(h, lab, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, frameon=False,
                   ncol=max(1, min(len(h), int(width // per_col))))
    return _savefig(plt, fig, out_dir / "curves.png", 90)


MARKERS = "osD^vP*Xph<>"  # one marker per group in the comparison figures (with its colour)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised), by the first
    coordinate. Equal points are all on the front."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(qx >= x and qy >= y and (qx > x or qy > y) for qx, qy in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def main_columns(rows: list[dict[str, Any]], meta: dict[str, str]) -> tuple[str, str, str] | None:
    """(clean column, robust column, robust label) for the trade-off front, on the checkpoint of the sweep's
    metric: the metric itself when it is a final robust column that trials have, else AA, else PGD-10, else the
    first robust column present."""
    eps = eps_of(rows)
    present = {k for r in rows for k, v in r.items() if is_finite(v)}
    labels = {key: label for label, key in metrics.table_columns(present, eps)}
    metric = meta.get("orch.metric") or ""
    ck = metric.split("/", 1)[0] if metric.startswith(("best/", "last/")) else "best"
    clean = f"{ck}/clean"
    if clean not in present:
        return None
    name = metric.split("/", 1)[1] if metric.startswith(("best/", "last/")) else ""
    if not (name in labels and name != "clean" and metric in present):
        first = [metrics.column_key("aa", float(eps)), metrics.column_key("pgd10", float(eps))]
        cands = first + [c for c in labels if c not in ("clean", *first)]
        name = next((c for c in cands if f"{ck}/{c}" in present), "")
        if not name:
            return None
    return clean, f"{ck}/{name}", f"{labels[name]} ({ck} ckpt, ε = {eps}/255)"


def _styles(gs: list[Group]) -> dict[int, tuple[Any, str, str]]:
    """The same colour, marker and label (:func:`compact_labels`) for a group in every comparison figure."""
    cmap = _cmap(len(gs))
    return {id(g): (cmap(i % cmap.N), MARKERS[i % len(MARKERS)], lab) for i, (g, lab) in enumerate(zip(gs, compact_labels(gs)))}


def _save(plt: Any, fig: Any, ax: Any, n_leg: int, path: Path) -> Path:
    """Grid, tight layout, legend beside the axes, PNG at 110 dpi grown to hold the legend (laid out after it, so
    long legend entries widen the image instead of squeezing the axes)."""
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if n_leg:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False, ncol=1 if n_leg <= 16 else 2,
                  borderaxespad=0.0)
    return _savefig(plt, fig, path, 110)


def plot_tradeoff(gs: list[Group], rows: list[dict[str, Any]], meta: dict[str, str], out_dir: Path) -> Path | None:
    """Clean vs robust accuracy of every finished trial, group means ± std, and the trials' Pareto front."""
    cols = main_columns(rows, meta)
    if cols is None:
        return None
    clean, robust, rlabel = cols
    pts: list[tuple[float, float]] = []
    names: list[str] = []
    style = _styles(gs)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    n_leg = 0
    co_pts: list[tuple[float, float]] = []
    for g in gs:
        color, marker, glabel = style[id(g)]
        mine = [(100 * r[clean], 100 * r[robust], r) for r in g.good() if is_finite(r.get(clean)) and is_finite(r.get(robust))]
        if not mine:
            continue
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], color=color, marker=marker, s=28, alpha=0.55, lw=0)
        pts += [(x, y) for x, y, _ in mine]
        names += [_trial_label(glabel, r) for _, _, r in mine]
        co_pts += [(x, y) for x, y, r in mine if r.get("outcome") == "catastrophic_overfitting"]
        sx, sy = g.stats(clean), g.stats(robust)
        ax.errorbar(100 * sx[0], 100 * sy[0], xerr=100 * sx[1], yerr=100 * sy[1], color=color, marker=marker, ms=9,
                    mec="black", mew=0.8, capsize=3, lw=1, label=f"{glabel} (n={sx[2]})")
        n_leg += 1
    if not pts:
        plt.close(fig)
        return None
    front = pareto_front(pts)
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.margins(0.08)
    x0, y0 = ax.get_xlim()[0], ax.get_ylim()[0]
    # the border of what the front dominates: left of its first point, down its steps, below its last point
    sx, sy = [x0], [fy[0]]
    for i, (x, y) in enumerate(zip(fx, fy)):
        sx += [x, x] if i else [x]
        sy += [fy[i - 1], y] if i else [y]
    sx.append(fx[-1])
    sy.append(y0)
    ax.plot(sx, sy, color="black", lw=1.0, ls="--", zorder=1)
    ax.plot(fx, fy, ls="none", marker="o", mfc="none", mec="black", ms=12, mew=1.2, zorder=4,
            label=f"Pareto front ({len(front)} trial{'s' if len(front) > 1 else ''})")
    ax.set_xlim(left=x0)
    ax.set_ylim(bottom=y0)
    n_leg += 1
    if len(front) <= MAX_FRONT_NAMES:  # number the front's trials; the legend names them (no long labels to overlap)
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}
        for at, nums in front_numbers([pts[i] for i in front]).items():
            ax.annotate(",".join(map(str, nums)), at, xytext=(6, 5), textcoords="offset points", fontsize=7,
                        fontweight="bold", zorder=6, bbox=box)
        for j, i in enumerate(front, 1):
            ax.plot([], [], ls="none", marker=f"${j}$", color="black", ms=6, label=names[i])
            n_leg += 1
    if co_pts:
        ax.scatter([p[0] for p in co_pts], [p[1] for p in co_pts], marker="x", color="red", s=60, lw=1.5,
                   label="catastrophic overfitting", zorder=4)
        n_leg += 1
    ax.set_xlabel(f"clean accuracy (%) ({clean.split('/')[0]} ckpt)")
    ax.set_ylabel(f"{rlabel.split(' (')[0]} accuracy (%)")
    ax.set_title(f"trade-off: clean vs {rlabel}\nsmall: one trial; large: group mean ± std over seeds; "
                 "dashed: border of what the front dominates", fontsize=9)
    return _save(plt, fig, ax, n_leg, out_dir / "tradeoff.png")


MAX_FRONT_NAMES = 9  # the trials on a Pareto front of up to this many are numbered and named in the legend


def _trial_label(group_label: str, r: dict[str, Any]) -> str:
    """A trial in a legend: its group's compact label and its seed (not the trial name: older names hold whole
    section dicts)."""
    seed = r.get("seed", r.get("config.seed"))
    return f"{group_label}, seed {seed}" if seed is not None else group_label


def front_numbers(points: list[tuple[float, float]]) -> dict[tuple[float, float], list[int]]:
    """Numbers (1, 2, ...) of the front's points by position: points that coincide share one annotation
    (``1,2``) instead of drawing two on top of each other."""
    out: dict[tuple[float, float], list[int]] = {}
    for j, p in enumerate(points, 1):
        out.setdefault((round(p[0], 9), round(p[1], 9)), []).append(j)
    return out


def _pgd_label(rows: list[dict[str, Any]]) -> str:
    steps = {r.get("config.eval.epoch_pgd_steps") for r in rows} - {None}
    return f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD"


def plot_robust_epochs(gs: list[Group], rows: list[dict[str, Any]], out_dir: Path, key: str = ROBUST_KEY) -> Path | None:
    """Validation PGD accuracy per epoch, one line per trial (colour = group), catastrophic overfitting marked."""
    plt = _plt()
    style = _styles(gs)
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    n_lines = n_leg = 0
    co_x: list[float] = []
    co_y: list[float] = []
    max_epoch = 0
    for g in gs:
        color, marker, glabel = style[id(g)]
        labelled = False
        for j, r in enumerate(g.rows):
            recs = [rec for rec in trial_records(r) if is_finite(rec.get(key))]
            if not recs:
                continue
            ep = [rec["epoch"] for rec in recs]
            val = [100 * rec[key] for rec in recs]
            max_epoch = max(max_epoch, ep[-1])
            ax.plot(ep, val, color=color, lw=1.1, alpha=0.8, ls=("-", "--", ":", "-.")[j % 4], marker=marker, ms=2.5,
                    label=None if labelled else glabel)
            labelled = True
            n_lines += 1
            co = {rec["epoch"] for rec in recs if rec.get("co/detected")}
            if isinstance(r.get("co_epoch"), int):
                co.add(r["co_epoch"])
            for e in sorted(co):
                if e in ep:
                    co_x.append(e)
                    co_y.append(val[ep.index(e)])
        n_leg += labelled
    if not n_lines:
        plt.close(fig)
        return None
    if co_x:
        ax.scatter(co_x, co_y, marker="X", color="red", s=70, edgecolor="black", lw=0.5, zorder=5,
                   label="catastrophic overfitting detected")
        n_leg += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {_pgd_label(rows)} accuracy (%)")
    if max_epoch <= 20:
        ax.set_xticks(range(1, max_epoch + 1))
    ax.set_title(f"robust accuracy per epoch of every trial ({n_lines})\ncolour: group; line style: 1st, 2nd, 3rd, "
                 "4th trial of a group (solid, dashed, dotted, dash-dot)", fontsize=9)
    return _save(plt, fig, ax, n_leg, out_dir / "robust_epochs.png")


def plot_time_to_threshold(gs: list[Group], rows: list[dict[str, Any]], out_dir: Path, threshold: float | None = None,
                           frac: float = 0.9, key: str = ROBUST_KEY) -> tuple[Path | None, float | None]:
    """Training time until the validation PGD accuracy first reaches ``threshold`` (default ``frac`` x the best
    of the sweep), per group; (figure, threshold used)."""
    best = best_epoch_value(gs, key)
    if best is None:
        return None, threshold
    how = "given"
    if threshold is None:
        threshold = frac * best
        how = f"{frac:g} × best {100 * best:.1f}%"
    data = [(g, trials) for g, trials in threshold_times(gs, threshold, key) if trials]
    if not data:
        return None, threshold
    reached_all = [t[0] for _, trials in data for _, t in trials if t is not None]
    minutes = bool(reached_all) and max(reached_all) > 120
    unit, scale = ("min", 1 / 60) if minutes else ("s", 1.0)
    plt = _plt()
    style = _styles(gs)
    fig, ax = plt.subplots(figsize=(8.0, 0.9 + 0.42 * len(data) + 1.2))
    xmax = max(reached_all) * scale if reached_all else 1.0
    for i, (g, trials) in enumerate(data):
        color, marker, _ = style[id(g)]
        ts = [t for _, t in trials if t is not None]
        n, m = len(ts), len(trials)
        if ts:
            secs = [t[0] * scale for t in ts]
            mean, sd = mean_sd(secs)
            ax.barh(i, mean, xerr=sd if n > 1 else None, color=color, alpha=0.45, height=0.6, capsize=3)
            ax.scatter(secs, [i] * n, color=color, marker=marker, s=22, edgecolor="black", lw=0.4, zorder=3)
            eps = sorted(t[1] for t in ts)
            ep = f"epoch {eps[0]}" if eps[0] == eps[-1] else f"epochs {eps[0]}–{eps[-1]}"
            note = f"{mean:.1f} {unit}, {ep}" + (f"; {m - n} of {m} never" if n < m else "")
            ax.text(mean + (sd if n > 1 else 0) + 0.01 * xmax, i, "  " + note, va="center", fontsize=7)
        else:
            ax.text(0.01 * xmax, i, f"never reached ({m} trial{'s' if m > 1 else ''})", va="center", fontsize=7,
                    color="dimgray", style="italic")
    ax.set_yticks(range(len(data)), [style[id(g)][2] for g, _ in data], fontsize=8)
    ax.set_ylim(len(data) - 0.5, -0.5)  # first group on top; rows without a bar keep their room
    ax.set_xlim(0, xmax * 1.45)
    ax.set_xlabel(f"training time until validation {_pgd_label(rows)} accuracy ≥ {100 * threshold:.1f}% ({unit}; "
                  "per-epoch evaluation excluded)", fontsize=8)
    ax.set_title(f"time to a robust-accuracy threshold of {100 * threshold:.1f}% ({how})\n"
                 "bar: mean ± std over the seeds that reached it; dots: trials", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _savefig(plt, fig, out_dir / "time_to_threshold.png", 110), threshold

