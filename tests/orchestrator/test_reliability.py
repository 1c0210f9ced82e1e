"""Faults with real processes, part 2: a trial's worker killed with SIGKILL mid-epoch, a real MLflow server that
goes away mid-sweep (and comes back, or comes back only after the sweep), unusable output folders, two sweeps at
once on one tracking store and one Optuna storage, and output paths that try to leave the sweep folder.

The chaos (killing, restarting) runs in a thread beside the in-process ``orch sweep`` and watches the trials'
``metrics.jsonl``; every assertion is on what a researcher would look at afterwards: MLflow runs and metric
histories, ``results.parquet`` rows, the trial folders."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from orchestrator.results import read_rows

pytestmark = pytest.mark.slow


def _epochs_done(data: Path, pattern: str) -> int:
    files = list(data.glob(f"sweeps/*/trials/{pattern}/metrics.jsonl"))
    return len(files[0].read_text().splitlines()) if files else 0


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Chaos(threading.Thread):
    """Runs ``fn`` beside the sweep; an exception in it is re-raised by ``check()`` in the test."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.error = fn, None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def check(self) -> None:
        self.join(timeout=300)
        if self.error is not None:
            raise self.error


def _runs(uri: str, experiment: str) -> tuple[dict[str, object], list[object]]:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    children = {r.info.run_name: r for r in runs if "orch.trial_key" in r.data.tags}
    parents = [r for r in runs if r.data.tags.get("orch.role") == "sweep"]
    return children, parents


def _assert_every_epoch_once(uri: str, children: dict, rows: dict) -> None:
    client = mlflow.tracking.MlflowClient(uri)
    assert set(children) == set(rows), (set(children), set(rows))  # exactly one run per trial
    for name, r in children.items():
        n = rows[name]["epochs_run"]
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val/pgd_acc"))
        assert steps == list(range(1, n + 1)), (name, steps)
        assert r.info.status == "FINISHED", (name, r.info.status)
        assert r.info.run_id == rows[name]["mlflow_run_id"]
        assert "best/pgd10_eps8" in r.data.metrics
        lines = Path(rows[name]["out_dir"], "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(1, n + 1))


# ------------------------------------------------------------------------------------------------ worker SIGKILL


def test_worker_killed_mid_epoch_resumes_from_its_last_checkpoint(ray_session, write_sweep, cli, tmp_path) -> None:
    f = write_sweep("workerkill", base={"epochs": 20}, seeds=[0])
    data = tmp_path / "d"
    killed: dict[str, int] = {}

    def kill_worker() -> None:
        _wait(lambda: _epochs_done(data, "*") >= 3, 240, "the trial never reached epoch 3")
        trial = next(data.glob("sweeps/workerkill/trials/*"))
        pid = json.loads((trial / "orch_trial.json").read_text())["orch/pid"]
        n = _epochs_done(data, "*")
        time.sleep(0.08)  # inside the next epoch (one takes ~0.2 s here)
        assert _epochs_done(data, "*") == n, "the epoch ended before the kill: not mid-epoch"
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, at=n)

    chaos = Chaos(kill_worker)
    chaos.start()
    res = cli("sweep", f, "--data-dir", data)
    chaos.check()
    assert res.exit_code == 0, res.output
    assert killed, "the worker was not killed"
    [row], _ = read_rows(data / "sweeps" / "workerkill" / "results.parquet")
    assert row["status"] == "finished" and row["attempts"] == 2 and row["epochs_run"] == 20
    # the second attempt started after the last checkpointed epoch: epoch 1 trained (and reported) once
    assert res.output.count("epoch  seed=0 1/20") == 1, res.output
    assert json.loads(Path(row["out_dir"], "orch_trial.json").read_text())["orch/pid"] != killed["pid"]
    children, _ = _runs(f"sqlite:///{data}/sweeps/workerkill/mlflow.db", "workerkill")
    _assert_every_epoch_once(f"sqlite:///{data}/sweeps/workerkill/mlflow.db", children, {row["trial_name"]: row})


# ------------------------------------------------------------------------------------------------ MLflow outages


def _own_server(tmp_path: Path, mlflow_servers) -> tuple[Path, int, subprocess.Popen, str]:
    """A server of this test's own (folder, port): stopping and starting it again gives the same store."""
    sdir = tmp_path / "server"
    sdir.mkdir()
    port = mlflow_servers.free_port()
    server, uri = mlflow_servers.start(sdir, port)
    return sdir, port, server, uri


