"""``orch report``'s figures for comparing trials (trade-off front, robust accuracy per epoch, time to a threshold):
the pure functions on constructed cases, the figures on a constructed sweep whose numbers are known (written
through orchestrator/results.py, with real metrics.jsonl files) and on the real 4-trial grid sweep."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.figures import (
    MAX_LINES, compact_labels, front_numbers, log_x, main_columns, param_figure, param_series, pareto_front,
    tick_labels, value_labels, varying_keys,
)
from orchestrator.report import make_report
from orchestrator.table import Group, best_epoch_value, groups, threshold_times, time_to_threshold, trial_records
from orchestrator.results import ResultsFile, trial_row

FIGURES = ("tradeoff.png", "robust_epochs.png", "time_to_threshold.png")


# ------------------------------------------------------------------------------------------ pure functions


def _recs(accs: list[float], epoch_s: float = 10.0, cumulative: bool = True) -> list[dict[str, Any]]:
    out, t = [], 0.0
    for e, a in enumerate(accs, 1):
        t += epoch_s + e  # 11, 23, 36, 50, ...: epochs of different lengths
        rec = {"epoch": e, "val/pgd_acc": a, "time/epoch_s": epoch_s + e}
        if cumulative:
            rec["time/train_s"] = t
        out.append(rec)
    return out


def test_time_to_threshold_is_the_training_time_of_the_first_epoch_at_or_above_it() -> None:
    recs = _recs([0.20, 0.45, 0.40, 0.50])
    assert time_to_threshold(recs, 0.45) == (23.0, 2)  # reached exactly: counts
    assert time_to_threshold(recs, 0.46) == (50.0, 4)  # the first epoch above, not the dip at epoch 3
    assert time_to_threshold(recs, 0.10) == (11.0, 1)
    assert time_to_threshold(recs, 0.51) is None
    assert time_to_threshold([], 0.1) is None
    # without the cumulative time/train_s: the sum of the per-epoch times up to that epoch
    assert time_to_threshold(_recs([0.20, 0.45, 0.40, 0.50], cumulative=False), 0.46) == (11 + 12 + 13 + 14, 4)
    # NaN (no validation split) never reaches anything
    assert time_to_threshold([{"epoch": 1, "val/pgd_acc": float("nan"), "time/train_s": 5.0}], 0.0) is None


def test_trial_records_keep_the_last_record_of_a_repeated_epoch(tmp_path: Path) -> None:
    """A resumed trial repeats the epochs after its last checkpoint in metrics.jsonl; a killed write leaves a
    cut line."""
    lines = [{"epoch": 1, "val/pgd_acc": 0.1}, {"epoch": 2, "val/pgd_acc": 0.2}, {"epoch": 2, "val/pgd_acc": 0.3},
             {"epoch": 3, "val/pgd_acc": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"epoch": 4, "val/pg')
    recs = trial_records({"out_dir": str(tmp_path)})
    assert [(r["epoch"], r["val/pgd_acc"]) for r in recs] == [(1, 0.1), (2, 0.3), (3, 0.4)]
    assert trial_records({"out_dir": str(tmp_path / "missing")}) == [] and trial_records({}) == []


def test_pareto_front() -> None:
    pts = [(80.0, 40.0), (85.0, 38.0), (79.0, 39.0), (85.0, 38.0), (70.0, 45.0), (84.0, 37.0), (90.0, 30.0)]
    # (79, 39) is beaten by (80, 40); (84, 37) by (85, 38); the two equal (85, 38) are both on it
    assert pareto_front(pts) == [4, 0, 1, 3, 6]
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([(1.0, 2.0), (1.0, 1.0)]) == [0]  # equal on one, worse on the other: dominated


def test_main_columns_follow_the_sweeps_metric() -> None:
    rows = [{"config.threat.eps_255": 8.0, "best/clean": 0.8, "best/pgd10_eps8": 0.4, "best/aa_eps8": 0.35,
             "last/clean": 0.79, "last/pgd10_eps8": 0.41}]
    assert main_columns(rows, {"orch.metric": "best/pgd10_eps8"})[:2] == ("best/clean", "best/pgd10_eps8")
    assert main_columns(rows, {"orch.metric": "last/pgd10_eps8"})[:2] == ("last/clean", "last/pgd10_eps8")
    # a metric that is not a final robust column (or none): AA when there is one, on the best checkpoint
    assert main_columns(rows, {"orch.metric": "val/pgd_acc"})[:2] == ("best/clean", "best/aa_eps8")
    assert main_columns(rows, {})[:2] == ("best/clean", "best/aa_eps8")
    assert main_columns([{k: v for k, v in rows[0].items() if k != "best/aa_eps8"}], {})[:2] == ("best/clean", "best/pgd10_eps8")
    assert main_columns([{"best/pgd10_eps8": 0.4}], {}) is None  # no clean accuracy: no trade-off


# -------------------------------------------------------------------------------- labels and series of figures

# the section-valued axis of the gradient_quality study: every value has name=small_cnn
MODELS = [{"name": "small_cnn", "activation": "relu", "smooth_grad_for": "both"},
          {"name": "small_cnn", "activation": "relu_softplus_grad", "smooth_grad_for": "attacker"},
          {"name": "small_cnn", "activation": "relu_softplus_grad", "smooth_grad_for": "none"}]


def _groups(values: list[dict[str, Any]]) -> list[Group]:
    return [Group(v, [{"status": "finished"}]) for v in values]


def test_section_values_are_labelled_by_the_sub_keys_that_differ() -> None:
    assert value_labels(MODELS) == ["relu,both", "relu_softplus_grad,attacker", "relu_softplus_grad,none"]
    # ticks: one sub=value per line, nothing cut (the old ticks were all "small_cnn(activation=…")
    assert tick_labels(MODELS) == ["activation=relu\nsmooth_grad_for=both",
                                   "activation=relu_softplus_grad\nsmooth_grad_for=attacker",
                                   "activation=relu_softplus_grad\nsmooth_grad_for=none"]
    # name differs: bare; a number: sub=value; a sub-key set in one value only differs from its absence
    methods = [{"name": "pgd_at"}, {"name": "fgsm_sdi", "k": 20, "label_smoothing": 0.9}, {"name": "fgsm_sdi", "k": 40,
                                                                                            "label_smoothing": 0.9}]
    assert value_labels(methods) == ["pgd_at", "fgsm_sdi,k=20,label_smoothing=0.9", "fgsm_sdi,k=40,label_smoothing=0.9"]
    assert tick_labels(methods) == ["pgd_at", "fgsm_sdi\nk=20\nlabel_smoothing=0.9", "fgsm_sdi\nk=40\nlabel_smoothing=0.9"]
    # plain values as before: format_value, long ticks shortened
    assert value_labels([1, 0.123456, "relu"]) == ["1", "0.1235", "relu"]
    assert tick_labels(["a" * 30]) == ["a" * 21 + "…"]


def test_a_single_valued_swept_key_is_no_dimension() -> None:
    """scaling: model.name is swept over [small_cnn] next to image_size x width."""
    gs = _groups([{"model.name": "small_cnn", "data.image_size": s, "model.width": w} for s in (8, 16) for w in (8, 16, 32)])
    assert varying_keys(gs) == ["data.image_size", "model.width"]
    assert compact_labels(gs)[:2] == ["image_size=8,width=8", "image_size=8,width=16"]
    others, scatter = param_series(gs, "model.width")
    assert not scatter and len(others) == 2 and all(len(g) == 3 for g in others.values())  # one line per image size
    assert varying_keys(_groups([{"k": 1}, {"k": 1}])) == [] and varying_keys([]) == []


def test_the_scaling_sweep_draws_no_figure_of_its_constant_key(tmp_path: Path) -> None:
    sdir = _write_sweep(tmp_path / "fake", CURVES, swept=["method.name", "method.k"])
    names = {p.name for p in make_report(sdir, out_dir=tmp_path / "out")["files"]}
    assert "method.k.png" in names and "method.name.png" not in names
    assert not (tmp_path / "out" / "method.name.png").exists()


def test_compact_labels_of_a_section_axis_and_of_several_axes() -> None:
    assert compact_labels(_groups([{"model": m} for m in MODELS])) == [
        "relu,both", "relu_softplus_grad,attacker", "relu_softplus_grad,none"]
    gs = _groups([{"model": m, "optim.lr": lr} for m in MODELS[:2] for lr in (0.1, 0.2)])
    assert compact_labels(gs)[:2] == ["model=(relu,both),lr=0.1", "model=(relu,both),lr=0.2"]
    assert compact_labels(_groups([{"method.k": 3}])) == ["k=3"]  # nothing varies: the full label


def test_many_combinations_or_single_points_make_one_scatter() -> None:
    # a search: every trial its own config over 5 parameters -> every "line" would be one point
    rng = np.random.default_rng(0)
    search = _groups([{"optim.lr": float(rng.uniform(0.01, 0.3)), "method.k": int(rng.integers(1, 40)),
                       "method.alpha_255": float(rng.uniform(8, 24))} for _ in range(12)])
    others, scatter = param_series(search, "optim.lr")
    assert scatter and len(others) == 12
    # a grid with more combinations of the others than MAX_LINES, each with two values of the parameter
    wide = _groups([{"a": a, "b": b} for a in (1, 2) for b in range(MAX_LINES + 1)])
    assert param_series(wide, "a")[1] and not param_series(wide, "b")[1]
    assert len(param_series(wide, "a")[0]) == MAX_LINES + 1
    # exactly MAX_LINES lines are still lines; one swept parameter is one line
    assert not param_series(_groups([{"a": a, "b": b} for a in (1, 2) for b in range(MAX_LINES)]), "a")[1]
    one = _groups([{"k": k} for k in (1, 2, 10)])
    assert param_series(one, "k") == ({"{}": one}, False)


def test_log_x_for_positive_values_spanning_more_than_20x() -> None:
    assert log_x([0.01, 0.1, 0.3]) and log_x([1, 2, 10, 40])
    assert not log_x([1, 2, 10, 20]) and not log_x([8, 16, 32])  # at most 20x
    assert not log_x([0.0, 1.0, 100.0]) and not log_x([-1.0, 50.0])  # not all positive
    assert not log_x(["relu", "gelu"]) and not log_x([True, 100]) and not log_x([0.5])


def test_coinciding_front_points_share_one_number() -> None:
    assert front_numbers([(88.5, 55.5), (88.5, 55.5), (90.0, 50.0)]) == {(88.5, 55.5): [1, 2], (90.0, 50.0): [3]}
    assert front_numbers([]) == {}


def _rows(value: dict[str, Any], seeds: int = 2) -> list[dict[str, Any]]:
    base = 0.5 + 0.05 * value["act_alpha"]
    return [{"status": "finished", "best/clean": base + 0.01 * s, "last/clean": base, "time/train_s": 60.0 * value["act_alpha"]}
            for s in range(seeds)]


def test_each_combination_has_one_colour_in_every_panel_the_training_time_included() -> None:
    """celu_alpha: activation x act_alpha; against activation, one line per alpha. The old figure let matplotlib's
    colour cycle run on: best and last of one alpha had two colours and the time panel's lines (one per alpha)
    took the colours of other lines."""
    gs = [Group({"model.activation": a, "model.act_alpha": al}, _rows({"act_alpha": al}))
          for a in ("elu", "celu") for al in (1.0, 1.5, 2.0)]
    from matplotlib.colors import to_hex

    fig = param_figure(gs, [("Clean", "clean")], "model.activation")
    try:
        leg = fig.legends[0]
        legend = {t.get_text(): to_hex(h.get_color()) for t, h in zip(leg.get_texts(), leg.legend_handles)}
        alphas = sorted(v for k, v in legend.items() if k.startswith("act_alpha="))
        assert len(alphas) == 3 and len(set(alphas)) == 3, legend
        clean, time = fig.axes[0], fig.axes[1]
        assert clean.get_title() == "Clean" and time.get_title() == "Train time (min)"
        # best and last of each alpha: the alpha's colour; the time panel: the same three colours
        assert sorted(_line_colours(clean)) == sorted(alphas * 2)
        assert sorted(_line_colours(time)) == alphas
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _line_colours(ax: Any) -> list[str]:
    """The colour of every errorbar series' line (not its caps and bars)."""
    from matplotlib.colors import to_hex

    return [to_hex(c.lines[0].get_color()) for c in ax.containers]


