"""``orch ui``'s MLflow side: a sweep's MLflow UI addresses (its experiment, the trial runs best first, the chart
and compare pages), the sweep's stored view of its experiment page, the port to serve on, and starting
``mlflow ui`` on the sweep's local store (``mlflow.db`` + ``mlartifacts``). MLflow is imported only here, and only
when a function needs it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator import sweepdir
from training.metrics import canonical

VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.17's experiment page reads its view from this experiment tag


def share_view(client: Any, experiment_id: str, swept: list[str], metric: str | None, mode: str = "max") -> str:
    """Store the sweep's view of its experiment page in MLflow, as the UI's own "share view" does: the experiment
    tag ``mlflow.sharedViewState.<key>`` holds the search (the trial runs only, best first by ``metric``) and the
    UI state (columns: the swept parameters, the seed and the metric; a parallel-coordinates chart of the swept
    parameters against the metric in the Chart view). ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens
    it (MLflow 3.17's ``useSharedExperimentViewState``: the URL parameter, then ``JSON.parse`` of the tag).
    Returns ``key``; the same sweep state gives the same key (the tag is rewritten, not duplicated)."""
    import hashlib

    from orchestrator.tracking import TRIAL_KEY_TAG

    params = [*swept, *(["seed"] if "seed" not in swept else [])]
    metrics = [m for m in (metric, "best/clean") if m]
    col = lambda kind, k: f"{kind}.`{k}`"  # noqa: E731 - MLflow's makeCanonicalSortKey
    section = "orch-sweep"
    state: dict[str, Any] = {
        "searchFilter": f"tags.`{TRIAL_KEY_TAG}` != ''",
        "orderByKey": col("metrics", metric) if metric else "attributes.start_time",
        "orderByAsc": mode == "min" if metric else False,
        "selectedColumns": [col("params", p) for p in params] + [col("metrics", m) for m in dict.fromkeys(metrics)],
        "compareRunSections": [{"uuid": section, "name": "sweep", "display": True, "isReordered": False, "deleted": False,
                                "isGenerated": False}],
        "compareRunCharts": [{"uuid": "orch-parallel", "type": "PARALLEL", "runsCountToCompare": 100, "metricSectionId": section,
                              "deleted": False, "isGenerated": False, "selectedParams": params,
                              "selectedMetrics": metrics[:1]}],
        "isAccordionReordered": True,
    }
    text = json.dumps(state, sort_keys=True)
    key = "orch-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, text)
    return key


def ui_urls(base: str, experiment_id: str, run_ids: list[str], view_key: str | None = None) -> dict[str, str | None]:
    """The MLflow 3.17 UI's addresses (a hash router; routes as in its ``routes.ts``): ``experiment_url``, the
    experiment's runs table; with ``view_key`` (:func:`share_view`) it opens on the sweep's view: the trial runs
    (flat, without the sweep's parent run), best first, with the swept parameters and the metric as columns.
    ``trials_url``: the same view; ``chart_url``: its Chart view (``compareRunsMode=CHART``), a parallel-coordinates
    chart of the swept parameters against the metric; ``compare_url``: the compare page of ``run_ids``
    (``#/compare-runs?runs=[...]&experiments=[...]``, as ``getCompareRunPageRoute`` writes it), whose parallel
    coordinates plot shows the parameters that differ between the runs (only the swept ones and the seed are logged
    as differing). The last three are None without runs."""
    exp = f"{base}/#/experiments/{experiment_id}/runs"
    view = f"{exp}?viewStateShareKey={view_key}" if view_key else exp
    out: dict[str, str | None] = {"experiment_url": view, "trials_url": None, "chart_url": None, "compare_url": None}
    if run_ids:
        out["trials_url"] = view
        out["chart_url"] = f"{view}&compareRunsMode=CHART" if view_key else f"{exp}?compareRunsMode=CHART"
        out["compare_url"] = f"{base}/#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}&experiments={json.dumps([experiment_id])}"
    return out


def ui_links(db: Path, experiment: str, base: str, metric: str | None = None, mode: str = "max",
             swept: list[str] | None = None) -> dict[str, Any]:
    """A sweep's MLflow UI addresses (:func:`ui_urls`), looked up in its SQLite store with MLflow's own client,
    after storing the sweep's view (:func:`share_view`) there.

    Also returns ``experiment_id`` (None if the store has no such experiment: then no addresses),
    ``run_ids`` / ``run_names`` of the trial runs (tagged ``orch.trial_key``, not deleted, oldest first) and
    ``sort_metric`` (the sweep's metric as MLflow names it, if some run has it)."""
    import logging

    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import TRIAL_KEY_TAG

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    out: dict[str, Any] = {"experiment": experiment, "experiment_id": None, "run_ids": [], "run_names": [], "sort_metric": None,
                           "experiment_url": None, "trials_url": None, "chart_url": None, "compare_url": None}
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(db).resolve()}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        return out
    runs = list(client.search_runs([exp.experiment_id], filter_string=f"tags.`{TRIAL_KEY_TAG}` != ''",
                                   max_results=50000, order_by=["attributes.start_time ASC", "attributes.run_name ASC"]))
    key = canonical(metric) if metric else None
    if key and not any(key in r.data.metrics for r in runs):
        key = None  # nothing logged under that name (yet): an unsorted list
    out.update(experiment_id=str(exp.experiment_id), run_ids=[r.info.run_id for r in runs],
               run_names=[r.info.run_name for r in runs], sort_metric=key)
    view = share_view(client, out["experiment_id"], list(swept or []), key, mode)
    out.update(ui_urls(base, out["experiment_id"], out["run_ids"], view))
    return out


def sweep_identity(sdir: Path) -> tuple[str, str | None, str, list[str]]:
    """(MLflow experiment name, metric, mode, swept keys) of a sweep folder, from its sweep.json (the folder name
    if absent)."""
    try:
        state = sweepdir.read_state(sdir)
    except (OSError, ValueError):
        return sdir.name, None, "max", []
    resolved = state.get("resolved") or {}
    axes = resolved.get("axes") or {}
    return (state.get("name") or sdir.name, resolved.get("metric"), resolved.get("mode") or "max",
            list(axes) if isinstance(axes, dict) else [])


UI_DEFAULT_PORT = 5000


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (taken by another process, an unknown host), or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"--host {host}: {e.strerror}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sk:
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port in TIME_WAIT is free
        try:
            sk.bind(addr)
            sk.listen(1)
        except OSError as e:
            return e.strerror or str(e)
    return None


def pick_port(host: str, port: int | None) -> tuple[int | None, str]:
    """The port ``orch ui`` serves on, and a line to say about it: the port asked for, if free (else None and
    the reason: never print addresses another process answers on); without one, 5000 or the next free port."""
    if port is not None:
        why = _port_problem(host, port)
        if why is None:
            return port, ""
        taken = "in use" in why
        return None, (f"cannot serve on {host}:{port}: {why}" + (" (another program, perhaps another `orch ui`, listens there)" if taken else "")
                      + "; choose another " + ("port with --port N, or leave --port out to take a free one" if taken else "--host or --port"))
    for p in range(UI_DEFAULT_PORT, UI_DEFAULT_PORT + 100):
        why = _port_problem(host, p)
        if why is None:
            return p, ("" if p == UI_DEFAULT_PORT else f"port {UI_DEFAULT_PORT} on {host} is taken by another program: using {p}")
        if "in use" not in why:
            return None, f"cannot serve on {host}:{p}: {why}; choose another --host"
    return None, f"no free port in {UI_DEFAULT_PORT}-{UI_DEFAULT_PORT + 99} on {host}: choose one with --port N"


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to ``host:port`` (a wildcard host as the
    loopback address, an IPv6 address in brackets)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("localhost" if host == "::" else host)
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"


def serve(db: Path, host: str, port: int) -> None:
    """Replace this process by ``mlflow ui`` on the SQLite store ``db`` (never returns)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", host, "--port", str(port), "--workers", "1"]
    sys.stdout.flush()  # exec replaces this process: what is still buffered (a pipe) would be lost
    sys.stderr.flush()
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow's server imports starlette.middleware.wsgi, which warns that it is deprecated: noise for a user of it
    os.environ["PYTHONWARNINGS"] = ",".join(x for x in (os.environ.get("PYTHONWARNINGS"), "ignore:starlette.middleware.wsgi is deprecated:UserWarning") if x)
    os.execv(sys.executable, cmd)