def test_mlflow_outage_mid_sweep_loses_nothing(ray_session, write_sweep, cli, tmp_path, mlflow_servers) -> None:
    """The server dies while trial A trains; A ends and B starts during the outage; the server comes back while B
    trains. Every epoch of both reaches MLflow once, in one run per trial."""
    sdir, port, server, uri = _own_server(tmp_path, mlflow_servers)
    f = write_sweep("outage", axes={"epochs": [6, 40]}, seeds=[0], max_concurrent_trials=1)
    data = tmp_path / "d"
    seen: dict[str, int] = {}

    def outage() -> None:
        nonlocal server
        _wait(lambda: _epochs_done(data, "epochs=6,*") >= 2, 240, "trial A never reached epoch 2")
        mlflow_servers.stop(server)
        seen["down_at_a"] = _epochs_done(data, "epochs=6,*")
        _wait(lambda: _epochs_done(data, "epochs=40,*") >= 2, 240, "trial B never started")
        seen["a_done_in_outage"] = _epochs_done(data, "epochs=6,*")
        server, _ = mlflow_servers.start(sdir, port)
        seen["up_at_b"] = _epochs_done(data, "epochs=40,*")

    chaos = Chaos(outage)
    chaos.start()
    try:
        res = cli("sweep", f, "--data-dir", data, "--tracking-uri", uri)
        chaos.check()
    finally:
        mlflow_servers.stop(server)
    assert res.exit_code == 0, res.output
    assert seen["down_at_a"] < 6 and seen["a_done_in_outage"] == 6 and seen["up_at_b"] < 40, seen
    assert "could not be delivered" not in res.output
    rows = {r["trial_name"]: r for r in read_rows(data / "sweeps" / "outage" / "results.parquet")[0]}
    server, _ = mlflow_servers.start(sdir, port)
    try:
        children, parents = _runs(uri, "outage")
        _assert_every_epoch_once(uri, children, rows)
        assert [p.info.status for p in parents] == ["FINISHED"]
    finally:
        mlflow_servers.stop(server)


def test_mlflow_down_until_after_the_sweep_then_resume_logs_it(ray_session, write_sweep, cli, tmp_path, monkeypatch, mlflow_servers) -> None:
    """The server dies mid-sweep and stays down past the end: the sweep finishes its trials, says what was not
    logged, and ``--resume`` once the server is back logs every trial in full, once."""
    monkeypatch.setenv("ORCH_MLFLOW_WAIT_S", "2")
    sdir, port, server, uri = _own_server(tmp_path, mlflow_servers)
    f = write_sweep("downlate", axes={"epochs": [3, 5]}, seeds=[0], max_concurrent_trials=1)
    data = tmp_path / "d"

    def outage() -> None:
        _wait(lambda: _epochs_done(data, "epochs=3,*") >= 1, 240, "trial A never reached epoch 1")
        mlflow_servers.stop(server)

    chaos = Chaos(outage)
    chaos.start()
    res = cli("sweep", f, "--data-dir", data, "--tracking-uri", uri)
    chaos.check()
    assert res.exit_code == 0, res.output
    assert "does not answer" in res.output and "could not be delivered" in res.output and "--resume" in res.output
    rows = {r["trial_name"]: r for r in read_rows(data / "sweeps" / "downlate" / "results.parquet")[0]}
    assert {r["status"] for r in rows.values()} == {"finished"} and len(rows) == 2  # nothing lost on disk

    server, _ = mlflow_servers.start(sdir, port)
    try:
        res2 = cli("sweep", f, "--data-dir", data, "--tracking-uri", uri, "--resume")
        assert res2.exit_code == 0, res2.output
        assert "start  " not in res2.output  # no trial ran again
        rows = {r["trial_name"]: r for r in read_rows(data / "sweeps" / "downlate" / "results.parquet")[0]}
        children, parents = _runs(uri, "downlate")
        _assert_every_epoch_once(uri, children, rows)
        assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]  # the first driver's parent: stale
    finally:
        mlflow_servers.stop(server)


# ------------------------------------------------------------------------------------------------ storage


@pytest.fixture
def tmpfs(tmp_path):
    """A small real file system of its own (tmpfs), so that "full" and "read-only" are real; needs mount rights
    (root in the CI container). Yields a function ``mount(size_mb, ro=False) -> Path``."""
    mounted: list[Path] = []

    def mount(size_mb: int, ro: bool = False) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size_mb}m" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs in CI: {r.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_output_folder_under_a_file_is_refused_before_anything(write_sweep, cli, tmp_path) -> None:
    f = write_sweep("storage1")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    res = cli("sweep", f, "--data-dir", blocker / "data")
    assert res.exit_code == 2, res.output
    assert "--data-dir" in res.output and f"{blocker} is a file, not a folder" in res.output
    assert "Traceback" not in res.output