def test_more_than_ten_lines_get_colours_of_their_own() -> None:
    import matplotlib.pyplot as plt

    gs = [Group({"a": a, "b": b}, _rows({"act_alpha": 1.0 + b / 10})) for a in (1, 2) for b in range(12)]
    import orchestrator.figures as figures

    old = figures.MAX_LINES
    figures.MAX_LINES = 20  # 12 lines, not a scatter
    try:
        fig = param_figure(gs, [("Clean", "clean")], "a")
        cols = set(_line_colours(fig.axes[0]))
        plt.close(fig)
    finally:
        figures.MAX_LINES = old
    assert len(cols) == 12


# ------------------------------------------------------------------------------------- a constructed sweep

# val PGD accuracy per epoch of each trial (k, seed): k=1 is slow and good, k=10 fast with catastrophic
# overfitting at epoch 3 for seed 1, k=40 never gets far; one k=40 trial failed before any epoch
CURVES = {
    (1, 0): [0.20, 0.30, 0.42, 0.50], (1, 1): [0.22, 0.28, 0.38, 0.46],
    (10, 0): [0.30, 0.40, 0.44, 0.48], (10, 1): [0.32, 0.45, 0.05, 0.04],
    (40, 0): [0.10, 0.15, 0.18, 0.20],
}
EPOCH_S = {1: 10.0, 10: 5.0, 40: 2.0}


