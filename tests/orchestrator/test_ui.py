"""``orch ui``: the MLflow UI on a sweep's own store, bound to 127.0.0.1, with the addresses of the sweep's experiment
page and of the compare view of its trial runs, looked up in the sweep's mlflow.db before the server starts.

The real command in a subprocess (it exec's ``mlflow ui``) on the real 4-trial grid sweep's store."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest

from orchestrator.results import read_rows

pytestmark = pytest.mark.slow


def _listening_addresses(port: int) -> list[str] | None:
    """Local addresses of the TCP sockets LISTENing on ``port``, from /proc/net/tcp and tcp6 (None without them:
    not Linux)."""
    if not os.path.exists("/proc/net/tcp"):
        return None
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(name):
            continue
        for line in Path(name).read_text().splitlines()[1:]:
            f = line.split()
            addr, p = f[1].split(":")
            if f[3] != "0A" or int(p, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            out.append(str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip))
    return out


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: picks the outgoing interface, sends nothing
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def test_orch_ui_prints_the_sweeps_pages_and_listens_on_loopback_only(grid_sweep, mlflow_servers) -> None:
    assert grid_sweep["result"].exit_code == 0, grid_sweep["result"].output
    sdir: Path = grid_sweep["dir"]
    rows, _ = read_rows(sdir / "results.parquet")
    trial_runs = {r["mlflow_run_id"]: r["trial_name"] for r in rows}
    assert len(trial_runs) == 4

    port = mlflow_servers.free_port()
    base = f"http://127.0.0.1:{port}"
    # a narrow terminal: the addresses must still come out whole, one per line
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(sdir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "60"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline, up = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None:
            try:
                up = _get(base + "/health", timeout=2)[0] == 200
            except OSError:
                pass
            if up:
                break
            time.sleep(0.5)
        out = "".join(lines)
        assert up, f"orch ui did not answer on {base} (exit {proc.poll()}):\n{out[-3000:]}"

        # the addresses were printed before the exec (a pipe: they must have been flushed)
        assert f"MLflow UI on {base} (Ctrl-C to stop)" in out, out
        m = re.search(rf"experiment 'grid' \(id (\w+)\): {re.escape(base)}/#/experiments/(\w+)/runs\?viewStateShareKey=(\S+)\n", out)
        assert m and m.group(1) == m.group(2), out
        eid, key = m.group(1), m.group(3)
        # the experiment page opens on the sweep's view, stored as the UI's own shared views are: the trial runs,
        # best first, the swept parameter (and seed) and the metric as columns, a parallel-coordinates chart
        m = re.search(rf"its 4 trial runs, best first by best/pgd10_eps8: {re.escape(base)}/#/experiments/{eid}/runs\?(\S+)\n", out)
        assert m and parse_qs(m.group(1)) == {"viewStateShareKey": [key]}, out
        assert f"chart of the swept parameters against the metric: {base}/#/experiments/{eid}/runs?viewStateShareKey={key}&compareRunsMode=CHART\n" in out, out
        tags = {t["key"]: t["value"] for t in json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={eid}")[1])["experiment"]["tags"]}
        view = json.loads(tags[f"mlflow.sharedViewState.{key}"])
        assert (view["searchFilter"], view["orderByKey"], view["orderByAsc"]) == ("tags.`orch.trial_key` != ''", "metrics.`best/pgd10_eps8`", False)
        assert view["selectedColumns"] == ["params.`method.k`", "params.`seed`", "metrics.`best/pgd10_eps8`", "metrics.`best/clean`"]
        chart = view["compareRunCharts"][0]
        assert (chart["type"], chart["selectedParams"], chart["selectedMetrics"]) == ("PARALLEL", ["method.k", "seed"], ["best/pgd10_eps8"])
        m = re.search(rf"compare the 4 trial runs: {re.escape(base)}/#/compare-runs\?runs=(\[[^\]]*\])&experiments=(\[[^\]]*\])\n", out)
        assert m, out
        runs, exps = json.loads(unquote(m.group(1))), json.loads(unquote(m.group(2)))
        assert sorted(runs) == sorted(trial_runs) and exps == [eid]  # the trial runs; not the sweep's parent run

        # what the addresses name is what this server serves
        status, page = _get(base + "/")
        assert status == 200 and '<div id="root"' in page  # the UI's single-page app
        exp = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={eid}")[1])["experiment"]
        assert exp["name"] == "grid"
        for run_id, name in trial_runs.items():
            info = json.loads(_get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")[1])["run"]["info"]
            assert info["experiment_id"] == eid and info["run_name"] == name

        # bound to the loopback interface only: its listening sockets, and a connection from another address
        addrs = _listening_addresses(port)
        other = _non_loopback_ipv4()
        assert addrs is not None or other, "neither /proc/net/tcp nor a non-loopback address to check the binding with"
        if addrs is not None:
            assert addrs and set(addrs) == {"127.0.0.1"}, addrs
        if other:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=3).close()
    finally:
        mlflow_servers.stop(proc)  # its process group: SIGTERM, then SIGKILL
    deadline = time.time() + 15
    while _listening_addresses(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _listening_addresses(port)  # the server's whole process group is gone


def test_orch_ui_without_a_local_store_is_refused(tmp_path: Path, cli) -> None:
    (tmp_path / "s").mkdir()
    res = cli("ui", tmp_path / "s")
    assert res.exit_code == 2 and "no " in res.output and "mlflow.db" in res.output


def test_ui_links_of_a_store_without_the_experiment(tmp_path: Path) -> None:
    """A real MLflow store the sweep has not logged into yet (another experiment only): no addresses."""
    from mlflow.tracking import MlflowClient

    from orchestrator.ui import ui_links, ui_urls

    db = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("another")
    links = ui_links(db, "grid", "http://127.0.0.1:5000", "best/pgd10_eps8")
    assert links["experiment_id"] is None and links["compare_url"] is None and links["run_ids"] == []
    # the compare view's route as the MLflow UI writes it (JSON lists, unencoded)
    u = ui_urls("http://h:1", "7", ["a", "b"], None)
    assert u["compare_url"] == 'http://h:1/#/compare-runs?runs=["a","b"]&experiments=["7"]'
    assert u["experiment_url"] == u["trials_url"] == "http://h:1/#/experiments/7/runs"
    assert ui_urls("http://h:1", "7", [])["compare_url"] is None
