"""Helpers of the cluster tests (imported by them): a node watcher, client processes with hard timeouts, and a
check that a cluster we started leaves nothing behind.

Every cluster here is started by ``orchestrator.cluster.start_local_cluster``: its own session, temp dir, free
ports and auth token, and stopped by PID. Nothing here runs ``ray stop`` (it ends every Ray cluster on the
machine, other people's included: shared/spec/stack.md Q5).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DRIVER = HERE / "tiny_tune_driver.py"
SWEEPS = HERE / "sweeps"


class NodeWatcher:
    """Runs ``python -m orchestrator cluster watch`` against a cluster (a separate process: it needs the cluster's
    auth environment, which must not leak into the test process) and collects its JSON lines:
    ``{"t", "wall", "workers", "gpus", "node_ids"}``, one per change of the alive worker nodes."""

    def __init__(self, cluster: Any, interval_s: float = 0.5) -> None:
        self.t0 = time.time()
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "cluster", "watch", "--address", cluster.address, "--interval", str(interval_s)],
            env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float, what: str, since: float = 0.0) -> dict[str, Any]:
        """The first event (at wall time >= ``since``) that satisfies ``pred``; fail with the timeline after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in list(self.events):
                if e.get("wall", 0) >= since and "error" not in e and pred(e):
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for: {what}\n{self.timeline()}")

    def wait_state(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        """Wait until the *current* state (the latest event) satisfies ``pred``; fail with the timeline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            e = self.events[-1] if self.events else None
            if e is not None and "error" not in e and pred(e):
                return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for: {what}\n{self.timeline()}")

    def peak_workers(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max((e.get("workers", 0) for e in self.events if since <= e.get("wall", 0) <= until), default=0)

    def timeline(self, t0: float | None = None) -> str:
        t0 = self.t0 if t0 is None else t0
        rows = []
        for e in self.events:
            if "error" in e:
                rows.append(f"  {e['wall'] - t0:6.1f} s  error: {e['error']}")
            else:
                ids = ", ".join(n[-5:] for n in e["node_ids"])
                rows.append(f"  {e['wall'] - t0:6.1f} s  workers={e['workers']} gpus={e['gpus']:g} [{ids}]")
        return "node timeline:\n" + ("\n".join(rows) or "  (no events)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def run(argv: list[str], env: dict[str, str], timeout_s: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a client process of a test cluster with a hard timeout (the test can never hang on it)."""
    try:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-3000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-3000:]
        pytest.fail(f"{' '.join(map(str, argv[:6]))} ... did not finish within {timeout_s:.0f} s:\n{out}")


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{text[-3000:]}")


def stop_and_check(cluster: Any) -> dict[str, Any]:
    """Stop a test cluster by its PIDs and assert none of its processes is left."""
    report = cluster.stop(grace_s=3.0)
    assert not report["left"], f"processes of the test cluster survived: {report}"
    assert not cluster.pids(), "processes of the test cluster survived"
    return report