def _write_sweep(d: Path, curves: dict[tuple[int, int], list[float]], failed: bool = True, jsonl: bool = True,
                 swept: list[str] | None = None) -> Path:
    (d / "trials").mkdir(parents=True)
    rf = ResultsFile(d / "results.parquet", {"orch.sweep": "fake", "orch.swept": json.dumps(swept or ["method.k"]),
                                             "orch.metric": "best/pgd10_eps8", "orch.mode": "max"})
    plan = list(curves.items()) + ([((40, 1), None)] if failed else [])
    for i, ((k, seed), accs) in enumerate(plan):
        name = f"k={k},seed={seed}"
        out = d / "trials" / name
        out.mkdir()
        config = {"method": {"name": "fgsm_sdi", "k": k}, "seed": seed, "threat": {"eps_255": 8},
                  "eval": {"epoch_pgd_steps": 3}}
        if accs is None:
            rf.upsert(trial_row(key=f"t{i}", name=name, index=i, seed=seed, status="failed", last_result=None, config=config,
                                error="RuntimeError: boom", out_dir=str(out)), write=False)
            continue
        co = next((e for e in range(2, len(accs) + 1) if accs[e - 1] < accs[e - 2] - 0.2), None)
        recs = []
        for e, a in enumerate(accs, 1):
            recs.append({"epoch": e, "val/pgd_acc": a, "val/clean_acc": min(1.0, a + 0.4), "train/pgd_acc": a,
                         "train/loss": 2.0 - a, "time/epoch_s": EPOCH_S[k], "time/train_s": EPOCH_S[k] * e,
                         "co/detected": int(e == co)})
        if jsonl:
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        best = max(accs)
        final = {"final": True, "outcome": "catastrophic_overfitting" if co else "finished", "co_epoch": co,
                 "best_epoch": accs.index(best) + 1, "epochs_run": len(accs), "time/train_s": EPOCH_S[k] * len(accs),
                 "best/clean": min(1.0, best + 0.35 + 0.01 * seed), "best/pgd10_eps8": best - 0.02,
                 "last/clean": min(1.0, accs[-1] + 0.4), "last/pgd10_eps8": accs[-1] - 0.02}
        rf.upsert(trial_row(key=f"t{i}", name=name, index=i, seed=seed, status="finished", last_result=final,
                            config=config, out_dir=str(out)), write=False)
    rf.write()
    return d


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)[..., :3]
    assert img.shape[0] > 300 and img.shape[1] > 500, (path, img.shape)
    # more than a blank canvas: many distinct colours (lines, markers, text anti-aliasing)
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50, path
    return img


