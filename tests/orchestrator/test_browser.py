"""End to end in a real browser: a small real sweep (method.k in {1, 40}, 1 seed, 1 epoch) logs to a real
``mlflow server``; the sweep's view is stored there as ``orch ui`` stores it (:func:`orchestrator.ui.share_view`)
and headless Chromium opens the addresses ``orch ui`` prints (:func:`orchestrator.ui.ui_urls`): the experiment
page must list the trial runs flat (not the collapsed parent), best first, with the swept parameter and the
metric as columns and each run's values; its Chart view a parallel-coordinates chart of the swept parameter
against the metric; the compare view the runs' names, swept parameter and metric, and no per-trial
``name``/``out_dir`` params. Screenshots of the pages are kept in the test's tmp folder
(``docs/figures/mlflow_*.png`` are copies of them).

Chromium (Debian package ``chromium``; ``make test`` installs it) is driven from its command line:
``--dump-dom`` after ``--virtual-time-budget`` (virtual time stops while the page's API requests are pending,
so the React app has rendered what it fetched), and ``--screenshot`` in the same run. Without Chromium the test
is skipped, except in CI (``CI`` set), where that is a failure."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from orchestrator.ui import share_view, ui_urls
from orchestrator.results import read_rows

pytestmark = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")  # session: decided before the session's Ray and MLflow server start
def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    why = "headless Chromium not found (`chromium` on PATH): install the Debian package `chromium` (`make test` does)"
    if _in_ci():
        pytest.fail(f"{why}; CI is set, so the browser test must run")
    pytest.skip(why)


def render(chromium: str, url: str, shot: Path, size: str, budget_ms: int, profile: Path) -> str:
    """The page's DOM after ``budget_ms`` of virtual time, and its screenshot in ``shot``."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-quic", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--virtual-time-budget={budget_ms}", f"--window-size={size}", f"--screenshot={shot}", "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a busy shared machine renders slowly
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p.stdout


def text_of(dom: str) -> str:
    t = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", t)))


class _Tables(HTMLParser):
    """Rows of every <table>: [header cell, data cells...] as text (the compare view's run details and params)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(dom: str) -> dict[str, list[str]]:
    p = _Tables()
    p.feed(dom)
    return {r[0]: r[1:] for r in p.rows if r}


def metric_row(dom: str, name: str) -> list[str]:
    """The values of metric ``name`` in the compare view's metrics grid, left to right (one per run). The grid
    positions its cells absolutely: a name cell and its row's value cells share their ``top``."""
    a, b = dom.find(">Metrics<"), dom.find(">Artifacts<")
    assert 0 < a < b, "no Metrics section in the compare view"
    sec = dom[a:b]
    m = re.search(r'top: (\d+)px;[^"]*"><a title="Plot chart"[^>]*>' + re.escape(html.escape(name, quote=False)) + "<", sec)
    assert m, f"metric {name} not in the compare view's metrics grid: {text_of(sec)[:1500]}"
    cells = re.findall(r'left: (\d+)px; position: absolute; top: ' + m.group(1) + r'px;[^"]*"><span[^>]*>([^<]*)</span>', sec)
    return [v for _, v in sorted(cells, key=lambda c: int(c[0]))]


