"""Cluster helpers: validate ``cluster.yaml`` offline, start and stop a *local* Ray cluster (optionally one that
autoscales with Ray's fake multi-node provider), watch its nodes, and submit a sweep as a Ray job.

Why not Ray's own helpers (``shared/spec/stack.md`` Q5 and Q7, ``docs/cluster.md``): ``ray.cluster_utils.AutoscalingCluster``
is broken in the Ray 2.60 wheel (its ``example.yaml`` is not shipped) and runs ``ray stop --force``, which kills
**every** Ray process on the machine, including other people's. So we never call it and never run ``ray stop``: a
local cluster runs in a session of its own (``setsid``) with its own ``--temp-dir``, and :meth:`LocalCluster.stop`
signals exactly its processes (SIGTERM, then SIGKILL: ``gcs_server``, ``raylet`` and ``monitor.py`` ignore SIGTERM).
``ray start`` would also write its auth token to ``~/.ray/auth_token``, a file shared with everyone on the machine;
each cluster here gets its own through ``RAY_AUTH_TOKEN`` (:attr:`LocalCluster.env`: what a client needs).

The command line is ``orch cluster`` (``orchestrator/cli.py``; trying autoscaling by hand: ``docs/cluster.md``).
Nothing here imports Ray at module import time, so importing it is cheap and cannot flip Ray's auth settings.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

# Environment for every process of a local cluster we start, and for its clients.
BASE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # stack.md Q7: usage stats are on by default for `ray start`
    "RAY_SCHEDULER_EVENTS": "0",  # autoscaler messages repeated in every driver log (Q5)
}
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider names the head node type this way
STATE_FILE = "orch_cluster.json"  # in the cluster's temp dir: its address and session id (for `down`)


def load_cluster_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return cfg


def validate_cluster_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``ray up`` config offline against Ray's own schema and checks (``ray-schema.json``, unknown
    ``head_node_type``, ``min_workers`` above ``max_workers``, ...); return the prepared config. ``prepare_config``
    first merges the provider's defaults: without them ``validate_config`` fails with a misleading error. Raises
    ``jsonschema.ValidationError`` or ``ValueError``. No network access, no cloud credentials."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(dict(cfg)))
    validate_config(prepared)
    return prepared


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (tiny race window; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This machine's IP as Ray picks it (the source address of a UDP "connection"; no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("8.8.8.8", 53))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def fake_autoscaling_config(gcs_address: str, *, worker_resources: Mapping[str, float] | None = None, max_workers: int = 2,
                            idle_timeout_minutes: float = 0.1) -> dict[str, Any]:
    """The autoscaling config for ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``.

    Fields of Ray's upstream ``fake_multi_node/example.yaml`` (not shipped in the 2.60 wheel). ``gcs_address`` must
    be set: the fake provider otherwise hard-codes GCS port 6379 (stack.md Q5), which may be someone else's.
    Each fake worker node is a real raylet on this machine advertising ``worker_resources`` (``GPU`` is a
    logical resource only: no device exists).
    """
    res = dict(worker_resources or {"CPU": 1, "GPU": 1})
    res.setdefault("object_store_memory", 2e8)  # 200 MB per fake node, not a share of this machine's RAM
    return {
        "cluster_name": "orch-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "docker": {},
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            # False (the provider's default): one node per launch request, the autoscaler asks again for the rest.
            # With True, Ray 2.60's autoscaler queued a third node while the first two were still being created,
            # then terminated it at once (max_workers_per_type), cancelling a trial actor placed on it (measured).
            "launch_multiple": False,
            "disable_launch_config_check": True,
            "disable_node_updaters": True,
            "use_node_id_as_ip": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            FAKE_HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": res, "node_config": {}, "min_workers": 0, "max_workers": max_workers},
        },
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        **{k: [] for k in ("rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},  # none: the nodes are local
    }


def _ray_cmd() -> list[str]:
    """``ray`` of this interpreter (its environment decides whether the dashboard / job server can start)."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class LocalCluster:
    """A Ray cluster this process started on this machine; :meth:`stop` ends exactly its processes.

    Which processes are "its": the members of the session of ``ray start --head --block`` (every process Ray
    starts for the cluster inherits it: GCS, raylet, autoscaler, the fake worker nodes, trial workers), plus any
    process whose command line names its temp dir, plus their descendants. The session is trusted only while its
    leader (``ray start --block``, pid == session id) exists and names our temp dir: then the session id cannot
    have been reused by someone else (pid_max is 32768 here; pids do wrap). This process never reaps the leader
    before the rest is gone, so the leader's pid stays reserved until then.
    """

    address: str  # GCS address host:port (what `ray.init(address=...)` and `orch sweep --address` take)
    temp_dir: Path  # Ray's --temp-dir: sessions, logs, sockets of this cluster only
    sid: int  # the session id every process of this cluster runs in (= pid of `ray start --head --block`)
    env: dict[str, str]  # environment a client of this cluster needs (auth token, usage stats off)
    dashboard_url: str | None = None  # http://host:port when started with the dashboard (needs ray[default])
    start_s: float = 0.0
    stopped: bool = field(default=False, repr=False)
    _leader: subprocess.Popen | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ processes
    def _session_trusted(self) -> bool:
        if self._leader is not None and self._leader.returncode is None:
            return True  # our own child, not reaped: its pid (= the session id) cannot be reused
        try:
            return _mentions(Path(f"/proc/{self.sid}/cmdline").read_bytes(), str(self.temp_dir))
        except OSError:
            return False

    def pids(self) -> list[int]:
        """PIDs of this cluster's live processes (zombies excluded)."""
        found = set(_pids_mentioning(str(self.temp_dir)))
        if self._session_trusted():
            found |= set(_pids_in_session(self.sid))
        found |= set(_descendants(found))
        found.discard(os.getpid())
        return sorted(found)

    def log_tail(self, name: str = "monitor.log", chars: int = 4000) -> str:
        """The end of one of this cluster's Ray logs (``monitor.log``: the autoscaler's decisions)."""
        try:
            return (self.temp_dir / "session_latest" / "logs" / name).read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"({name}: {e})"

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) plus what a client of this cluster needs."""
        env = dict(os.environ if base is None else base)
        env.pop("RAY_ADDRESS", None)
        env.update(self.env)
        return env

    def stop(self, grace_s: float = 5.0, timeout_s: float = 20.0) -> dict[str, Any]:
        """SIGTERM every process of this cluster, SIGKILL what is left after ``grace_s``; remove the temp dir.

        Never ``ray stop``: that would end every Ray cluster on the machine. Returns what was done.
        """
        t0 = time.monotonic()
        report: dict[str, Any] = {"terminated": [], "killed": [], "left": []}
        first = self.pids()
        _signal_all(first, signal.SIGTERM)
        report["terminated"] = first
        while time.monotonic() < t0 + grace_s and self.pids():
            time.sleep(0.2)
        while time.monotonic() < t0 + timeout_s:
            left = self.pids()
            if not left:
                break
            _signal_all(left, signal.SIGKILL)
            report["killed"] = sorted(set(report["killed"]) | set(left))
            time.sleep(0.3)
        report["left"] = self.pids()
        if not report["left"] and self._leader is not None:
            try:
                self._leader.wait(timeout=5)  # reap the leader last: only now may its pid be reused
            except subprocess.TimeoutExpired:
                report["left"] = [self._leader.pid]
        report["stop_s"] = round(time.monotonic() - t0, 2)
        if not report["left"]:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.stopped = True
        return report


def start_local_cluster(*, num_cpus: float = 0, num_gpus: float = 0, fake_worker: Mapping[str, Any] | None = None,
                        dashboard: bool = False, timeout_s: float = 90.0) -> LocalCluster:
    """Start a Ray head on this machine with ``ray start --head`` and return a handle to stop it.

    Args:
        num_cpus, num_gpus: the head's own resources (0 and 0: nothing runs on the head, like cluster.yaml).
        fake_worker: make it autoscale with Ray's fake multi-node provider; keyword arguments of
            :func:`fake_autoscaling_config` (``worker_resources``, ``max_workers``, ``idle_timeout_minutes``).
        dashboard: start the dashboard (needed for Ray jobs; needs ``ray[default]``) on a free port.

    The GCS port is a free one (never 6379, the default others use); Ray's temp dir is a new short dir under /tmp
    (its unix socket paths live under it: 107-byte limit), removed by :meth:`LocalCluster.stop`; token auth uses a
    fresh random token passed through ``RAY_AUTH_TOKEN`` (nothing written to ``~/.ray``). The cluster is stopped
    when this process exits (one killed with SIGKILL cannot: ``orch cluster down TEMP_DIR`` then).
    """
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="orchray-", dir="/tmp"))
    host = node_ip()
    address = f"{host}:{port}"
    env = {**BASE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    cmd = [
        *_ray_cmd(), "start", "--head", f"--port={port}", f"--node-ip-address={host}",
        f"--num-cpus={num_cpus:g}", f"--num-gpus={num_gpus:g}", f"--temp-dir={tmp}",
        "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",
        # fixed default ports others may hold: the dashboard agent's 52365 and the metrics port
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]
    # even with --include-dashboard=false a minimal dashboard process binds --dashboard-port (default 8265)
    dport = free_port()
    cmd += [f"--include-dashboard={'true' if dashboard else 'false'}", f"--dashboard-port={dport}"]
    dash_url = None
    if dashboard:
        cmd.append(f"--dashboard-host={host}")
        dash_url = f"http://{host}:{dport}"
    proc_env = {**os.environ, **env}
    proc_env.pop("RAY_ADDRESS", None)
    if fake_worker is not None:
        cfg_path = tmp / "autoscaling.json"
        cfg_path.write_text(json.dumps(fake_autoscaling_config(address, **dict(fake_worker)), indent=2))
        cmd.append(f"--autoscaling-config={cfg_path}")
        proc_env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    t0 = time.monotonic()
    # --block: `ray start` stays alive as the session leader (see LocalCluster); ready = it wrote the address file
    with open(tmp / "ray_start.log", "w") as log:
        proc = subprocess.Popen(cmd + ["--block"], env=proc_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(tmp))
    cluster = LocalCluster(address, tmp, proc.pid, env, dash_url, _leader=proc)
    (tmp / STATE_FILE).write_text(json.dumps({"address": address, "sid": proc.pid, "dashboard_url": dash_url,
                                              "started_by_pid": os.getpid()}))
    atexit.register(lambda: None if cluster.stopped else cluster.stop(grace_s=2.0))
    ready = tmp / "ray_current_cluster"
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
            why = f"exit {proc.returncode}" if proc.returncode is not None else f"not ready within {timeout_s:.0f} s"
            text = (tmp / "ray_start.log").read_text(errors="replace")[-4000:]
            cluster.stop()
            raise RuntimeError(f"`ray start --head` failed ({why}):\n{text}")
        time.sleep(0.2)
    cluster.start_s = round(time.monotonic() - t0, 2)
    return cluster


def stop_local_cluster(temp_dir: str | os.PathLike, grace_s: float = 5.0) -> dict[str, Any]:
    """Stop a local cluster started by :func:`start_local_cluster` from its temp dir (e.g. after the process that
    started it was killed). Only processes in its session or naming its temp dir are signalled."""
    tmp = Path(temp_dir).resolve()
    state = json.loads((tmp / STATE_FILE).read_text())
    # not our child: the session is trusted only if its leader still names this temp dir (LocalCluster)
    return LocalCluster(state["address"], tmp, int(state["sid"]), {}).stop(grace_s=grace_s)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rfind(")") + 2:].split()


def _all_pids() -> Iterable[int]:
    for p in os.listdir("/proc"):
        if p.isdigit():
            yield int(p)


def _pids_in_session(sid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        st = _proc_stat(pid)
        # fields after comm: state(0) ppid(1) pgrp(2) session(3)
        if st and len(st) > 3 and int(st[3]) == sid and st[0] != "Z":
            out.append(pid)
    return out


def _mentions(cmdline: bytes, path: str) -> bool:
    """Does a /proc cmdline name ``path`` itself or something inside it (not merely a longer sibling name)?"""
    needle = path.rstrip("/").encode()
    i = cmdline.find(needle)
    while i >= 0:
        end = i + len(needle)
        if end == len(cmdline) or cmdline[end:end + 1] in (b"/", b"\0", b" ", b'"', b"'"):
            return True
        i = cmdline.find(needle, i + 1)
    return False


def _pids_mentioning(path: str) -> list[int]:
    out = []
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            if _mentions(Path(f"/proc/{pid}/cmdline").read_bytes(), path):
                st = _proc_stat(pid)
                if st and st[0] != "Z":
                    out.append(pid)
        except OSError:
            continue
    return out


def _descendants(roots: Iterable[int]) -> list[int]:
    """Live descendants of ``roots`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st and len(st) > 1 and st[0] != "Z":
            children.setdefault(int(st[1]), []).append(pid)
    out, todo = [], list(roots)
    seen = set(todo)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                out.append(c)
                todo.append(c)
    return out


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def alive_nodes(address: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Alive nodes of the cluster at ``address`` (run in a process whose env has the cluster's auth settings)."""
    from ray._raylet import GcsClient

    client = GcsClient(address=address)
    infos = client.get_all_node_info(timeout=timeout_s)
    out = []
    for nid, info in infos.items():
        if info.state != 0:  # ALIVE == 0
            continue
        res = dict(info.resources_total)
        out.append({"node_id": nid.hex() if hasattr(nid, "hex") else str(nid), "head": bool(info.is_head_node),
                    "resources": {k: v for k, v in res.items() if not k.startswith("node:") and k != "object_store_memory" and k != "memory"}})
    return sorted(out, key=lambda n: (not n["head"], n["node_id"]))


def watch(address: str, interval_s: float = 1.0, duration_s: float | None = None, out: Any = None) -> None:
    """Print one JSON line whenever the set of alive nodes changes: ``{"t": s, "workers": n, "gpus": g, ...}``."""
    out = out or sys.stdout
    t0 = time.monotonic()
    last = None
    while duration_s is None or time.monotonic() - t0 < duration_s:
        try:
            nodes = alive_nodes(address)
            workers = [n for n in nodes if not n["head"]]
            state = {"workers": len(workers), "gpus": sum(n["resources"].get("GPU", 0) for n in workers),
                     "node_ids": [n["node_id"] for n in workers]}
        except Exception as e:  # noqa: BLE001 - report and keep watching
            state = {"error": f"{type(e).__name__}: {e}"[:300]}
        if state != last:
            print(json.dumps({"t": round(time.monotonic() - t0, 2), "wall": round(time.time(), 2), **state}), file=out, flush=True)
            last = state
        time.sleep(interval_s)


def has_ray_default() -> bool:
    """True if ``ray[default]`` is installed here: needed on the *head* for the dashboard and its job server."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("aiohttp_cors", "opencensus", "prometheus_client"))


def sweep_job_command(dashboard_url: str, sweep_file: str, *orch_args: str, working_dir: str | None = None,
                      python: str | None = None, submission_id: str | None = None, no_wait: bool = False) -> list[str]:
    """argv of ``ray job submit`` that runs ``orch sweep SWEEP_FILE --address auto ORCH_ARGS`` as a Ray job (why, and
    what the head needs: ``docs/cluster.md``, "Run a sweep"). ``sweep_file`` is relative to ``working_dir`` (uploaded
    with the job); ``python``: the interpreter on the head that has orch (default ``python``, its active environment).
    """
    argv = [*_ray_cmd(), "job", "submit", "--address", dashboard_url]
    if working_dir:
        argv += ["--working-dir", str(working_dir)]
    if submission_id:
        argv += ["--submission-id", submission_id]
    if no_wait:
        argv.append("--no-wait")
    return argv + ["--", python or "python", "-m", "orchestrator", "sweep", sweep_file, "--address", "auto", *orch_args]