def _pure_red(img: np.ndarray) -> int:
    """Pixels of the catastrophic-overfitting marker's colour (matplotlib 'red'; tab10's red is (0.84, 0.15, 0.16))."""
    return int(((img[..., 0] > 0.95) & (img[..., 1] < 0.05) & (img[..., 2] < 0.05)).sum())


def test_constructed_sweep_figures_and_threshold(tmp_path: Path) -> None:
    sdir = _write_sweep(tmp_path / "fake", CURVES)
    rep = make_report(sdir, out_dir=tmp_path / "out")
    files = {p.name: p for p in rep["files"]}
    for f in FIGURES:
        assert f in files and files[f].parent == tmp_path / "out", (f, files)
        _png(files[f])
    assert not (sdir / "report").exists()  # out_dir replaces <sweep>/report, it does not add to it
    # default threshold: 0.9 x the best validation PGD accuracy of any epoch of any trial (0.50 of k=1,seed=0)
    assert rep["threshold"] == pytest.approx(0.45)
    # catastrophic overfitting (k=10, seed 1, epoch 3) is marked on the per-epoch figure and the front
    assert _pure_red(_png(files["robust_epochs.png"])) > 20
    assert _pure_red(_png(files["tradeoff.png"])) > 5

    rows = rep["rows"]
    gs = groups(rows, ["method.k"])
    assert best_epoch_value(gs) == pytest.approx(0.50)
    got = {g.label: sorted(((r["trial_name"], t) for r, t in trials), key=lambda x: x[0]) for g, trials in threshold_times(gs, 0.45)}
    assert got == {
        "k=1": [("k=1,seed=0", (40.0, 4)), ("k=1,seed=1", (40.0, 4))],  # 0.46 at epoch 4, 10 s epochs
        "k=10": [("k=10,seed=0", (20.0, 4)), ("k=10,seed=1", (10.0, 2))],  # seed 1: 0.45 at epoch 2, reached exactly
        "k=40": [("k=40,seed=0", None)],  # never; the failed trial has no records and is not counted
    }
    # an explicit threshold is used as given
    rep2 = make_report(sdir, out_dir=tmp_path / "out2", threshold=0.3)
    assert rep2["threshold"] == 0.3 and (tmp_path / "out2" / "time_to_threshold.png").is_file()


