"""The MLflow logger against a real SQLite store: a second invocation (resume) finds a trial's run by its key,
never logs an epoch twice, and closes the parent run of a driver that died."""
from __future__ import annotations

import time
from pathlib import Path

import mlflow.tracking

from orchestrator.tracking import Tracker
from training import metrics


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
    second.log_final(run, {"final": True, "outcome": "finished", "best/pgd10_eps8": 0.5, "co_epoch": None, "pid": 7}, 3, [], "FINISHED")
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


def test_metric_names_are_valid_for_mlflow_and_the_old_spelling_maps_to_them() -> None:
    """One spelling everywhere (issue 13): the names training.metrics makes are valid MLflow names as they are,
    and the old `@` spelling (refused by MLflow) maps to them."""
    from mlflow.utils.validation import _validate_metric_name
    from training.config import RunConfig

    cfg = RunConfig.from_dict({"threat": {"eps_255": 8}, "eval": {"attacks": ["clean", "pgd10", "aa"], "eps_255": [0.5]}})
    for k in metrics.final_keys(cfg):
        _validate_metric_name(k)  # raises on a name MLflow refuses
    assert metrics.canonical("best/pgd10@8") == "best/pgd10_eps8" == metrics.column_key("pgd10", 8).join(("best/", ""))
    assert metrics.canonical("last/aa/apgd_t@0.5") == "last/aa/apgd_t_eps0.5"


def test_a_trial_costs_few_mlflow_calls_and_loses_nothing(tmp_path) -> None:
    """Issue 14: the driver logs every trial, so each MLflow call is paid once per trial. The worker's tags travel
    with the first epoch (one ``log_batch``), and a trial's end is one ``log_batch`` (final numbers and outcome
    tags), one ``log_artifacts`` for its files and ``set_terminated``: 3 calls, not one per tag set and per file."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp", artifact_location=(tmp_path / "art").as_uri())
    tr.start_sweep("sweep", {}, {"num_trials": 1})
    run = tr.trial_run("key1", "k=1,seed=0", {"method.k": 1}, {"seed": "0"})
    calls: list[str] = []
    real = tr.client

    class Counting:
        def __getattr__(self, name):
            fn = getattr(real, name)

            def call(*a, **k):
                calls.append(name)
                return fn(*a, **k)

            call.__name__ = name
            return call

    tr.client = Counting()
    assert tr.log_epoch(run, {"epoch": 1, "val/pgd_acc": 0.1}, {"host": "h1", "torch": "2.x", "cuda": None})
    assert calls == ["log_batch"]
    assert tr.log_epoch(run, {"epoch": 2, "val/pgd_acc": 0.2})
    assert not tr.log_epoch(run, {"epoch": 2, "val/pgd_acc": 0.2})  # already there: nothing sent
    assert calls == ["log_batch"] * 2
    art = tmp_path / "trial" / "mlflow"
    art.mkdir(parents=True)
    files = []
    for name in ("config.json", "results.json", "robustness.json", "curves.png"):
        (art / name).write_text(name)
        files.append(art / name)
    calls.clear()
    tr.log_final(run, {"final": True, "outcome": "finished", "best_epoch": 2, "best/pgd10_eps8": 0.5, "epochs_run": 2}, 2, files, "FINISHED")
    assert calls == ["log_batch", "log_artifacts", "set_terminated"]

    client = mlflow.tracking.MlflowClient(uri)
    r = client.get_run(run)
    assert r.info.status == "FINISHED"
    assert {"host": "h1", "torch": "2.x", "orch.outcome": "finished", "orch.best_epoch": "2"}.items() <= r.data.tags.items()
    assert "cuda" not in r.data.tags
    assert r.data.metrics["best/pgd10_eps8"] == 0.5 and r.data.metrics["epochs_run"] == 2
    assert [(m.step, m.value) for m in client.get_metric_history(run, "val/pgd_acc")] == [(1, 0.1), (2, 0.2)]
    assert {a.path for a in client.list_artifacts(run)} == {"config.json", "results.json", "robustness.json", "curves.png"}


def test_batches_keep_within_mlflows_limits(tmp_path) -> None:
    """More than 1000 numbers, or 100 tags, in one record are split into batches MLflow accepts; nothing is lost."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp")
    run = tr.trial_run("key1", "t", {}, {})
    tags = {f"tag{i}": i for i in range(150)}
    tr.log_epoch(run, {"epoch": 1, **{f"m{i}": float(i) for i in range(1500)}}, tags)
    r = mlflow.tracking.MlflowClient(uri).get_run(run)
    assert len([k for k in r.data.metrics if k.startswith("m")]) == 1500 and r.data.metrics["m1499"] == 1499.0
    assert {f"tag{i}" for i in range(150)} <= set(r.data.tags)


