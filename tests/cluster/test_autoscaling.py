"""A real autoscaling cluster on this machine: Ray's fake multi-node provider (stack.md Q5).

The head (``ray start --head`` with ``RAY_FAKE_CLUSTER=1 --autoscaling-config``, CPU 0 and GPU 0, like
cluster.yaml's head) runs Ray's autoscaler; a worker type advertises ``{CPU: 1, GPU: 1}`` with min 0, max 2 and an
idle timeout of 6 s. Each fake worker is a real raylet on this machine (the GPU is a logical resource). A sweep
whose trials ask for one GPU each makes the autoscaler add workers, the trials finish on them, and the idle
workers are removed. Each stage is asserted, against a node watcher's timeline.

Only the cluster started here is stopped, by its PIDs (never ``ray stop``). Both tests share one cluster (start-up
is ~6-13 s on this shared 2-core machine); each starts from "head only".
"""
from __future__ import annotations

import sys
import time

import pyarrow.parquet as pq
import pytest

from cluster_helpers import DRIVER, SWEEPS, NodeWatcher, last_json_line, run, stop_and_check
from orchestrator.cluster import start_local_cluster

pytestmark = pytest.mark.slow

MAX_WORKERS = 2
IDLE_TIMEOUT_MIN = 0.1  # 6 s


@pytest.fixture(scope="module")
def fake_cluster():
    c = start_local_cluster(fake_worker={"worker_resources": {"CPU": 1, "GPU": 1}, "max_workers": MAX_WORKERS,
                                         "idle_timeout_minutes": IDLE_TIMEOUT_MIN})
    print(f"\nfake autoscaling cluster up in {c.start_s} s at {c.address}")
    try:
        yield c
    finally:
        rep = stop_and_check(c)
        print(f"stopped in {rep['stop_s']} s: {len(rep['terminated'])} processes, {len(rep['killed'])} needed SIGKILL")


def _autoscaler_log(c) -> str:
    return "autoscaler (monitor.log) tail:\n" + c.log_tail("monitor.log", 2500)


@pytest.mark.timeout(240)
def test_gpu_trials_scale_the_cluster_up_then_idle_workers_are_removed(fake_cluster, tmp_path):
    c = fake_cluster
    w = NodeWatcher(c)
    try:
        w.wait_state(lambda e: e["workers"] == 0, 30, "the cluster to start with the head only")
        t0 = time.time()
        r = run([sys.executable, str(DRIVER), c.address, str(tmp_path / "tune"), "--trials", "4", "--cpu", "1", "--gpu", "1",
                 "--steps", "3"], env=c.client_env(), timeout_s=150)
        t_fit = time.time()
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + "\n" + w.timeline(t0)
        out = last_json_line(r.stdout)

        # 1. the autoscaler added GPU workers: up to its max, as 4 one-GPU trials were pending
        up = w.wait_for(lambda e: e["workers"] >= 1 and e["gpus"] >= 1, 5, "a GPU worker to be added", since=t0)
        assert w.peak_workers(t0, t_fit) == MAX_WORKERS, w.timeline(t0) + "\n" + _autoscaler_log(c)

        # 2. every trial finished, on a worker (the head has no GPU), holding one GPU
        assert out["errors"] == 0, out
        assert len(out["trials"]) == 4 and all(t["step"] == 3 for t in out["trials"]), out
        seen = {n for e in w.events for n in e.get("node_ids", [])}
        used = {t["node_id"] for t in out["trials"]}
        assert used <= seen, f"trials ran on {used}, workers seen {seen}"
        # (how many workers the trials used depends on timing: with reuse_actors a worker that is up early may run
        # all 4 short trials before the second one has started, so that is reported, not asserted)
        assert all(t["gpu_ids"] == ["0"] and t["cuda_visible"] == "0" for t in out["trials"]), out["trials"]

        # 3. idle workers removed: back to the head only
        down = w.wait_state(lambda e: e["workers"] == 0, 90, "idle workers to be removed")
        timeline = (f"{w.timeline(t0)}\n  driver: connect {out['init_s']} s, fit returned at {t_fit - t0:.1f} s; "
                    f"first worker at {up['wall'] - t0:.1f} s, head only again at {down['wall'] - t0:.1f} s; "
                    f"trials ran on {len(used)} of the workers")
        print("\n" + timeline)
    finally:
        w.stop()


@pytest.mark.timeout(300)
def test_orch_sweep_with_address_on_the_autoscaling_cluster(fake_cluster, tmp_path):
    """``orch sweep FILE --address`` against the autoscaling cluster: 2 one-epoch trials on digits, 1 GPU each."""
    c = fake_cluster
    w = NodeWatcher(c)
    try:
        w.wait_state(lambda e: e["workers"] == 0, 90, "the cluster to be back to the head only")
        t0 = time.time()
        r = run([sys.executable, "-m", "orchestrator", "sweep", str(SWEEPS / "tiny_gpu.yaml"), "--address", c.address,
                 "--data-dir", str(tmp_path)], env=c.client_env(), timeout_s=240)
        t_end = time.time()
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + "\n" + w.timeline(t0)

        up = w.wait_for(lambda e: e["workers"] >= 1 and e["gpus"] >= 1, 5, "a GPU worker to be added", since=t0)
        assert w.peak_workers(t0, t_end) >= 2, "two concurrent 1-GPU trials need two workers\n" + w.timeline(t0)

        rows = pq.read_table(tmp_path / "sweeps" / "cluster-tiny-gpu" / "results.parquet").to_pylist()
        assert sorted(x["status"] for x in rows) == ["finished", "finished"], rows

        down = w.wait_state(lambda e: e["workers"] == 0, 90, "idle workers to be removed")
        print(f"\n{w.timeline(t0)}\n  orch sweep took {t_end - t0:.1f} s; first worker at {up['wall'] - t0:.1f} s, "
              f"head only again at {down['wall'] - t0:.1f} s")
    finally:
        w.stop()
