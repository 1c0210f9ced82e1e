"""Shared fixtures for the orchestrator tests: real components only.

- ``ray_session``: one local Ray (``num_cpus=2``) for the whole session; ``orch sweep`` run in-process joins it
  instead of starting its own (5 s each).
- ``mlflow_server``: one real ``mlflow server --workers 1`` (the lean variant of stack.md Q3, ~7 s to start)
  on a free 127.0.0.1 port, with job execution off.
- ``write_sweep``: writes a tiny sweep file (digits, small_cnn, FGSM-SDI with a small generator, 1 epoch,
  clean + PGD-10 on 100 test images) with overrides.
- ``grid_sweep``: the 4-trial grid (k in {1, 40} x 2 seeds) run once through the CLI; several tests read it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner

TINY_BASE: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "data": {"name": "digits", "val_size": 100},
    "model": {"name": "small_cnn", "width": 8},
    "method": {"name": "fgsm_sdi", "k": 20, "gen_width": 8},
    "eval": {"attacks": ["clean", "pgd10"], "subset": 100, "train_batch_size": 64, "epoch_pgd_steps": 3},
}


def sweep_doc(name: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "base": yaml.safe_load(yaml.safe_dump(TINY_BASE)), "metric": "best/pgd10_eps8"}
    for k, v in over.items():
        if k == "base":
            for bk, bv in v.items():
                if isinstance(bv, dict) and isinstance(doc["base"].get(bk), dict):
                    doc["base"][bk].update(bv)
                else:
                    doc["base"][bk] = bv
        elif v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


@pytest.fixture(scope="session", autouse=True)
def _wide_console():
    """rich wraps at 80 columns when the output is not a terminal; tests look for whole names in tables."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    yield
    if old is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = old


@pytest.fixture(scope="session")
def write_sweep(tmp_path_factory) -> Callable[..., Path]:
    root = tmp_path_factory.mktemp("sweepfiles")

    def write(name: str, **over: Any) -> Path:
        p = root / f"{name}.yaml"
        p.write_text(yaml.safe_dump(sweep_doc(name, **over), sort_keys=False))
        return p

    return write


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def ray_session():
    from orchestrator import tuner

    import ray

    tuner.configure_env(local=True)  # the driver environment orch uses for a local cluster

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": tuner.WORKER_ENV})
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(d: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start a real ``mlflow server`` (sqlite ``d/server.db``, artifacts in ``d/artifacts``) on 127.0.0.1 and wait
    until it answers; the same folder and port start the same store again (outage tests)."""
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(d / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d}/server.db", "--artifacts-destination", str(d / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_mlflow_server(proc)
            raise RuntimeError(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server over HTTP (sqlite backend, local artifact destination)."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    yield uri
    stop_mlflow_server(proc)


@pytest.fixture(scope="session")
def mlflow_servers():
    """``start(folder, port) -> (proc, uri)``, ``stop(proc)``, ``free_port()``: servers a test starts and stops."""
    from types import SimpleNamespace

    return SimpleNamespace(start=start_mlflow_server, stop=stop_mlflow_server, free_port=free_port)


def run_cli(runner: CliRunner, *args: str) -> Any:
    from orchestrator.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def cli(runner) -> Callable[..., Any]:
    """``cli("sweep", file, "--data-dir", d)``: the real ``orch`` app in-process (typer's CliRunner)."""
    return lambda *args: run_cli(runner, *args)


@pytest.fixture(scope="session")
def grid_sweep(ray_session, write_sweep, runner, tmp_path_factory):
    """The 4-trial grid on digits, run once through ``orch sweep`` (local Ray, sqlite MLflow in the folder)."""
    f = write_sweep("grid", axes={"method.k": [1, 40]}, seeds=2)
    data = tmp_path_factory.mktemp("grid_data")
    t0 = time.time()
    res = run_cli(runner, "sweep", f, "--data-dir", data)
    wall = time.time() - t0
    return {"file": f, "data": data, "dir": data / "sweeps" / "grid", "result": res, "wall": wall}
