"""Sweep-file loading and validation: every bad input is refused before Ray starts, with file, line, key and
value in the message, exit code 2, and nothing written. No Ray here: these run in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training import metrics
from orchestrator.spec import SpecErrors, load_spec

# A valid file; each case below edits it. Line numbers matter: the messages must point at them.
VALID = """\
name: cat
base:
  epochs: 1
  data: {name: digits, val_size: 100}
  model: {name: small_cnn}
  method: {name: fgsm_sdi, k: 20, gen_width: 8}
  eval: {attacks: [clean, pgd10], subset: 100, train_batch_size: 64}
axes:
  method.k: [1, 40]
seeds: 2
metric: best/pgd10_eps8
"""


def edit(replace: dict[str, str] | None = None, append: str = "") -> str:
    text = VALID
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text + append


# (id, file text, extra CLI args, expected line or None, substrings that must all appear)
CASES = [
    ("yaml-syntax", edit({"  model: {name: small_cnn}": "  model: {name: small_cnn"}), [], 6, ["YAML syntax error"]),
    ("yaml-indent", edit({"  epochs: 1": "  epochs: 1\n   oops: 2"}), [], 4, ["YAML syntax error"]),
    ("duplicate-key", edit(append="metric: best/clean\n"), [], 12, ["metric", "duplicate key"]),
    ("not-a-mapping", "- 1\n- 2\n", [], 1, ["must be a mapping"]),
    ("unknown-top-key", edit(append="metirc: x\n"), [], 12, ["metirc", "unknown key", "known keys here"]),
    ("unknown-search-key", edit(append="search: {algorithm: grid, num_sample: 2}\n"), [], 12, ["search.num_sample", "unknown key"]),
    ("unknown-algorithm", edit(append="search: {algorithm: bayes}\n"), [], 12, ["search.algorithm", "'bayes'"]),
    ("wrong-type-int", edit(append="max_concurrent_trials: two\n"), [], 12, ["max_concurrent_trials", "'two'"]),
    ("wrong-type-bool", edit(append="max_failures: true\n"), [], 12, ["max_failures", "true"]),
    ("name-escapes", edit({"name: cat": "name: ../evil"}), [], 1, ["name", "'../evil'"]),
    ("empty-axis", edit({"method.k: [1, 40]": "method.k: []"}), [], 9, ["axes.method.k", "empty axis"]),
    ("repeated-axis-value", edit({"method.k: [1, 40]": "method.k: [1, 1]"}), [], 9, ["repeated value"]),
    ("range-low-gt-high", edit({"method.k: [1, 40]": "optim.lr: {uniform: [0.1, 0.01]}"}, "search: {algorithm: random, num_samples: 2}\n"), [], 9, ["impossible range", "[0.1, 0.01]"]),
    ("loguniform-nonpositive", edit({"method.k: [1, 40]": "optim.lr: {loguniform: [0, 0.1]}"}, "search: {algorithm: random, num_samples: 2}\n"), [], 9, ["loguniform needs low > 0"]),
    ("randint-float", edit({"method.k: [1, 40]": "method.k: {randint: [1, 4.5]}"}, "search: {algorithm: random, num_samples: 2}\n"), [], 9, ["randint takes two integers"]),
    ("unknown-axis-kind", edit({"method.k: [1, 40]": "method.k: {normal: [0, 1]}"}), [], 9, ["unknown axis kind 'normal'"]),
    ("nested-axis", edit({"method.k: [1, 40]": "method: {k: [1, 40]}"}), [], 9, ["method.k", "dotted"]),
    ("seed-as-axis", edit({"method.k: [1, 40]": "seed: [0, 1]"}), [], 9, ["seeds:"]),
    ("range-in-grid", edit({"method.k: [1, 40]": "optim.lr: {uniform: [0.01, 0.1]}"}), [], 9, ["cannot be a grid axis"]),
    ("empty-seeds", edit({"seeds: 2": "seeds: []"}), [], 10, ["seeds", "empty"]),
    ("negative-seed", edit({"seeds: 2": "seeds: [0, -1]"}), [], 10, ["seeds[1]", "-1"]),
    ("unknown-dataset", edit({"name: digits,": "name: digitz,"}), [], 4, ["base.data.name", "'digitz'", "unknown dataset"]),
    ("unknown-model", edit({"name: small_cnn}": "name: resnet9000}"}), [], 5, ["base.model.name", "'resnet9000'"]),
    ("unknown-activation", edit({"  model: {name: small_cnn}": "  model: {name: small_cnn, activation: swishy}"}), [], 5, ["base.model.activation", "'swishy'"]),
    ("unknown-method-in-axis", edit({"method.k: [1, 40]": "method.name: [fgsm_sdi, fgsm_xyz]"}), [], 9, ["axes.method.name", "'fgsm_xyz'"]),
    ("unknown-attack", edit({"attacks: [clean, pgd10]": "attacks: [clean, pgd11]"}), [], 7, ["base.eval.attacks[1]", "'pgd11'"]),
    ("k-zero", edit({"method.k: [1, 40]": "method.k: [0, 40]"}), [], 9, ["axes.method.k", "must be >= 1", "k=0"]),
    ("eps-negative", edit({"  epochs: 1": "  epochs: 1\n  threat: {eps_255: -1}"}), [], 4, ["base.threat.eps_255", "-1"]),
    ("unknown-base-key", edit({"  epochs: 1": "  epoch: 1"}), [], 3, ["base.epoch", "unknown key"]),
    ("base-out-dir", edit({"  epochs: 1": "  epochs: 1\n  out_dir: /tmp/x"}), [], 4, ["base.out_dir", "set by orch"]),
    ("metric-not-produced", edit({"metric: best/pgd10_eps8": "metric: best/aa_eps8"}), [], 11, ["metric", "'best/aa_eps8'", "no such metric"]),
    ("asha-final-metric", edit(append="scheduler: {name: asha}\n"), [], 11, ["asha", "epoch metric"]),
    ("axis-under-a-value", edit({"method: {name: fgsm_sdi, k: 20, gen_width: 8}": "method: fgsm_sdi"}), [], 9, ["axes.method.k", "'method' is not a section", "method: {name: ...}"]),
    ("optuna-no-samples", edit({"method.k: [1, 40]": "method.k: {randint: [1, 40]}"}, "search: {algorithm: optuna}\n"), [], 12, ["num_samples is required"]),
    ("fractional-gpu-over-1", edit(append="resources: {gpu: 1.5}\n"), [], 12, ["resources.gpu", "1.5"]),
    ("too-many-cpus", edit(append="resources: {cpu: 4096}\n"), [], 12, ["resources.cpu", "4096", "more CPUs"]),
    ("relative-sqlite", edit(append="tracking: {uri: 'sqlite:///mlflow.db'}\n"), [], 12, ["tracking.uri", "absolute"]),
    ("too-many-trials", edit({"seeds: 2": "seeds: 600"}), [], 8, ["1200 trials", "--yes"]),
    ("no-such-profile", VALID, ["--profile", "nope"], None, ["--profile nope", "no such profile"]),
    ("set-unknown", VALID, ["--set", "epochs=3"], None, ["--set epochs=3", "did you mean base.epochs"]),
    ("set-bad-value", VALID, ["--set", "base.epochs=0"], None, ["--set base.epochs=0", "must be > 0"]),
    ("set-no-equals", VALID, ["--set", "base.epochs"], None, ["expected key=value"]),
    ("unreachable-server", VALID, ["--tracking-uri", "http://127.0.0.1:9"], None, ["tracking.uri", "cannot reach"]),
    # safety: nothing in a sweep file is code, and no output path leaves the sweep folder
    ("yaml-python-tag", edit({"  epochs: 1": "  epochs: !!python/object/apply:os.system ['touch /tmp/orch-pwned']"}), [], 3,
     ["YAML syntax error", "python/object/apply:os.system"]),
    ("yaml-python-name", edit(append="description: !!python/name:os.system\n"), [], 12, ["YAML syntax error", "python/name:os.system"]),
    ("profile-escapes", edit(append="profiles:\n  ../../evil: {seeds: 1}\n"), ["--profile", "../../evil"], 13,
     ["profiles.../../evil", "profile name"]),
    ("name-dots", edit({"name: cat": "name: a..b"}), [], 1, ["name", "'a..b'"]),
    ("optuna-storage-relative", edit({"method.k: [1, 40]": "method.k: {randint: [1, 40]}"},
     "search: {algorithm: optuna, num_samples: 2, storage: 'sqlite:///optuna.db'}\n"), [], 12, ["search.storage", "absolute"]),
]
# hostile input: refused while loading, in well under a second, before anything walks the document
DEEP = "[" * 30000 + "]" * 30000  # a RecursionError traceback in PyYAML's composer before the depth limit
ALIAS_BOMB = "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))  # 9^9 values
CASES += [
    ("yaml-deep-flow-nesting", edit(append=f"description: {DEEP}\n"), [], 12, ["refused", "nested more than 50 levels deep"]),
    ("yaml-deep-block-nesting", edit(append="description:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(80)) + " " * 81 + "1\n"),
     [], 61, ["refused", "nested more than 50 levels deep"]),
    ("yaml-alias-bomb", edit(append="x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + ALIAS_BOMB), [], 17,
     ["refused", "aliases expand to more than 100000 values"]),
    ("yaml-recursive-alias", edit(append="description: &loop [*loop]\n"), [], 12, ["refused", "recursive alias"]),
    ("yaml-long-string", edit(append=f"description: {'a' * 100_000}\n"), [], 12, ["refused", "100000 characters (at most 4096)"]),
    ("huge-file", edit(append="# padding\n" * 200_000), [], None, ["too large for a sweep file (at most 1 MiB)"]),
    ("set-deep-nesting", VALID, ["--set", f"description={DEEP}"], None, ["--set description=", "nested more than 50 levels deep"]),
]
if not torch.cuda.is_available():
    CASES.append(("gpu-on-cpu-machine", edit(append="resources: {gpu: 1}\n"), [], 12, ["resources.gpu", "more GPUs"]))


def test_catalogue_is_large() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_sweep_file_refused_before_anything(case, tmp_path: Path, cli) -> None:
    cid, text, args, line, needles = case
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    data = tmp_path / "data"
    res = cli("sweep", f, "--data-dir", data, *args)
    out = res.output
    assert res.exit_code == 2, out
    assert "nothing was run or written" in out
    if line is not None:
        assert f"{f}:{line}" in out, out
    for n in needles:
        assert n in out, f"{n!r} not in {out}"
    assert not data.exists(), "a refused sweep wrote to the data folder"
    assert not Path("/tmp/orch-pwned").exists(), "a YAML tag ran code"


@pytest.mark.parametrize("cid", ["yaml-deep-flow-nesting", "yaml-alias-bomb"])
def test_hostile_yaml_refused_fast_by_the_real_command(cid: str, tmp_path: Path) -> None:
    """`orch validate` in its own process: exit 2, one problem line naming the file, no traceback, in seconds
    (before the limits: a RecursionError traceback with exit 1, and a minute for the alias bomb)."""
    text = next(c[1] for c in CASES if c[0] == cid)
    f = tmp_path / "hostile.yaml"
    f.write_text(text)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(f)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    wall = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "RecursionError" not in out, out
    problems = [ln for ln in out.splitlines() if ln.startswith("  ")]
    assert len(problems) == 1 and problems[0].strip().startswith(f"{f}:"), out
    assert wall < 5, f"{cid} took {wall:.1f} s to refuse"


def _orch_importing(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``orch ARGS`` in its own process under ``-X importtime``; return it and every module it imported."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *args], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    mods = {ln.rsplit("|", 1)[1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:") and "|" in ln}
    return res, mods


def test_validate_and_dry_run_list_do_not_import_torch(tmp_path: Path) -> None:
    """orch validate and the trial list of --dry-run check every trial's run config from the torch-free schema."""
    demo = Path(__file__).resolve().parents[2] / "sweeps" / "k_interval.yaml"
    res, mods = _orch_importing(tmp_path, "validate", str(demo))
    assert res.returncode == 0 and "ok: k_interval-demo: 12 trials" in res.stdout, res.stdout + res.stderr[-2000:]
    assert mods and "torch" not in mods and "training.loop" not in mods, sorted(m for m in mods if m.startswith(("torch", "training")))
    res, mods = _orch_importing(tmp_path, "sweep", str(demo), "--dry-run", "--no-probe", "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 0 and "k=40,seed=0" in res.stdout, res.stdout + res.stderr[-2000:]
    assert "torch" not in mods


def test_validate_without_torch_gives_the_same_errors(tmp_path: Path, cli) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(edit({"name: small_cnn}": "name: resnet9000}", "method.k: [1, 40]": "method.k: [0, 40]"}))
    res, mods = _orch_importing(tmp_path, "validate", str(f))
    assert res.returncode == 2 and "torch" not in mods
    inproc = cli("validate", f)  # this test process has torch (and every registry) loaded
    assert inproc.exit_code == 2
    problems = [ln.strip() for ln in res.stderr.splitlines() + res.stdout.splitlines() if ln.startswith(f"  {f}")]
    assert len(problems) == 2 and all(p in inproc.output for p in problems), (problems, inproc.output)
    assert any("base.model.name: unknown model; known: efficientnet_b0" in p and "'resnet9000'" in p for p in problems), problems
    assert any("axes.method.k: must be >= 1" in p for p in problems), problems


def test_missing_file(tmp_path: Path, cli) -> None:
    res = cli("validate", tmp_path / "nope.yaml")
    assert res.exit_code == 2 and "no such file" in res.output


def test_yes_allows_a_big_grid(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text(edit({"seeds: 2": "seeds: 600"}))
    with pytest.raises(SpecErrors):
        load_spec(f)
    assert load_spec(f, yes=True).num_trials == 1200


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "many.yaml"
    f.write_text(edit({"method.k: [1, 40]": "method.k: []", "seeds: 2": "seeds: []"}, "metirc: x\n"))
    with pytest.raises(SpecErrors) as e:
        load_spec(f)
    keys = {x.key for x in e.value.errors}
    assert {"metirc", "axes.method.k", "seeds"} <= keys


# ------------------------------------------------------------------------------------------------ parsing


def test_grid_trials_names_keys_and_scientific_floats(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    f.write_text(edit({"method.k: [1, 40]": "method.k: [1, 40]\n  optim.lr: [1e-2, 0.1]"}))
    s = load_spec(f)
    assert s.num_trials == 2 * 2 * 2 and len(s.trials) == 8
    assert s.trials[0].swept == {"method.k": 1, "optim.lr": 0.01}  # 1e-2 is a number, not the string "1e-2"
    assert [t.name for t in s.trials[:3]] == ["k=1,lr=0.01,seed=0", "k=1,lr=0.01,seed=1", "k=1,lr=0.1,seed=0"]
    assert len({t.key for t in s.trials}) == 8
    assert load_spec(f).trials[5].key == s.trials[5].key  # stable across loads


def test_random_points_are_seeded_and_paired_across_seeds(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(edit({"method.k: [1, 40]": "method.k: {randint: [1, 40]}\n  optim.lr: {loguniform: [0.001, 0.1]}"},
                      "search: {algorithm: random, num_samples: 3, seed: 7}\n"))
    a, b = load_spec(f), load_spec(f)
    assert [t.swept for t in a.trials] == [t.swept for t in b.trials]
    assert a.trials[0].swept == a.trials[1].swept and a.trials[0].seed != a.trials[1].seed  # paired seeds
    for t in a.trials:
        assert 1 <= t.swept["method.k"] <= 40 and 0.001 <= t.swept["optim.lr"] <= 0.1
    assert len({t.key for t in a.trials}) == 6


def test_profiles_overlay_and_point_errors_at_profile_lines(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(VALID + "default_profile: fast\nprofiles:\n  fast:\n    base: {epochs: 2}\n  broken:\n    base: {epochs: 0}\n")
    s = load_spec(f)
    assert s.name == "cat-fast" and s.epochs == [2] and s.base["data"]["name"] == "digits"
    assert load_spec(f, profile="none").name == "cat"
    with pytest.raises(SpecErrors) as e:
        load_spec(f, profile="broken")
    assert f"{f}:17" in str(e.value) and "base.epochs" in str(e.value)


def test_set_overrides_axes_and_base(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(VALID)
    s = load_spec(f, sets=["axes.method.k=[2, 3, 4]", "seeds=[5]", "base.epochs=3"])
    assert [t.swept["method.k"] for t in s.trials] == [2, 3, 4] and s.seeds == [5] and s.epochs == [3]


def test_final_keys_names() -> None:
    from training.config import RunConfig

    cfg = RunConfig.from_dict({"threat": {"eps_255": 8}, "eval": {"attacks": ["clean", "pgd10", "aa"], "eps_255": [4]}})
    m = metrics.final_keys(cfg)
    assert {"best/clean", "last/pgd10_eps8", "best/pgd10_eps4", "best/aa_eps8", "best/aa/apgd_t_eps4", "val/pgd_acc"} <= m
    assert "best/pgd20_eps8" not in m


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].joinpath("sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_sweep_files_validate_with_every_profile(path: Path) -> None:
    from orchestrator.spec import parse_yaml

    doc, _ = parse_yaml(path.read_text(), str(path))
    for profile in [None, "none", *(doc.get("profiles") or {})]:
        s = load_spec(path, profile=profile)
        assert s.num_trials >= 1


def test_k_interval_demo_is_the_default_and_matches_the_thesis_axis() -> None:
    path = Path(__file__).resolve().parents[2] / "sweeps" / "k_interval.yaml"
    demo, paper = load_spec(path), load_spec(path, profile="paper")
    assert demo.profile == "demo" and demo.base["data"]["name"] == "digits"
    assert [a.values for a in paper.axes] == [(1, 2, 10, 20, 30, 40)]
    assert paper.base["data"]["name"] == "cifar10" and paper.base["model"]["name"] == "resnet18" and paper.epochs == [110]
    assert paper.base["eval"]["subset"] is None and paper.resources.gpu == 1


@pytest.mark.parametrize("divide,passes", [(False, 8), (True, 2)])
def test_free_at_epochs_are_counted_as_the_run_counts_them(tmp_path: Path, divide: bool, passes: int) -> None:
    """Free-AT (m = 4, 8 epochs) makes 8 passes over the data as in the thesis, 2 with ``divide_epochs`` (Shafahi
    et al.): the dry run's epochs, ASHA's max_t, the live view's epochs per trial (tuner) and the compute estimate
    all count what run() yields."""
    from orchestrator.estimate import probe
    from training.config import RunConfig

    f = tmp_path / "free.yaml"
    f.write_text(edit({"  epochs: 1": "  epochs: 8",
                       "method: {name: fgsm_sdi, k: 20, gen_width: 8}": f"method: {{name: free, m: 4, divide_epochs: {str(divide).lower()}}}",
                       "method.k: [1, 40]": "optim.lr: [0.05, 0.1]", "metric: best/pgd10_eps8": "metric: val/pgd_acc"},
                      "scheduler: {name: asha}\n"))
    s = load_spec(f)
    assert s.epochs == [passes] and s.scheduler.max_t == passes
    run_dict = s.run_dict(s.trials[0].swept, 0, name="t", out_dir=str(tmp_path / "t"))
    assert RunConfig.from_dict(run_dict).data_epochs == passes
    assert probe(run_dict, "t").epochs == passes


def test_old_metric_spelling_is_accepted_and_read_as_today_s(tmp_path: Path) -> None:
    """Issue 13: one spelling of a metric everywhere (best/pgd10_eps8). A sweep file written with the spelling
    MLflow refuses (best/pgd10@8) still loads, and the sweep runs under today's name."""
    f = tmp_path / "old.yaml"
    f.write_text(edit({"metric: best/pgd10_eps8": "metric: best/pgd10@8"}))
    assert load_spec(f).metric == "best/pgd10_eps8"


def test_method_params_are_one_model_per_method(tmp_path: Path) -> None:
    """``method`` is a discriminated union on ``method.name`` (training/schema.py): the chosen method's own model
    checks its parameters once, and each problem names ``method.<param>``, the value and what is allowed, at the
    file:line of the base key or the axis that set it."""
    f = tmp_path / "union.yaml"
    f.write_text(edit({"method: {name: fgsm_sdi, k: 20, gen_width: 8}": "method: {name: free, m: 0, gen_width: 8}",
                       "method.k: [1, 40]": "method.divide_epochs: [true, 3]"}))
    with pytest.raises(SpecErrors) as e:
        load_spec(f)
    got = sorted((err.line, err.key, err.problem, err.value) for err in e.value.errors)
    assert got == [
        (6, "base.method.gen_width", "unknown parameter of this method; known: alpha_255, divide_epochs, m", 8),
        (6, "base.method.m", "must be >= 1", 0),
        (9, "axes.method.divide_epochs", "must be true or false (in trial divide_epochs=3,seed=0)", 3),
    ], got
    assert f"{f}:6: base.method.m: must be >= 1 (got 0)" in [str(err) for err in e.value.errors]
