"""The MLflow server command of cluster.yaml's head, run here with the pinned MLflow: the same flags, with the
head's paths swapped for local ones (SQLite file and artifact destination in a temp dir instead of the head's disk
and S3, 127.0.0.1 and a free port instead of 0.0.0.0:5000). A client logs a run, a metric and an artifact over
HTTP; the artifact must arrive through the server's proxy (``--serve-artifacts``) in the destination folder.
The server is stopped by its session's PIDs."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cluster_helpers import REPO
from orchestrator.cluster import _pids_in_session, free_port, load_cluster_yaml

pytestmark = pytest.mark.slow


def _server_argv(tmp, port: int) -> tuple[list[str], dict[str, str]]:
    start = "\n".join(load_cluster_yaml(REPO / "cluster.yaml")["head_start_ray_commands"])
    m = re.search(r"(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=\S+) nohup (mlflow server .*?) >", start)
    assert m, "no `... nohup mlflow server ... >` in head_start_ray_commands"
    env_kv, cmd = m.group(1), m.group(2)
    swaps = [(r"sqlite:////home/ubuntu/mlflow/mlflow\.db", f"sqlite:///{tmp}/mlflow.db"),
             (r"s3://\S+", str(tmp / "artifacts")), (r"--host \S+", "--host 127.0.0.1"), (r"--port \d+", f"--port {port}")]
    for pat, rep in swaps:
        cmd, n = re.subn(pat, rep, cmd)
        assert n == 1, f"expected exactly one match of {pat} in: {cmd}"
    argv = shlex.split(cmd)
    argv[0] = os.path.join(os.path.dirname(sys.executable), "mlflow")
    k, v = env_kv.split("=", 1)
    return argv, {k: v}


CLIENT = """
import os, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("cluster-yaml-check")
with mlflow.start_run(run_name="probe") as run:
    mlflow.log_metric("x", 1.5, step=1)
    p = os.path.join(sys.argv[2], "note.txt")
    open(p, "w").write("hello")
    mlflow.log_artifact(p)
c = mlflow.tracking.MlflowClient()
r = c.get_run(run.info.run_id)
print(r.info.artifact_uri)
print(r.data.metrics)
"""


@pytest.mark.timeout(180)
def test_head_mlflow_server_command_serves_runs_and_artifacts(tmp_path):
    port = free_port()
    argv, extra = _server_argv(tmp_path, port)
    assert "--workers" in argv and argv[argv.index("--workers") + 1] == "1"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(argv, env={**os.environ, **extra}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    try:
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 90, "server not ready in 90 s\n" + (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        (tmp_path / "client").mkdir()
        r = subprocess.run([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", str(tmp_path / "client")],
                           capture_output=True, text=True, timeout=90, cwd=tmp_path,
                           env={**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        artifact_uri, metrics = r.stdout.strip().splitlines()[-2:]
        assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri  # proxied: clients need no S3 access
        assert "'x': 1.5" in metrics
        stored = list((tmp_path / "artifacts").rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello"
        assert (tmp_path / "mlflow.db").exists()
        print(f"\nhead MLflow command: ready in {ready_s:.1f} s, {len(_pids_in_session(proc.pid))} processes")
    finally:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = _pids_in_session(proc.pid)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _pids_in_session(proc.pid):
                time.sleep(0.2)
        proc.wait(5)
        log.close()
        assert not _pids_in_session(proc.pid), "MLflow server processes survived"