def test_read_only_output_folder_is_refused_before_anything(write_sweep, cli, tmpfs) -> None:
    mnt = tmpfs(8, ro=True)
    res = cli("sweep", write_sweep("storage2"), "--data-dir", mnt / "data")
    assert res.exit_code == 2, res.output
    assert "read-only file system" in res.output and str(mnt) in res.output
    assert "Traceback" not in res.output


def test_output_folder_without_room_is_refused_before_anything(write_sweep, cli, tmpfs) -> None:
    mnt = tmpfs(2)
    res = cli("sweep", write_sweep("storage3"), "--data-dir", mnt / "data")
    assert res.exit_code == 2, res.output
    assert "MB free on the file system of" in res.output and "ORCH_MIN_FREE_MB" in res.output
    assert not (mnt / "data").exists()


def _orch(*args: object, env: dict[str, str]) -> tuple[int, str]:
    """``orch`` as its own process (as a researcher runs it: the second command is a new process)."""
    r = subprocess.run([sys.executable, "-m", "orchestrator", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200", **env}, timeout=600)
    return r.returncode, r.stdout + r.stderr


def test_disk_full_mid_sweep_is_one_clear_error_and_resume_finishes(write_sweep, tmpfs) -> None:
    """The sweep's file system fills up while a trial trains: the sweep stops with one message naming the folder
    and the cause (no traceback); once there is room, --resume finishes the trial with every epoch once."""
    mnt = tmpfs(48)
    env = {"ORCH_MIN_FREE_MB": "16", "ORCH_MLFLOW_WAIT_S": "2"}
    f = write_sweep("diskfull", base={"epochs": 30}, seeds=[0])
    data = mnt / "data"
    filler = mnt / "filler"

    def fill() -> None:
        _wait(lambda: _epochs_done(data, "*") >= 3, 240, "the trial never reached epoch 3")
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 2**20)
                    out.flush()
            except OSError:
                pass

    chaos = Chaos(fill)
    chaos.start()
    rc, out = _orch("sweep", f, "--data-dir", data, env=env)
    chaos.check()
    assert rc == 1, out
    assert f"error: cannot write {data}" in out and "No space left on device" in out and "--resume" in out, out
    assert "[SQL:" not in out and "INSERT INTO" not in out  # no SQL dumps: MLflow's are silenced, ours are one line
    done_before = _epochs_done(data, "*")
    assert 1 <= done_before < 30  # a retry may have reset the folder to the last checkpoint Tune kept

    # Ray writes its searcher state in place: a full disk usually leaves it cut at a 4096-byte block (seen in most
    # runs here). Make sure this run has that damage, so the recovery path is what gets tested.
    [state] = (data / "sweeps" / "diskfull" / "ray").glob("basic-variant-state-*.json")
    if state.stat().st_size != 4096:
        with open(state, "r+b") as fh:
            fh.truncate(min(4096, state.stat().st_size // 2))
    filler.unlink()
    rc, out = _orch("sweep", f, "--data-dir", data, "--resume", env=env)
    assert rc == 0, out
    flat = " ".join(out.split())  # rich wraps long lines
    assert "Ray's experiment state is damaged" in flat and "Continuing the unfinished trials from their own folders" in flat
    assert "epoch  seed=0 30/30" in out and "epoch  seed=0 1/30" not in out  # continued, not restarted
    [row], _ = read_rows(data / "sweeps" / "diskfull" / "results.parquet")
    assert row["status"] == "finished" and row["epochs_run"] == 30
    children, _ = _runs(f"sqlite:///{data}/sweeps/diskfull/mlflow.db", "diskfull")
    _assert_every_epoch_once(f"sqlite:///{data}/sweeps/diskfull/mlflow.db", children, {row["trial_name"]: row})


# ------------------------------------------------------------------------------------------------ two sweeps at once


def test_two_sweeps_at_once_share_one_tracking_store_and_one_optuna_storage(write_sweep, tmp_path) -> None:
    """Two `orch sweep` processes started together, each an Optuna search, on one fresh SQLite MLflow store and
    one fresh SQLite Optuna storage: both finish, nothing is locked or migrated twice, and each sweep's runs and
    study hold exactly its own trials."""
    shared = tmp_path / "shared"
    mlflow_uri, optuna_url = f"sqlite:///{shared}/mlflow.db", f"sqlite:///{shared}/optuna.db"
    files = [write_sweep(f"conc_{x}", base={"epochs": 2}, axes={"optim.lr": {"loguniform": [0.01, 0.2]}},
                         search={"algorithm": "optuna", "num_samples": 3, "storage": optuna_url},
                         tracking={"uri": mlflow_uri}, seeds=[0]) for x in "ab"]
    env = {**os.environ, "COLUMNS": "200"}
    logs = [open(tmp_path / f"{f.stem}.log", "w") for f in files]
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(tmp_path / "d")],
                              stdout=log, stderr=subprocess.STDOUT, env=env) for f, log in zip(files, logs)]
    try:
        rcs = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    outs = [(tmp_path / f"{f.stem}.log").read_text() for f in files]
    assert rcs == [0, 0], outs
    for out in outs:
        assert "locked" not in out.lower() and "Traceback" not in out, out

    import optuna

    for name in ("conc_a", "conc_b"):
        children, parents = _runs(mlflow_uri, name)
        assert len(children) == 3 and len(parents) == 1, (name, list(children))
        assert all(r.data.tags["orch.sweep"] == name and r.info.status == "FINISHED" for r in children.values())
        study = optuna.load_study(study_name=name, storage=optuna_url)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3, name
        rows, _ = read_rows(tmp_path / "d" / "sweeps" / name / "results.parquet")
        assert sorted(r["mlflow_run_id"] for r in rows) == sorted(r.info.run_id for r in children.values())


