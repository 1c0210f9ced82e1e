"""``orch sweep FILE --address ...`` against a running ``ray start --head`` cluster, several trials sharing one GPU
through fractional requests, and a sweep submitted as a Ray job.

The cluster is started here (``ray start --head --num-cpus 2 --num-gpus 1``: a logical GPU, this machine has none;
torch runs on the CPU), on free ports, with its own temp dir and auth token, and stopped by its PIDs.

Ray jobs need the dashboard's job server on the head, which needs ``ray[default]`` (requirements-cluster.txt);
with ``ray[tune]`` alone that test is skipped and says so.
"""
from __future__ import annotations

import sys

import pyarrow.parquet as pq
import pytest

from cluster_helpers import DRIVER, SWEEPS, last_json_line, run, stop_and_check
from orchestrator.cluster import has_ray_default, start_local_cluster, sweep_job_command

pytestmark = pytest.mark.slow

RAY_DEFAULT = has_ray_default()


@pytest.fixture(scope="module")
def head():
    c = start_local_cluster(num_cpus=2, num_gpus=1, dashboard=RAY_DEFAULT)
    print(f"\nlocal head up in {c.start_s} s at {c.address}" + (f", dashboard {c.dashboard_url}" if c.dashboard_url else ""))
    try:
        yield c
    finally:
        rep = stop_and_check(c)
        print(f"stopped in {rep['stop_s']} s: {len(rep['terminated'])} processes, {len(rep['killed'])} needed SIGKILL")


def _results(data_dir) -> list[dict]:
    return pq.read_table(data_dir / "sweeps" / "cluster-tiny-gpu" / "results.parquet").to_pylist()


@pytest.mark.timeout(120)
def test_fractional_gpu_requests_pack_two_trials_on_one_gpu(head, tmp_path):
    """Two trials asking for 0.5 GPU each run at the same time on the one GPU (same id, overlapping in time)."""
    r = run([sys.executable, str(DRIVER), head.address, str(tmp_path / "tune"), "--trials", "2", "--cpu", "1", "--gpu", "0.5",
             "--steps", "6"], env=head.client_env(), timeout_s=100)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = last_json_line(r.stdout)
    assert out["errors"] == 0, out
    a, b = out["trials"]
    assert a["gpu_ids"] == b["gpu_ids"] == ["0"], out["trials"]
    overlap = min(a["t_end"], b["t_end"]) - max(a["t_start"], b["t_start"])
    assert overlap > 0, f"the two 0.5-GPU trials did not run concurrently: {out['trials']}"
    print(f"\n0.5 GPU each: both on GPU 0, concurrent for {overlap:.1f} s of {a['t_end'] - a['t_start']:.1f} s")


@pytest.mark.timeout(240)
def test_orch_sweep_with_address(head, tmp_path):
    """The sweep file's trials ask for 0.5 GPU (--set): both fit on the head's one GPU at once."""
    r = run([sys.executable, "-m", "orchestrator", "sweep", str(SWEEPS / "tiny_gpu.yaml"), "--address", head.address,
             "--set", "resources.gpu=0.5", "--data-dir", str(tmp_path)], env=head.client_env(), timeout_s=200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _results(tmp_path)
    assert sorted(x["status"] for x in rows) == ["finished", "finished"], rows
    assert (tmp_path / "sweeps" / "cluster-tiny-gpu" / "ray").is_dir()  # Tune's experiment state, in the sweep folder


@pytest.mark.timeout(240)
@pytest.mark.skipif(not RAY_DEFAULT, reason="Ray jobs need the dashboard on the head: install ray[default] (requirements-cluster.txt)")
def test_sweep_submitted_as_a_ray_job(head, tmp_path):
    """``ray job submit --working-dir sweeps/ -- python -m orchestrator sweep tiny_gpu.yaml --address auto``."""
    argv = sweep_job_command(head.dashboard_url, "tiny_gpu.yaml", "--set", "resources.gpu=0.5", "--data-dir", str(tmp_path),
                             working_dir=str(SWEEPS), python=sys.executable, submission_id="orch-test-job")
    r = run(argv, env=head.client_env(), timeout_s=200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Job 'orch-test-job' succeeded" in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-2000:]
    rows = _results(tmp_path)
    assert sorted(x["status"] for x in rows) == ["finished", "finished"], rows


STARTER = """
import sys, time
from orchestrator.cluster import start_local_cluster
c = start_local_cluster(num_cpus=0)
print(c.temp_dir, flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(120)
def test_a_cluster_whose_starter_was_killed_is_stopped_by_down(tmp_path):
    """The process that started a cluster dies with SIGKILL (no atexit): `python -m orchestrator cluster down
    TEMP_DIR` still finds and stops exactly that cluster's processes."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    from orchestrator.cluster import _pids_mentioning

    p = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        temp_dir = p.stdout.readline().strip()
        assert temp_dir.startswith("/tmp/orchray-"), temp_dir
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        assert _pids_mentioning(temp_dir), "the cluster should outlive its killed starter"
        r = run([sys.executable, "-m", "orchestrator", "cluster", "down", temp_dir], env=dict(os.environ), timeout_s=60)
        assert r.returncode == 0, r.stderr[-2000:]
        assert not _pids_mentioning(temp_dir) and not Path(temp_dir).exists(), r.stdout
    finally:
        if p.poll() is None:
            p.kill()
