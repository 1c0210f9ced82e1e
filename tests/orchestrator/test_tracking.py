"""The MLflow logger against a real SQLite store: a second invocation (resume) finds a trial's run by its key,
never logs an epoch twice, and closes the parent run of a driver that died."""
from __future__ import annotations

import mlflow.tracking

from orchestrator.tracking import Tracker, mlflow_key


def test_resumed_invocation_reuses_the_run_and_logs_each_epoch_once(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "exp", artifact_location=(tmp_path / "art").as_uri())
    first.start_sweep("sweep 1", {}, {"num_trials": 1})  # this driver "dies": its parent stays RUNNING
    run = first.trial_run("key1", "k=1,seed=0", {"method.k": 1}, {"seed": "0"})
    for e in (1, 2):
        assert first.log_epoch(run, {"epoch": e, "val/pgd_acc": 0.1 * e})

    second = Tracker(uri, "exp")
    second.start_sweep("sweep 2", {}, {"num_trials": 1})
    assert second.trial_run("key1", "k=1,seed=0", {"method.k": 1}, {}) == run
    assert not second.log_epoch(run, {"epoch": 2, "val/pgd_acc": 0.2})  # replayed epoch: skipped
    assert second.log_epoch(run, {"epoch": 3, "val/pgd_acc": 0.3})
    second.log_final(run, {"final": True, "outcome": "finished", "best/pgd10@8": 0.5, "co_epoch": None, "pid": 7}, 3, [], "FINISHED")
    second.end_sweep("FINISHED")

    client = mlflow.tracking.MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run, "val/pgd_acc")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    r = client.get_run(run)
    assert r.data.metrics["best/pgd10_eps8"] == 0.5 and "pid" not in r.data.metrics
    assert r.data.tags["orch.outcome"] == "finished" and "orch.co_epoch" not in r.data.tags
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    parents = sorted((x for x in runs if x.data.tags.get("orch.role") == "sweep"), key=lambda x: x.info.start_time)
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert sum("orch.trial_key" in x.data.tags for x in runs) == 1


def test_metric_names_are_valid_for_mlflow() -> None:
    assert mlflow_key("best/pgd10@8") == "best/pgd10_eps8"
    assert mlflow_key("last/aa/apgd_t@0.5") == "last/aa/apgd_t_eps0.5"
