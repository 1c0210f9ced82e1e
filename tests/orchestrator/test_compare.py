"""``orch report --baseline``: differences from a baseline row with 95% Student-t intervals over seeds, checked
against numbers worked out by hand below (paired by seed, and Welch where the seeds differ)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from orchestrator.compare import BaselineError, difference, find_baseline
from orchestrator.report import make_report
from orchestrator.results import ResultsFile, trial_row
from orchestrator.table import Group

# (k, seed) -> (best/clean, best/pgd10_eps8); the k=40 trial of seed 2 failed
VALUES = {
    (1, 0): (0.80, 0.40), (1, 1): (0.80, 0.44), (1, 2): (0.80, 0.45),
    (10, 0): (0.82, 0.46), (10, 1): (0.84, 0.47), (10, 2): (0.83, 0.52),
    (40, 0): (0.70, 0.30), (40, 1): (0.72, 0.34), (40, 2): None,
}

# By hand (t quantiles from a t table: t(0.975, 1) = 12.7062, t(0.975, 2) = 4.3027):
# k=10 vs k=1, paired (seeds 0, 1, 2 in both):
#   clean: d = 2, 4, 3 pp; mean 3, sd 1, se 1/sqrt(3) = 0.57735, half 4.3027 * 0.57735 = 2.4841 -> [0.52, 5.48]
#   PGD-10: d = 6, 3, 7 pp; mean 5.3333, sd sqrt(((2/3)^2 + (7/3)^2 + (5/3)^2) / 2) = sqrt(4.3333) = 2.0817,
#           se 2.0817 / sqrt(3) = 1.2019, half 4.3027 * 1.2019 = 5.1712 -> [0.16, 10.50]
# k=40 vs k=1, Welch (seeds 0, 1 against 0, 1, 2):
#   clean: 71 - 80 = -9 pp; s1^2/n1 = 2/2 = 1 pp^2, s2^2/n2 = 0; se 1; df = 1^2 / (1^2 / 1) = 1;
#          half 12.7062 -> [-21.71, 3.71]
#   PGD-10: 32 - 43 = -11 pp; s1^2 = 8, s2^2 = ((-3)^2 + 1^2 + 2^2) / 2 = 7; a = 8/2 = 4, b = 7/3 = 2.3333;
#           se = sqrt(6.3333) = 2.5166; df = 6.3333^2 / (4^2 / 1 + 2.3333^2 / 2) = 40.111 / 18.722 = 2.1424
PAIRED_CLEAN = (3.0, 0.5159, 5.4841)
PAIRED_PGD = (5.3333, 0.1622, 10.5045)
WELCH_CLEAN = (-9.0, -21.7062, 3.7062)
WELCH_PGD_DF = 2.1424


def _sweep(d: Path) -> Path:
    (d / "trials").mkdir(parents=True)
    rf = ResultsFile(d / "results.parquet", {"orch.sweep": "cmp", "orch.swept": json.dumps(["method.k"]),
                                             "orch.metric": "best/pgd10_eps8", "orch.mode": "max"})
    for i, ((k, seed), v) in enumerate(VALUES.items()):
        config = {"method": {"name": "fgsm_sdi", "k": k}, "seed": seed, "threat": {"eps_255": 8}}
        if v is None:
            rf.upsert(trial_row(key=f"t{i}", name=f"k={k},seed={seed}", index=i, seed=seed, status="failed",
                                last_result=None, config=config, error="RuntimeError: boom"), write=False)
            continue
        clean, pgd = v
        final = {"final": True, "outcome": "finished", "best_epoch": 3, "epochs_run": 4, "time/train_s": 10.0,
                 "best/clean": clean, "best/pgd10_eps8": pgd, "last/clean": clean - 0.01, "last/pgd10_eps8": pgd - 0.01}
        rf.upsert(trial_row(key=f"t{i}", name=f"k={k},seed={seed}", index=i, seed=seed, status="finished",
                            last_result=final, config=config), write=False)
    rf.write()
    return d


def _nums(cell: str) -> list[float]:
    """'+3.00 [+0.52, +5.48]' -> [3.0, 0.52, 5.48]"""
    return [float(x) for x in cell.replace("[", " ").replace("]", " ").replace(",", " ").split()]


def test_differences_and_intervals_match_the_hand_computation(tmp_path: Path) -> None:
    from scipy.stats import t

    rep = make_report(_sweep(tmp_path / "s"), plots=False, out_dir=tmp_path / "out", baseline="k=1")
    d = rep["diffs"]
    assert d["header"] == ["Config", "Ckpt", "Δ Clean", "Δ PGD-10", "Test"]
    rows = {(r[0] or prev, r[1]): r for prev, r in zip([""] + [b[0] for b in d["body"]], d["body"])}
    assert set(rows) == {("k=10", "Best"), ("k=10", "Last"), ("k=40", "Best"), ("k=40", "Last")}  # no baseline row
    for ck in ("Best", "Last"):  # last = best - 0.01 in every trial: the same differences
        r10, r40 = rows[("k=10", ck)], rows[("k=40", ck)]
        assert _nums(r10[2]) == pytest.approx(PAIRED_CLEAN, abs=0.006)
        assert _nums(r10[3]) == pytest.approx(PAIRED_PGD, abs=0.006)
        assert r10[4] == "paired t, n=3"
        assert _nums(r40[2]) == pytest.approx(WELCH_CLEAN, abs=0.006)
        half = t.ppf(0.975, WELCH_PGD_DF) * math.sqrt(6.3333)
        assert _nums(r40[3]) == pytest.approx((-11.0, -11.0 - half, -11.0 + half), abs=0.01)
        assert r40[4] == "Welch t, n=2 vs 3, df=1.0; Welch t, n=2 vs 3, df=2.1"
    # exact values, not only the rounded cells
    base = [(0, 0.40), (1, 0.44), (2, 0.45)]
    w = difference([(0, 0.30), (1, 0.34)], base)
    assert (w.test, w.df) == ("Welch", pytest.approx(WELCH_PGD_DF, abs=1e-4))
    p = difference([(2, 0.52), (0, 0.46), (1, 0.47)], base)  # pairs by seed, not by order
    assert (p.test, p.mean, p.lo, p.hi) == ("paired", pytest.approx(0.053333, abs=1e-6),
                                            pytest.approx(0.001622, abs=1e-5), pytest.approx(0.105045, abs=1e-5))

    # Markdown: the main table, then the differences with their caption
    md = (tmp_path / "out" / "table.md").read_text()
    assert "difference from the baseline k=1" in md and "paired by seed" in md and "Welch" in md
    assert "| k=10 | Best | +3.00 [+0.52, +5.48] | +5.33 [+0.16, +10.50] | paired t, n=3 |" in md
    # CSV: one row per group, the baseline marked, the differences as fractions
    with open(tmp_path / "out" / "table.csv") as f:
        table = {r["method.k"]: r for r in csv.DictReader(f)}
    assert table["1"]["baseline"] == "1" and table["10"]["baseline"] == "0" and table["1"]["best/clean_diff"] == ""
    assert float(table["10"]["best/pgd10_eps8_diff_lo"]) == pytest.approx(0.001622, abs=1e-5)
    assert float(table["40"]["last/clean_diff_hi"]) == pytest.approx(0.037062, abs=1e-5)
    assert table["40"]["best/clean_diff_test"] == "Welch t, n=2 vs 3, df=1.0"


def test_small_and_degenerate_samples() -> None:
    one = difference([(0, 0.5)], [(0, 0.4)])
    assert one.mean == pytest.approx(0.1) and one.lo is None and one.test == "paired"
    same = difference([(0, 0.5), (1, 0.6)], [(0, 0.4), (1, 0.5)])  # the same difference for each seed
    assert (same.lo, same.hi) == (pytest.approx(0.1), pytest.approx(0.1))
    assert difference([], [(0, 0.4)]) is None
    assert difference([(0, 0.5), (0, 0.6)], [(0, 0.4), (1, 0.5)]).test == "Welch"  # a repeated seed: no pairing


def test_baseline_names_a_row_by_its_label_or_its_parts() -> None:
    gs = [Group({"data.image_size": s, "model.width": w}, []) for s in (8, 16) for w in (8, 16)]
    assert find_baseline(gs, "image_size=16,width=8") is gs[2]
    assert find_baseline(gs, "width=8, image_size=16") is gs[2]  # any order
    with pytest.raises(BaselineError, match=r"matches 2 rows \(image_size=8,width=8; image_size=16,width=8\)"):
        find_baseline(gs, "width=8")
    with pytest.raises(BaselineError) as e:
        find_baseline(gs, "width=32", "x/results.parquet")
    assert str(e.value).startswith("x/results.parquet: --baseline 'width=32' matches no row")
    assert all(g.label in str(e.value) for g in gs)
    # a section-valued axis: commas inside the value's parentheses stay in it
    sec = [Group({"method": {"name": "pgd_at", "steps": 10}}, []), Group({"method": {"name": "fgsm_rs"}}, [])]
    assert find_baseline(sec, "method=pgd_at(steps=10)") is sec[0] and find_baseline(sec, "method=fgsm_rs") is sec[1]


def test_report_command_baseline_and_its_error(tmp_path: Path, cli) -> None:
    sdir = _sweep(tmp_path / "s")
    res = cli("report", sdir, "--no-plots", "--baseline", "k=1")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "difference from the baseline k=1" in out and "paired t, n=3" in out and "Welch t, n=2 vs 3" in out
    assert "+5.33 [+0.16, +10.50]" in out
    bad = cli("report", sdir, "--out", tmp_path / "nothing", "--baseline", "k=2")
    assert bad.exit_code == 2
    text = " ".join(bad.output.split())
    assert "--baseline 'k=2' matches no row" in text and all(f" k={k} " in text + " " for k in (1, 10, 40)), text
    assert not (tmp_path / "nothing").exists()  # refused before anything was written