# ------------------------------------------------------------------------------------------------ divergence


def test_a_diverging_trial_is_an_outcome_and_the_sweep_goes_on(ray_session, write_sweep, cli, tmp_path) -> None:
    f = write_sweep("diverge", base={"epochs": 2}, axes={"optim.lr": [0.1, 1.0e9]}, seeds=[0])
    data = tmp_path / "d"
    res = cli("sweep", f, "--data-dir", data)
    assert res.exit_code == 0, res.output
    rows = {r["trial_name"]: r for r in read_rows(data / "sweeps" / "diverge" / "results.parquet")[0]}
    bad, good = rows["lr=1e+09,seed=0"], rows["lr=0.1,seed=0"]
    assert bad["outcome"] == "diverged" and bad["diverged_epoch"] == 1, bad
    assert good["outcome"] == "finished" and good["epochs_run"] == 2
    table = [ln for ln in res.output.splitlines() if "lr=1e+09" in ln and "│" in ln]
    assert table and "1 div" in table[0], res.output  # the report's Outcomes column
    children, _ = _runs(f"sqlite:///{data}/sweeps/diverge/mlflow.db", "diverge")
    assert children["lr=1e+09,seed=0"].data.tags["orch.outcome"] == "diverged"
    assert children["lr=1e+09,seed=0"].data.tags["orch.diverged_epoch"] == "1"


# ------------------------------------------------------------------------------------------------ Optuna + driver kill


def test_optuna_search_survives_a_driver_kill(write_sweep, tmp_path) -> None:
    """An Optuna search whose driver is SIGKILLed while its second trial trains: --resume continues that trial,
    samples only what is left, and the study, the results and MLflow each hold exactly num_samples trials."""
    f = write_sweep("tpekill", base={"epochs": 25}, axes={"optim.lr": {"loguniform": [0.02, 0.2]}}, seeds=[0],
                    search={"algorithm": "optuna", "num_samples": 3, "seed": 1}, max_concurrent_trials=1)
    data = tmp_path / "d"
    sdir = data / "sweeps" / "tpekill"
    env = {**os.environ, "COLUMNS": "200"}
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(data)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            _wait(lambda: (sdir / "results.parquet").exists() and _epochs_done(data, "t1*") >= 3, 300,
                  (tmp_path / "driver.log").read_text() if (tmp_path / "driver.log").exists() else "")
            time.sleep(1.5)  # past TUNE_GLOBAL_CHECKPOINT_S: Tune's state knows t1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    rows_at_kill, _ = read_rows(sdir / "results.parquet")
    assert [r["trial_name"].split(":")[0] for r in rows_at_kill] == ["t0"]

    rc, out = _orch("sweep", f, "--data-dir", data, "--resume", env={})
    assert rc == 0, out
    rows = {r["trial_name"]: r for r in read_rows(sdir / "results.parquet")[0]}
    assert sorted(n.split(":")[0] for n in rows) == ["t0", "t1", "t2"], list(rows)
    assert all(r["status"] == "finished" and r["epochs_run"] == 25 for r in rows.values())
    t1 = next(r for n, r in rows.items() if n.startswith("t1"))
    assert t1["attempts"] == 2  # continued, in a second attempt
    import optuna

    study = optuna.load_study(study_name="tpekill", storage=f"sqlite:///{sdir}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3, [(t.number, t.state.name) for t in study.trials]
    uri = f"sqlite:///{sdir}/mlflow.db"
    children, _ = _runs(uri, "tpekill")
    _assert_every_epoch_once(uri, children, rows)
