"""Optuna TPE through Ray Tune with a persistent RDB storage in the sweep folder; seeds grouped per config."""
from __future__ import annotations

import math

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.results import read_rows

pytestmark = pytest.mark.slow


def test_optuna_search_of_three_trials(ray_session, write_sweep, cli, tmp_path) -> None:
    f = write_sweep("tpe", axes={"method.k": {"randint": [1, 40]}, "optim.lr": {"loguniform": [0.02, 0.2]}},
                    seeds=[0], search={"algorithm": "optuna", "num_samples": 3, "seed": 1})
    res = cli("sweep", f, "--data-dir", tmp_path)
    assert res.exit_code == 0, res.output
    sdir = tmp_path / "sweeps" / "tpe"
    rows, _ = read_rows(sdir / "results.parquet")
    assert len(rows) == 3 and all(r["status"] == "finished" for r in rows)
    assert sorted(r["trial_name"].split(":")[0] for r in rows) == ["t0", "t1", "t2"]

    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sdir}/optuna.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(study.trials) == 3 and len(done) == 3  # no zombie RUNNING trials either
    by_params = {(r["config.method.k"], round(r["config.optim.lr"], 12)): r for r in rows}
    for t in done:
        row = by_params[(t.params["method.k"], round(t.params["optim.lr"], 12))]
        assert t.value == pytest.approx(row["best/pgd10_eps8"])  # Optuna was told the final metric of that trial
        assert 1 <= t.params["method.k"] <= 40 and 0.02 <= t.params["optim.lr"] <= 0.2

    mlflow.set_tracking_uri(f"sqlite:///{sdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tpe"], output_format="list")
    assert sum("orch.trial_key" in r.data.tags for r in runs) == 3


def _repeater(name: str, seeds: list[int], metric: str):
    """The searcher an optuna sweep runs with (search.py's registry entry), on an in-memory study."""
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.repeater import SeedRepeater
    from orchestrator.search import _Space
    from orchestrator.space import Axis, optuna_space

    inner = OptunaSearch(space=_Space(optuna_space([Axis("method.k", "randint", low=1, high=40)])), metric=metric,
                         mode="max", sampler=optuna.samplers.TPESampler(seed=0), study_name=name)
    return SeedRepeater(inner, sweep_name=name, seeds=seeds)


def test_seed_repeater_runs_each_config_with_every_seed_and_tells_the_mean() -> None:
    search = _repeater("u", [0, 1], "best/pgd10_eps8")
    a, b, c = (search.suggest(x)["trial"] for x in ("a", "b", "c"))
    assert a["swept"] == b["swept"] and (a["seed"], b["seed"]) == (0, 1) and c["seed"] == 0
    assert a["key"] != b["key"] and a["name"].startswith("t0:") and c["name"].startswith("t1:")
    search.on_trial_result("a", {"epoch": 1, "best/pgd10_eps8": 0.1})
    search.on_trial_result("b", {"epoch": 1})  # an epoch record without the final metric: ignored
    search.on_trial_complete("a", {"final": True, "best/pgd10_eps8": 0.5})
    assert search.searcher._ot_study.trials[0].state == TrialState.RUNNING  # waits for the other seed
    search.on_trial_complete("b", {"final": True, "best/pgd10_eps8": 0.7})
    t0 = search.searcher._ot_study.trials[0]
    assert t0.state == TrialState.COMPLETE and math.isclose(t0.value, 0.6)
    search.on_trial_result("a", {"epoch": 2, "best/pgd10_eps8": 0.9})  # a replay after restore: no crash
    search.on_trial_complete("c", None, error=True)
    search.on_trial_complete("d_unknown", {"final": True, "best/pgd10_eps8": 1.0})  # unknown trial: ignored
    search.suggest("d")
    search.on_trial_complete("d", None, error=True)
    assert search.searcher._ot_study.trials[1].state == TrialState.FAIL  # both seeds errored


def test_epoch_metric_finished_trials_are_scored_and_early_stopped_ones_pruned() -> None:
    """With an epoch metric (what ASHA needs), a finished trial's final record lacks the metric: it is scored with
    its last epoch's value (it used to be told FAIL). A trial ASHA stopped is PRUNED, not COMPLETE."""
    search = _repeater("v", [0], "val/pgd_acc")
    search.suggest("done")
    search.suggest("cut")
    for e, v in ((1, 0.3), (2, 0.45), (3, 0.5)):
        search.on_trial_result("done", {"epoch": e, "val/pgd_acc": v})
    search.on_trial_result("cut", {"epoch": 1, "val/pgd_acc": 0.2})
    search.on_trial_complete("done", {"final": True, "best/pgd10_eps8": 0.4, "epochs_run": 3})
    # the result that makes ASHA stop a trial reaches on_trial_complete only (Tune skips on_trial_result for it)
    search.on_trial_complete("cut", {"epoch": 2, "val/pgd_acc": 0.25})
    done, cut = search.searcher._ot_study.trials
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(0.5)
    assert cut.state == TrialState.PRUNED and cut.intermediate_values == {1: 0.2, 2: 0.25}
    assert cut.value == pytest.approx(0.25)  # Optuna takes a pruned trial's last intermediate value


def test_results_order_optuna_trials_by_number() -> None:
    from orchestrator.results import natural_key

    names = ["t10:lr=0.1,seed=0", "t1:lr=0.2,seed=0", "t0:lr=0.3,seed=1", "t0:lr=0.3,seed=0", "t2:lr=0.4,seed=0"]
    assert sorted(names, key=natural_key) == ["t0:lr=0.3,seed=0", "t0:lr=0.3,seed=1", "t1:lr=0.2,seed=0",
                                              "t2:lr=0.4,seed=0", "t10:lr=0.1,seed=0"]
