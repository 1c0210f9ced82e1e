"""``orch report``'s figures for comparing trials (trade-off front, robust accuracy per epoch, time to a threshold):
the pure functions on constructed cases, the figures on a constructed sweep whose numbers are known (written
through orchestrator/results.py, with real metrics.jsonl files) and on the real 4-trial grid sweep."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.report import (
    best_epoch_value, groups, main_columns, make_report, pareto_front, threshold_times, time_to_threshold, trial_records,
)
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
    rows = [{"config.threat.eps_255": 8.0, "best/clean": 0.8, "best/pgd10@8": 0.4, "best/aa@8": 0.35,
             "last/clean": 0.79, "last/pgd10@8": 0.41}]
    assert main_columns(rows, {"orch.metric": "best/pgd10@8"})[:2] == ("best/clean", "best/pgd10@8")
    assert main_columns(rows, {"orch.metric": "last/pgd10@8"})[:2] == ("last/clean", "last/pgd10@8")
    # a metric that is not a final robust column (or none): AA when there is one, on the best checkpoint
    assert main_columns(rows, {"orch.metric": "val/pgd_acc"})[:2] == ("best/clean", "best/aa@8")
    assert main_columns(rows, {})[:2] == ("best/clean", "best/aa@8")
    assert main_columns([{k: v for k, v in rows[0].items() if k != "best/aa@8"}], {})[:2] == ("best/clean", "best/pgd10@8")
    assert main_columns([{"best/pgd10@8": 0.4}], {}) is None  # no clean accuracy: no trade-off


# ------------------------------------------------------------------------------------- a constructed sweep

# val PGD accuracy per epoch of each trial (k, seed): k=1 is slow and good, k=10 fast with catastrophic
# overfitting at epoch 3 for seed 1, k=40 never gets far; one k=40 trial failed before any epoch
CURVES = {
    (1, 0): [0.20, 0.30, 0.42, 0.50], (1, 1): [0.22, 0.28, 0.38, 0.46],
    (10, 0): [0.30, 0.40, 0.44, 0.48], (10, 1): [0.32, 0.45, 0.05, 0.04],
    (40, 0): [0.10, 0.15, 0.18, 0.20],
}
EPOCH_S = {1: 10.0, 10: 5.0, 40: 2.0}


def _write_sweep(d: Path, curves: dict[tuple[int, int], list[float]], failed: bool = True, jsonl: bool = True) -> Path:
    (d / "trials").mkdir(parents=True)
    rf = ResultsFile(d / "results.parquet", {"orch.sweep": "fake", "orch.swept": '["method.k"]',
                                             "orch.metric": "best/pgd10@8", "orch.mode": "max"})
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
                 "best/clean": min(1.0, best + 0.35 + 0.01 * seed), "best/pgd10@8": best - 0.02,
                 "last/clean": min(1.0, accs[-1] + 0.4), "last/pgd10@8": accs[-1] - 0.02}
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

    rows, meta = rep["rows"], rep["meta"]
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
