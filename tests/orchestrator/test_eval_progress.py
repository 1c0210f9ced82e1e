"""The final evaluation is never silent and never a surprise (issue 15, items 3 and 4; issue 14, step 4).

- ``orch train`` prints how long the evaluation will take before it starts (a measured estimate), then its
  progress (checkpoint, attack, images done, time left); a checkpoint with the same weights as another (best =
  last) is attacked once and still listed under both names.
- The dry run's final-evaluation estimate is an upper bound of a real run's evaluation, also where AutoAttack
  keeps working on every point (the old probe, on a barely trained model that every attack fools at once,
  said a fraction of it), and the probes stay within their time budget, with a progress line.
- In a sweep, each trial's final evaluation reaches the live view (trainable progress events).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

TRAIN = ["--set", "data.name=digits", "--set", "data.val_size=100", "--set", "model.name=small_cnn", "--set", "model.width=8",
         "--set", "batch_size=64", "--set", "eval.train_batch_size=64", "--set", "eval.epoch_pgd_steps=3"]


def test_orch_train_prints_the_estimate_then_progress_and_attacks_best_equal_last_once(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = cli("train", "--eval", "quick", *TRAIN, "--set", "epochs=1", "--set", "eval.subset=100", "--out-dir", out)
    assert res.exit_code == 0, res.output
    text = res.output.replace("\r", "\n")
    # the estimate, before any attack ran
    m = re.search(r"final evaluation: 3 attacks x 1 eps on 100 test images, checkpoint best \(last = best: the same "
                  r"weights, attacked once\): ~(\S+) \(measured estimate\)", text)
    assert m, text[-3000:]
    assert text.index(m.group(0)) < text.index("evaluating best: pgd10_eps8")
    # progress: checkpoint, entry, images done, elapsed and time left
    assert re.search(r"evaluating best: pgd20_eps8 100/100 images \| \S+ elapsed, ~\S+ left", text), text[-3000:]
    assert "evaluating last" not in text  # one epoch: best is the last epoch, not attacked twice
    final = json.loads((out / "results.json").read_text())["final"]
    for col in ("clean", "pgd10_eps8", "pgd20_eps8"):
        assert final[f"last/{col}"] == final[f"best/{col}"]  # results still list both


def test_orch_train_eval_preset_is_checked(cli, tmp_path: Path) -> None:
    res = cli("train", "--eval", "fast", *TRAIN, "--out-dir", tmp_path / "run")
    assert res.exit_code == 2
    assert "--eval: unknown evaluation; known: paper, demo, quick (got 'fast')" in res.output
    assert not (tmp_path / "run").exists()


def _seconds(s: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", s)
    assert m, s
    return 60 * int(m.group(1) or 0) + int(m.group(2))


@pytest.mark.slow
def test_dry_run_estimate_bounds_a_real_evaluation_of_a_robust_model(cli, tmp_path: Path) -> None:
    # the k_interval demo's setting cut to 3 epochs and AutoAttack alone: adversarial training leaves about half
    # the test points robust, so AutoAttack's later stages (APGD-T, FAB-T, Square) work on them; the probe model
    # of the dry run (a few batches) has almost none, which made the old estimate a fraction of the real cost
    base = {"epochs": 3, "batch_size": 32, "threat": {"eps_255": 16}, "method": {"name": "fgsm_sdi", "gen_width": 16},
            "data": {"name": "digits", "image_size": 16, "channels": 1, "val_size": 200}, "model": {"name": "small_cnn"},
            "schedule": {"milestones": [0.75, 0.9]},
            "eval": {"attacks": ["clean", "aa"], "subset": 200, "aa_n_iter": 10, "aa_n_queries": 200, "checkpoints": ["last"]}}
    f = tmp_path / "bound.yaml"
    f.write_text(yaml.safe_dump({"name": "bound", "base": base}))
    res = cli("sweep", f, "--dry-run", "--data-dir", tmp_path / "d")
    assert res.exit_code == 0, res.output
    assert "measuring: probe 1/1 (base)" in res.output, res.output
    row = next(line for line in res.output.splitlines() if line.strip("│ ").startswith("base"))
    estimate = _seconds(row.split("│")[5].strip())

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(base))
    res = cli("train", "--config", tmp_path / "run.yaml", "--out-dir", tmp_path / "run")
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "run" / "results.json").read_text())["final"]
    actual = final["time/eval_s"]
    assert final["last/aa_eps16"] > 0.2, final  # a robust model: AutoAttack's later stages had work to do
    print(f"dry-run estimate {estimate:.0f} s, actual {actual:.1f} s")
    assert estimate >= 0.6 * actual, (estimate, actual)  # 0.6: timings on a shared machine are noisy