def test_a_section_axis_is_named_by_its_differing_sub_keys_in_the_comparison_figures(tmp_path: Path, monkeypatch) -> None:
    """Swept over the whole ``method`` section (name fgsm_sdi in all, k differs): legends and the numbered Pareto
    front use ``k=1`` and ``k=10, seed 0``, never the section dicts of the trial names."""
    import orchestrator.figures as figures

    legends: dict[str, list[str]] = {}
    real = figures._savefig

    def spy(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
        legends[path.name] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        legends[path.name] += [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        legends[path.name] += [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
        return real(plt, fig, path, dpi)

    monkeypatch.setattr(figures, "_savefig", spy)
    sdir = _write_sweep(tmp_path / "fake", CURVES, swept=["method"])
    make_report(sdir, out_dir=tmp_path / "out")
    assert {"k=1 (n=2)", "k=10 (n=2)", "k=40 (n=1)"} <= set(legends["tradeoff.png"]), legends["tradeoff.png"]
    front = [t for t in legends["tradeoff.png"] if "seed" in t]
    assert front and all(t.startswith("k=") and t.split(", seed ")[1] in ("0", "1") for t in front), front
    assert {"k=1", "k=10", "k=40"} <= set(legends["robust_epochs.png"]) and {"k=1", "k=10", "k=40"} <= set(legends["curves.png"])
    assert {"k=1", "k=10", "k=40"} <= set(legends["time_to_threshold.png"])
    assert not any("{" in t or "fgsm_sdi" in t for texts in legends.values() for t in texts), legends
    assert "method.png" in legends  # the parameter figure of the section axis


def test_curves_legend_below_the_panels_or_left_out_and_said_so(tmp_path: Path, monkeypatch) -> None:
    """search_sdi: 12 groups' legend covered most of the first panel; now it is below the panels, and beyond
    MAX_CURVE_LEGEND groups it is left out and the title says so."""
    import orchestrator.figures as figures

    seen: list[tuple[int, list[int], str]] = []
    real = figures._savefig

    def spy(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
        if path.name == "curves.png":
            seen.append((len(fig.legends), [int(ax.get_legend() is not None) for ax in fig.axes], fig._suptitle.get_text()))
        return real(plt, fig, path, dpi)

    monkeypatch.setattr(figures, "_savefig", spy)
    sdir = _write_sweep(tmp_path / "fake", CURVES)
    make_report(sdir, out_dir=tmp_path / "a")
    monkeypatch.setattr(figures, "MAX_CURVE_LEGEND", 2)
    make_report(sdir, out_dir=tmp_path / "b")
    (n_fig, on_axes, title), (n_fig2, on_axes2, title2) = seen
    assert n_fig == 1 and not any(on_axes) and "legend left out" not in title
    assert n_fig2 == 0 and not any(on_axes2) and "legend left out (3 groups)" in title2


def test_no_catastrophic_overfitting_no_red_marks(tmp_path: Path) -> None:
    """The red marks come from the CO epochs, not from the styling (the test above would pass on a figure that
    always draws them)."""
    calm = {key: v for key, v in CURVES.items() if key != (10, 1)}
    rep = make_report(_write_sweep(tmp_path / "calm", calm, failed=False), out_dir=tmp_path / "out")
    files = {p.name: p for p in rep["files"]}
    assert _pure_red(_png(files["robust_epochs.png"])) == 0
    assert _pure_red(_png(files["tradeoff.png"])) == 0


def test_without_epoch_records_only_the_tradeoff_is_drawn(tmp_path: Path) -> None:
    """Trial folders without metrics.jsonl (copied results.parquet alone): no empty figures."""
    rep = make_report(_write_sweep(tmp_path / "bare", CURVES, jsonl=False), out_dir=tmp_path / "out")
    names = {p.name for p in rep["files"]}
    assert "tradeoff.png" in names and "robust_epochs.png" not in names and "time_to_threshold.png" not in names
    assert not (tmp_path / "out" / "robust_epochs.png").exists()


def test_default_report_folder_is_unchanged(tmp_path: Path) -> None:
    sdir = _write_sweep(tmp_path / "fake", CURVES)
    rep = make_report(sdir, plots=False)
    assert {p.name for p in rep["files"]} == {"table.md", "table.csv"} and (sdir / "report" / "table.md").is_file()


# ------------------------------------------------------------------------------------------- a real sweep


@pytest.mark.slow
def test_real_grid_sweep_figures(grid_sweep, tmp_path: Path) -> None:
    assert grid_sweep["result"].exit_code == 0, grid_sweep["result"].output
    rep = make_report(grid_sweep["dir"], out_dir=tmp_path)
    names = {p.name: p for p in rep["files"]}
    for f in FIGURES:
        assert f in names, (f, names)
        _png(names[f])
    assert 0 < rep["threshold"] <= 1
    # every trial has its one epoch in the per-epoch figure's data, and the best one reaches the threshold
    gs = groups(rep["rows"], ["method.k"])
    trials = [t for _, ts in threshold_times(gs, rep["threshold"]) for t in ts]
    assert len(trials) == 4 and any(t is not None and t[1] == 1 and t[0] > 0 for _, t in trials)


def test_report_command_writes_where_asked_with_the_given_threshold(grid_sweep, cli, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    res = cli("report", grid_sweep["dir"], "--out", out, "--threshold", "0.01")
    assert res.exit_code == 0, res.output
    assert (out / "table.md").is_file() and (out / "time_to_threshold.png").is_file()
    assert "time to threshold: validation PGD accuracy >= 1.0%" in " ".join(res.output.split())
    bad = cli("report", grid_sweep["dir"], "--threshold", "1.5")
    assert bad.exit_code == 2 and "--threshold" in bad.output


def test_curves_plot_accuracies_in_percent(tmp_path: Path, monkeypatch) -> None:
    """Issue 15: curves.png drew fractions where every other figure uses %. The accuracy panels (the sweep's
    curves.png and a trial's MLflow curves.png) are in %, the loss panel as logged."""
    import matplotlib.figure

    import orchestrator.figures as figures

    panels: dict[str, dict[str, float]] = {}
    real = figures._savefig

    def spy(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
        if path.name == "curves.png":
            panels["sweep"] = {ax.get_title(): max(max(ln.get_ydata()) for ln in ax.get_lines()) for ax in fig.axes}
        return real(plt, fig, path, dpi)

    monkeypatch.setattr(figures, "_savefig", spy)
    make_report(_write_sweep(tmp_path / "fake", CURVES), out_dir=tmp_path / "out")
    # CURVES: the best val PGD accuracy is 0.50 (k=1, seed 0; the group mean at epoch 4 is 0.48), clean = pgd + 0.4
    assert panels["sweep"]["val PGD-10 acc (%)"] == pytest.approx(100 * (0.50 + 0.46) / 2)
    assert panels["sweep"]["val clean acc (%)"] == pytest.approx(100 * (0.90 + 0.86) / 2)
    assert panels["sweep"]["train-batch PGD-10 acc (%)"] == pytest.approx(48.0)
    assert panels["sweep"]["train loss"] < 2.0  # 2 - acc: not scaled

    real_save = matplotlib.figure.Figure.savefig

    def grab(fig: Any, path: Any, *a: Any, **k: Any) -> None:
        panels["trial"] = {ax.get_title(): max(ax.get_lines()[0].get_ydata()) for ax in fig.axes}
        real_save(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", grab)
    figures.plot_trial_curves([{"epoch": 1, "val/pgd_acc": 0.25, "val/clean_acc": 0.5, "train/pgd_acc": 0.3, "train/loss": 1.5}],
                             tmp_path / "trial.png")
    assert panels["trial"] == {"val PGD-10 acc (%)": 25.0, "val clean acc (%)": 50.0, "train-batch PGD-10 acc (%)": 30.0,
                               "train loss": 1.5}


def test_trial_curves_reuse_one_figure_and_show_only_their_own_trial(tmp_path: Path, monkeypatch) -> None:
    """Issue 14: the driver draws a trial's curves.png at every trial's end, so the drawing is the driver's largest
    cost per trial. After the first plot, the next ones draw on the same figure (no new Figure, no tight_layout
    pass), and each shows exactly what a plot of its own trial on a new figure shows: its data, limits, tick labels,
    catastrophic-overfitting lines and title, nothing left from the trial drawn before it."""
    import matplotlib.figure

    import orchestrator.figures as figures

    short = [{"epoch": 1, "val/pgd_acc": 0.25, "val/clean_acc": 0.5, "train/pgd_acc": 0.3, "train/loss": 1.5}]
    long = [{"epoch": e, "val/pgd_acc": 0.1 + e / 50, "val/clean_acc": 0.6, "train/pgd_acc": 0.2, "train/loss": 2 - e / 10,
             "co/detected": e == 4} for e in range(1, 9)]
    holes = [{"epoch": 1, "train/loss": 1e-5}, {"epoch": 2, "train/loss": 3e-5}]  # panels with nothing to draw
    seen: list[list[tuple]] = []
    real_save = matplotlib.figure.Figure.savefig

    def grab(fig: Any, path: Any, *a: Any, **k: Any) -> None:
        seen.append([(ax.get_title(), tuple(ax.get_xlim()), tuple(ax.get_ylim()), len(ax.get_lines()),
                      [t.get_text() for t in ax.get_yticklabels()], [[repr(float(y)) for y in ln.get_ydata()] for ln in ax.get_lines()[:1]])
                     for ax in fig.axes] + [fig.texts[0].get_text() if fig.texts else ""])
        real_save(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", grab)
    fresh = []
    for i, recs in enumerate((long, short, holes)):  # each on a figure of its own
        getattr(figures, "_TRIAL_FIGURE", {}).pop("fig", None)  # (the figure of the previous trial is dropped)
        figures.plot_trial_curves(recs, tmp_path / f"fresh{i}.png", title=f"trial {i}")
        fresh.append(seen.pop())

    made, layouts = [], []
    real_init, real_tight = matplotlib.figure.Figure.__init__, matplotlib.figure.Figure.tight_layout
    monkeypatch.setattr(matplotlib.figure.Figure, "__init__", lambda self, *a, **k: (made.append(1), real_init(self, *a, **k))[1])
    monkeypatch.setattr(matplotlib.figure.Figure, "tight_layout", lambda self, *a, **k: (layouts.append(1), real_tight(self, *a, **k))[1])
    for i, recs in [(0, long), (1, short), (2, holes), (0, long), (2, holes), (1, short)]:
        figures.plot_trial_curves(recs, tmp_path / f"reused{i}.png", title=f"trial {i}")
        assert seen.pop() == fresh[i], i
        assert (tmp_path / f"reused{i}.png").stat().st_size > 5000
    assert made == [] and layouts == []
    assert fresh[0][0][3] == 2 and fresh[1][0][3] == 1  # the CO line of the long trial: drawn, then gone


def test_table_names_the_co_epochs_and_counts_generator_updates() -> None:
    """The table says at which epoch each catastrophically overfitting trial collapsed, and shows FGSM-SDI's
    generator updates (the last epoch's ``method/gen_steps``) as a column when trials recorded them."""
    from orchestrator.table import render

    def row(k: int, seed: int, co: int | None, gen: int | None) -> dict[str, Any]:
        r = {"status": "finished", "outcome": "catastrophic_overfitting" if co else "finished", "co_epoch": co,
             "seed": seed, "config.method.k": k, "config.threat.eps_255": 8.0, "best/clean": 0.8, "best/pgd10_eps8": 0.4,
             "last/clean": 0.9, "last/pgd10_eps8": 0.0 if co else 0.4, "time/train_s": 60.0}
        if gen is not None:
            r["epoch/method/gen_steps"] = gen
        return r

    meta = {"orch.sweep": "t", "orch.swept": json.dumps(["method.k"])}
    rows = [row(1, 0, 5, 300), row(1, 1, None, 300), row(1, 2, 3, 300), row(20, 0, None, 15), row(20, 1, None, 15)]
    _, md, header, body = render(rows, meta)
    assert header[-3:] == ["Gen. updates", "Seeds", "Outcomes"]
    by_k = {r[0]: r for r in body if r[0]}
    assert by_k["k=1"][-3:] == ["300", "3", "1 ok 2 CO (epoch 3, 5)"]
    assert by_k["k=20"][-3:] == ["15", "2", "2 ok"]
    # no trial counted anything: no column
    _, _, header, body = render([row(1, 0, None, None)], meta)
    assert "Gen. updates" not in header and body[0][-1] == "1 ok"


def test_one_method_at_its_default_and_at_a_set_value_are_two_rows() -> None:
    """The CO study sweeps {name: fgsm_rs} (alpha 1.25 eps by default: alpha_255 unset, null in the results) and
    {name: fgsm_rs, alpha_255: 153}: two rows, not one row of both (the report once pooled them as 6 seeds)."""
    def row(name: str, alpha: float | None, seed: int) -> dict[str, Any]:
        return {"status": "finished", "seed": seed, "config.method.name": name, "config.method.alpha_255": alpha,
                "config.method.k": 5 if name == "fgsm_sdi" else None, "best/clean": 0.5}

    rows = [row(n, a, s) for n, a in (("fgsm_rs", None), ("fgsm_rs", 153.0), ("fgsm_sdi", None)) for s in (0, 1)]
    gs = groups(rows, ["method"])
    assert [g.values["method"] for g in gs] == [{"name": "fgsm_rs"}, {"name": "fgsm_rs", "alpha_255": 153.0},
                                                 {"name": "fgsm_sdi"}]
    assert [len(g.rows) for g in gs] == [2, 2, 2]


def test_the_table_module_does_not_load_matplotlib() -> None:
    """The table and its statistics, the report's entry and the sweep driver (tuner, callback) load without matplotlib:
    only drawing a figure imports it."""
    import subprocess
    import sys

    code = ("import sys, orchestrator.table, orchestrator.report, orchestrator.figures, orchestrator.tuner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