def test_mlflow_ui_shows_the_sweeps_runs_params_and_robust_metric(chromium, ray_session, write_sweep, cli, mlflow_server,
                                                                  tmp_path) -> None:
    f = write_sweep("browser", axes={"method.k": [1, 40]}, seeds=1)
    res = cli("sweep", f, "--data-dir", tmp_path / "data", "--tracking-uri", mlflow_server)
    assert res.exit_code == 0, res.output
    rows, _ = read_rows(tmp_path / "data" / "sweeps" / "browser" / "results.parquet")
    rows.sort(key=lambda r: r["config.method.k"])
    assert [r["trial_name"] for r in rows] == ["k=1,seed=0", "k=40,seed=0"]
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=browser", timeout=10) as r:
        eid = json.loads(r.read())["experiment"]["experiment_id"]
    run_ids = [r["mlflow_run_id"] for r in rows]
    from mlflow.tracking import MlflowClient

    view = share_view(MlflowClient(mlflow_server), eid, ["method.k"], "best/pgd10_eps8", "max")
    urls = ui_urls(mlflow_server, eid, run_ids, view)
    assert urls["experiment_url"] == urls["trials_url"]
    def page(url: str, shot: Path, size: str, ready: str) -> str:
        """Rendered DOM (a second, longer look if the app had not shown ``ready`` yet on a busy machine). A fresh
        browser profile per address, as a reader opening the printed link: after the Chart view, the UI state it
        leaves in the profile's local storage keeps the compare page busy past any virtual-time budget."""
        dom = ""
        profile = tmp_path / f"chromium-profile-{shot.stem}"
        for budget in (10_000, 30_000):
            dom = render(chromium, url, shot, size, budget, profile)
            if ready in text_of(dom):
                break
        return dom

    # ---- the experiment page: the trial runs (flat, without the sweep's parent run), best first by the robust
    # metric, with the swept parameter and the metric as columns
    exp_png = tmp_path / "mlflow_experiment.png"
    dom = page(urls["experiment_url"], exp_png, "1600,900", "2 matching runs")
    text = text_of(dom)
    assert "browser" in text and "2 matching runs" in text, text[:3000]
    best_first = sorted(rows, key=lambda r: -r["best/pgd10_eps8"])
    names = [n for n in re.findall(r">(k=\d+,seed=0)<", dom)]
    if best_first[0]["best/pgd10_eps8"] != best_first[1]["best/pgd10_eps8"]:  # (a tie has no order)
        assert names[:2] == [r["trial_name"] for r in best_first], (names, text[:3000])
    assert "sweep 20" not in text  # the parent run ("sweep <date>") is filtered out
    assert "Sort: best/pgd10_eps8" in text, text[:3000]
    assert re.search(r"Metrics Parameters .*best/pgd10_eps8.* method\.k seed", text) or \
        re.search(r"Parameters Metrics .*method\.k seed .*best/pgd10_eps8", text), text[:3000]  # the columns
    for r in rows:  # each run's swept value (and seed) and metric value are in its row
        assert f" {r['config.method.k']} 0 " in text and f"{r['best/pgd10_eps8']:.3g}"[:4] in text, (r, text[:3000])

    # ---- its Chart view: a parallel-coordinates chart of the swept parameter (and the seed) against the metric
    chart_png = tmp_path / "mlflow_chart.png"
    dom = page(urls["chart_url"], chart_png, "1600,1000", "Parallel Coordinates")
    text = text_of(dom)
    i = text.find("Parallel Coordinates")
    assert i >= 0, text[:3000]
    axes = text[i:i + 600]
    assert "method.k" in axes and "seed" in axes and "best/pgd10_eps8" in axes, axes

    # ---- the compare view: names, the swept parameter and the robust metric of each run, in the URL's order
    cmp_png = tmp_path / "mlflow_compare.png"
    dom = page(urls["compare_url"], cmp_png, "1600,1500", "best/pgd10_eps8")
    text = text_of(dom)
    assert "Comparing 2 Runs from 1 Experiment" in text, text[:3000]
    t = table_rows(dom)
    assert t.get("Run ID:") == run_ids, t.get("Run ID:")
    assert t.get("Run Name:") == ["k=1,seed=0", "k=40,seed=0"], t.get("Run Name:")
    assert t.get("method.k") == ["1", "40"], sorted(t)[:80]
    assert "out_dir" not in t and "name" not in t  # per-trial paths are tags, not params: the plot shows method.k
    shown = metric_row(dom, "best/pgd10_eps8")
    assert [float(v) for v in shown] == pytest.approx([r["best/pgd10_eps8"] for r in rows], abs=1e-3), shown
    assert [float(v) for v in metric_row(dom, "best/clean")] == pytest.approx([r["best/clean"] for r in rows], abs=1e-3)

    for png in (exp_png, chart_png, cmp_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, png
    print(f"screenshots: {exp_png} {chart_png} {cmp_png}")
