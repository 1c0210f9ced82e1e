"""Faults with real processes: a trial that crashes once (retried from its checkpoint, logged over HTTP to a real
MLflow server), a driver killed with SIGKILL mid-sweep then resumed, a second driver on a busy sweep."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from orchestrator.results import read_rows

pytestmark = pytest.mark.slow


def test_trial_crashing_once_is_retried_from_its_checkpoint_over_http(ray_session, mlflow_server, write_sweep, cli, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv("ORCH_TEST_CRASH_ONCE", str(marker))
    f = write_sweep("retry", base={"epochs": 2}, seeds=[0])
    res = cli("sweep", f, "--data-dir", tmp_path / "d", "--tracking-uri", mlflow_server)
    assert res.exit_code == 0, res.output
    assert marker.read_text() == "seed=0"  # the hook fired (once) in that trial
    assert "retry  seed=0" in res.output and "ORCH_TEST_CRASH_ONCE" in res.output
    # resumed from the epoch-1 checkpoint, not from scratch: epoch 1 was reported once, epoch 2 once
    assert res.output.count("epoch  seed=0 1/2") == 1 and res.output.count("epoch  seed=0 2/2") == 1
    [row], _ = read_rows(tmp_path / "d" / "sweeps" / "retry" / "results.parquet")
    assert row["status"] == "finished" and row["attempts"] == 2 and row["epochs_run"] == 2
    assert [json.loads(x)["epoch"] for x in Path(row["out_dir"], "metrics.jsonl").read_text().splitlines()] == [1, 2]

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["retry"], output_format="list")
    children = [r for r in runs if "orch.trial_key" in r.data.tags]
    assert len(children) == 1 and len(runs) == 2
    client = mlflow.tracking.MlflowClient(mlflow_server)
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "val/pgd_acc")] == [1, 2]
    assert children[0].info.status == "FINISHED" and children[0].info.run_id == row["mlflow_run_id"]
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"robustness.json", "curves.png"}


def test_driver_killed_mid_sweep_then_resume_finishes_only_what_was_left(ray_session, write_sweep, cli, tmp_path) -> None:
    # trial A (1 epoch) runs first and finishes; the driver is killed while B (40 epochs of ~0.2 s) trains
    f = write_sweep("killed", axes={"epochs": [1, 40]}, seeds=[0], max_concurrent_trials=1)
    data = tmp_path / "d"
    sdir = data / "sweeps" / "killed"
    log = open(tmp_path / "driver.log", "w")
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("ORCH_TEST_CRASH_ONCE", None)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(data)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        a_done = None
        while True:  # kill when A is recorded (> TUNE_GLOBAL_CHECKPOINT_S ago) and B is a few epochs in
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()
            assert time.time() < deadline, (tmp_path / "driver.log").read_text()
            if a_done is None and (sdir / "results.parquet").exists():
                a_done = time.time()
            b = list(sdir.glob("trials/epochs=40,seed=0-*/metrics.jsonl"))
            if a_done and time.time() - a_done > 2 and b and len(b[0].read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    rows_at_kill, _ = read_rows(sdir / "results.parquet")
    assert [r["trial_name"] for r in rows_at_kill] == ["epochs=1,seed=0"], "B must still be running at the kill"

    res = cli("sweep", f, "--data-dir", data, "--resume")
    assert res.exit_code == 0, res.output
    assert "start  epochs=1,seed=0" not in res.output  # the finished trial is not run again
    rows = {r["trial_name"]: r for r in read_rows(sdir / "results.parquet")[0]}
    assert set(rows) == {"epochs=1,seed=0", "epochs=40,seed=0"}
    assert all(r["status"] == "finished" for r in rows.values())
    assert rows["epochs=1,seed=0"]["attempts"] == 1 and rows["epochs=40,seed=0"]["epochs_run"] == 40
    assert rows["epochs=40,seed=0"]["attempts"] == 2  # B continued from its checkpoint in a second attempt

    mlflow.set_tracking_uri(f"sqlite:///{sdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["killed"], output_format="list")
    children = {r.info.run_name: r for r in runs if "orch.trial_key" in r.data.tags}
    parents = sorted((r for r in runs if r.data.tags.get("orch.role") == "sweep"), key=lambda r: r.info.start_time)
    assert set(children) == set(rows)  # exactly one run per trial after the resume
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    client = mlflow.tracking.MlflowClient()
    for name, r in children.items():
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/pgd_acc")]
        assert steps == list(range(1, rows[name]["epochs_run"] + 1)), (name, steps)  # every epoch, once
        assert r.info.status == "FINISHED"
    lines = Path(rows["epochs=40,seed=0"]["out_dir"], "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 41))
    # B continued after its checkpoint (or replayed its finished epochs from its folder), never retrained epoch 1
    assert "epoch  epochs=40,seed=0 1/40" not in res.output, res.output


def test_second_driver_on_a_busy_sweep_is_refused(ray_session, write_sweep, cli, tmp_path) -> None:
    f = write_sweep("busy")
    sdir = tmp_path / "sweeps" / "busy"
    sdir.mkdir(parents=True)
    with open(sdir / ".lock", "w") as held:
        held.write("pid 12345 on elsewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        res = cli("sweep", f, "--data-dir", tmp_path)
    assert res.exit_code == 2 and "another `orch sweep`" in res.output and "pid 12345" in res.output
    assert not (sdir / "sweep.json").exists() and not (sdir / "ray").exists()


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(write_sweep, tmp_path) -> None:
    f = write_sweep("interrupted", base={"epochs": 40}, seeds=[0])
    data = tmp_path / "d"
    out = tmp_path / "driver.log"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(data)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
        try:
            deadline = time.time() + 240
            while not list(data.glob("sweeps/interrupted/trials/*/metrics.jsonl")) or \
                    len(next(data.glob("sweeps/interrupted/trials/*/metrics.jsonl")).read_text().splitlines()) < 2:
                assert proc.poll() is None and time.time() < deadline, out.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out.read_text()
    assert rc == 130, text
    assert "Resume with" in text and f"orch sweep {f} --data-dir {data} --resume" in text
    assert "Tuner.restore" not in text, text  # orch's resume command only, not Ray's own beside it
    sdir = data / "sweeps" / "interrupted"
    assert list(sdir.glob("ray/*/checkpoint_*")), "checkpoints are kept"
    mlflow.set_tracking_uri(f"sqlite:///{sdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["interrupted"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]  # parent and the unfinished trial's run
