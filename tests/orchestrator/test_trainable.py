"""The trainable's restart rules (orchestrator/trainable.py docstring), on real trial folders of the grid sweep:
real last.pt files, a real ``ray.tune.Checkpoint``, the real RunConfig."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.results import read_rows
from orchestrator.trainable import _prepare, _stage, trial_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def trial_copy(grid_sweep, tmp_path):
    rows, _ = read_rows(grid_sweep["dir"] / "results.parquet")
    src = Path(rows[0]["out_dir"])
    dst = tmp_path / "trial"
    shutil.copytree(src, dst)
    from training.config import RunConfig

    d = json.loads((dst / "config.json").read_text())
    d["out_dir"] = str(dst)
    return dst, RunConfig.from_dict(d)


def test_checkpoint_wins_over_a_newer_folder(trial_copy, tmp_path) -> None:
    from ray import tune

    out, cfg = trial_copy
    staged = Path(_stage(out))  # hard links; Tune copies them into its storage at the report, as here
    ck = tmp_path / "checkpoint_000001"
    shutil.copytree(staged, ck)
    shutil.rmtree(staged)
    (ck / "results.json").unlink()  # pretend the checkpoint predates the final record
    (out / "last.pt").write_bytes(b"written after Tune's last report")
    resume, replay = _prepare(out, tune.Checkpoint.from_directory(str(ck)), cfg)
    assert resume == out and replay == []
    assert (out / "last.pt").read_bytes() == (ck / "last.pt").read_bytes()
    assert not (out / "results.json").exists()  # a file the checkpoint does not have is dropped


def test_no_checkpoint_but_same_config_replays_the_finished_epochs(trial_copy) -> None:
    out, cfg = trial_copy
    resume, replay = _prepare(out, None, cfg)
    assert resume == out and [r["epoch"] for r in replay] == [1]


def test_no_checkpoint_and_another_config_starts_clean(trial_copy) -> None:
    out, cfg = trial_copy
    other = cfg.replace({"optim.lr": cfg.optim.lr / 2})
    resume, replay = _prepare(out, None, other)
    assert resume is None and replay == []
    assert not any((out / f).exists() for f in ("last.pt", "best.pt", "metrics.jsonl", "results.json"))


def test_trial_dir_is_safe_and_unique(tmp_path) -> None:
    a = trial_dir(tmp_path, "#1:method={'name': 'pgd/at'},seed=0", "0123456789ab")
    b = trial_dir(tmp_path, "#1:method={'name': 'pgd/at'},seed=0", "ba9876543210")
    assert a.parent == tmp_path and b.parent == tmp_path and a != b and "/" not in a.name


def test_curves_are_drawn_for_two_epochs_or_more_not_for_one(trial_copy) -> None:
    """Issue 14: a trial's curves.png is its per-epoch curves; one epoch is a point, and drawing it cost a 1-epoch
    trial ~20% of its time, so a 1-epoch trial has none (its numbers are its MLflow metrics) and a longer one has."""
    from orchestrator.trainable import CURVES_PNG, _draw_curves

    d, _ = trial_copy
    (d / CURVES_PNG).unlink(missing_ok=True)
    lines = (d / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    _draw_curves(d, "one epoch")
    assert not (d / CURVES_PNG).exists()
    second = json.loads(lines[0]) | {"epoch": 2}
    (d / "metrics.jsonl").write_text("\n".join([lines[0], json.dumps(second)]) + "\n")
    _draw_curves(d, "two epochs")
    assert (d / CURVES_PNG).stat().st_size > 1000