def test_a_new_runs_params_ride_in_its_first_batch_and_are_never_lost(tmp_path, monkeypatch) -> None:
    """Issue 14: a trial's params go with its first log_batch (one call fewer per trial), or alone once the run
    is PARAMS_WAIT_S old with nothing logged (a long first epoch), or before a run is closed unfinished; more
    than MLflow's 100 params per batch are split."""
    import orchestrator.tracking as tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp", artifact_location=(tmp_path / "art").as_uri())
    tr.start_sweep("sweep", {}, {"num_trials": 3})
    calls: list[tuple[str, int]] = []
    real = tr.client

    class Counting:
        def __getattr__(self, name):
            fn = getattr(real, name)

            def call(*a, **k):
                calls.append((name, len(k.get("params") or ())))
                return fn(*a, **k)

            call.__name__ = name
            return call

    tr.client = Counting()
    params = {f"p{i}": i for i in range(150)}
    short = tr.trial_run("short", "short", {"method.k": 1, "name": "short", "out_dir": "/x"}, {})
    assert calls == [("create_run", 0)]
    tr.log_epoch(short, {"epoch": 1, "val/pgd_acc": 0.1}, {"host": "h"})
    assert calls[1:] == [("log_batch", 1)]  # method.k only: name and out_dir are not params

    long = tr.trial_run("long", "long", params, {})
    calls.clear()
    tr.send_params(older_than=tracking.PARAMS_WAIT_S)
    assert calls == []  # too young: they would ride with its first epoch
    now = time.time()
    monkeypatch.setattr(tracking.time, "time", lambda: now + tracking.PARAMS_WAIT_S)
    tr.send_params(older_than=tracking.PARAMS_WAIT_S)
    assert calls == [("log_batch", 100), ("log_batch", 50)]
    monkeypatch.undo()
    calls.clear()
    tr.log_epoch(long, {"epoch": 1, "val/pgd_acc": 0.1})
    assert calls == [("log_batch", 0)]  # sent once

    killed = tr.trial_run("killed", "killed", {"method.k": 40}, {})
    tr.close_unfinished({"killed"})
    tr.end_sweep("KILLED")
    client = mlflow.tracking.MlflowClient(uri)
    assert client.get_run(short).data.params == {"method.k": "1"}
    assert client.get_run(long).data.params == {k: str(v) for k, v in params.items()}
    r = client.get_run(killed)
    assert r.data.params == {"method.k": "40"} and r.info.status == "KILLED"


def test_a_local_sqlite_store_is_in_wal_mode_and_one_file_after_the_sweep(tmp_path) -> None:
    """Issue 14: the store's commits append to a write-ahead log without an fsync each (synchronous=NORMAL on every
    connection to a WAL database); at the sweep's end the log is copied into mlflow.db, so the file alone holds
    every run. A store on a network file system keeps SQLite's default journal."""
    import shutil
    import sqlite3

    from orchestrator.tracking import _network_fs, checkpoint_wal

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp", artifact_location=(tmp_path / "art").as_uri())
    run = tr.trial_run("key1", "t", {"method.k": 1}, {})
    tr.log_epoch(run, {"epoch": 1, "val/pgd_acc": 0.1})
    with sqlite3.connect(tmp_path / "mlflow.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store = tr.client._tracking_client.store
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)
    checkpoint_wal(uri)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "mlflow.db", tmp_path / "copy" / "mlflow.db")  # the file alone, without mlflow.db-wal
    r = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/copy/mlflow.db").get_run(run)
    assert r.data.params == {"method.k": "1"} and r.data.metrics["val/pgd_acc"] == 0.1

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n")
    assert _network_fs(Path("/shared/sweeps/x"), str(mounts)) and _network_fs(Path("/shared"), str(mounts))
    assert not _network_fs(Path("/sharedother/x"), str(mounts)) and not _network_fs(Path("/home/u"), str(mounts))
