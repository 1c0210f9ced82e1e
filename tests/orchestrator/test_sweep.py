"""A real 4-trial grid (k in {1, 40} x 2 seeds) on digits, run through ``orch sweep`` on local Ray, logged to a
real MLflow SQLite store; then the results, the MLflow runs, the report, and the refusals around it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from orchestrator.results import read_rows
from training import metrics
from orchestrator.spec import load_spec

pytestmark = pytest.mark.slow


def _runs(sweep_dir: Path, name: str):
    mlflow.set_tracking_uri(f"sqlite:///{sweep_dir}/mlflow.db")
    return mlflow.search_runs(experiment_names=[name], output_format="list")


def test_grid_runs_every_trial_once(grid_sweep) -> None:
    res = grid_sweep["result"]
    assert res.exit_code == 0, res.output
    rows, meta = read_rows(grid_sweep["dir"] / "results.parquet")
    assert len(rows) == 4
    assert sorted((r["config.method.k"], r["seed"]) for r in rows) == [(1, 0), (1, 1), (40, 0), (40, 1)]
    for r in rows:
        assert r["status"] == "finished" and r["outcome"] in ("finished", "catastrophic_overfitting")
        assert r["attempts"] == 1 and r["epochs_run"] == 1
        for k in ("best/clean", "best/pgd10_eps8", "last/clean", "last/pgd10_eps8"):
            assert 0.0 <= r[k] <= 1.0
        assert r["best/pgd10_eps8"] <= r["best/clean"]
        assert r["time/trial_s"] > r["time/train_s"] > 0
        assert Path(r["out_dir"], "last.pt").exists() and Path(r["out_dir"], "results.json").exists()
    assert json.loads(meta["orch.swept"]) == ["method.k"] and meta["orch.metric"] == "best/pgd10_eps8"
    # the seeds differ, so the numbers do (a test that would catch every trial running the same seed)
    assert len({(r["config.seed"], r["config.method.k"]) for r in rows}) == 4
    # live progress and the closing summary
    for s in ("start  k=1,seed=0", "done   k=40,seed=1", "results.parquet", "mlflow.db", "orch ui"):
        assert s in res.output, s


def test_each_trials_final_evaluation_reaches_the_live_view(grid_sweep) -> None:
    out = grid_sweep["result"].output
    for name in ("k=1,seed=0", "k=1,seed=1", "k=40,seed=0", "k=40,seed=1"):
        assert re.search(rf"eval   {re.escape(name)}: final evaluation ~\S+ \(measured estimate\)", out), out[-3000:]


def test_one_mlflow_run_per_trial_nested_under_the_parent(grid_sweep) -> None:
    runs = _runs(grid_sweep["dir"], "grid")
    parents = [r for r in runs if r.data.tags.get("orch.role") == "sweep"]
    children = [r for r in runs if "orch.trial_key" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    pid = parents[0].info.run_id
    assert parents[0].info.status == "FINISHED" and "git.commit" in parents[0].data.tags
    assert sorted(c.info.run_name for c in children) == ["k=1,seed=0", "k=1,seed=1", "k=40,seed=0", "k=40,seed=1"]
    rows, _ = read_rows(grid_sweep["dir"] / "results.parquet")
    by_key = {r["trial_key"]: r for r in rows}
    client = mlflow.tracking.MlflowClient()
    for c in children:
        t = c.data.tags
        assert t["mlflow.parentRunId"] == pid and c.info.status == "FINISHED"
        row = by_key[t["orch.trial_key"]]
        assert row["mlflow_run_id"] == c.info.run_id
        assert c.data.params["method.k"] == str(row["config.method.k"]) and t["seed"] == str(row["seed"])
        assert {"host", "torch", "cuda", "orch.config_hash", "orch.outcome"} <= set(t)
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val/pgd_acc")] == [1]
        assert c.data.metrics["best/pgd10_eps8"] == pytest.approx(row["best/pgd10_eps8"])
        assert "pid" not in c.data.metrics and "timestamp" not in c.data.metrics  # no Tune bookkeeping
        arts = {a.path for a in client.list_artifacts(c.info.run_id)}
        # one epoch: no curves.png (a point, not a curve; test_trainable draws one for two epochs)
        assert arts == {"config.json", "results.json", "robustness.json"}


def test_only_epoch_records_carry_a_tune_checkpoint(grid_sweep) -> None:
    """Issue 14: each of the four 1-epoch trials has one Tune checkpoint (its epoch), not two: the final record
    carries none (a second one per trial forced a snapshot of the whole experiment after every trial). The driver
    took the trial's results from its folder: MLflow has its results.json (test above)."""
    trials = [d for d in (grid_sweep["dir"] / "ray").iterdir() if d.is_dir() and list(d.glob("checkpoint_*"))]
    assert len(trials) == 4
    for d in trials:
        [ckpt] = d.glob("checkpoint_*")
        assert (ckpt / "last.pt").exists() and not (ckpt / "results.json").exists()


def test_predicted_metric_names_match_the_training_core(grid_sweep) -> None:
    """training.metrics.final_keys (what validation accepts as `metric`) must name what training.run really yields."""
    rows, _ = read_rows(grid_sweep["dir"] / "results.parquet")
    results = json.loads(Path(rows[0]["out_dir"], "results.json").read_text())
    from training.config import RunConfig

    cfg = RunConfig.from_dict(results["config"])
    real = set(results["final"]) | set(results["epochs"][0])
    assert metrics.final_keys(cfg) <= real, metrics.final_keys(cfg) - real


def test_report_table_markdown_csv_and_plots(grid_sweep, cli) -> None:
    res = cli("report", grid_sweep["dir"])
    assert res.exit_code == 0, res.output
    for s in ("Clean", "PGD-10", "k=1", "k=40", "Best", "Last", "2 ok"):
        assert s in res.output, s
    rep = grid_sweep["dir"] / "report"
    md = (rep / "table.md").read_text()
    assert "| k=1 | Best |" in md and "±" in md
    header = (rep / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["method.k", "n", "outcomes"] and "best/pgd10_eps8_mean" in header and "best/pgd10_eps8_std" in header
    for png in ("method.k.png", "curves.png"):
        assert (rep / png).stat().st_size > 5000
    # the report is reachable from the sweep file too
    res2 = cli("report", grid_sweep["file"], "--data-dir", grid_sweep["data"], "--no-plots")
    assert res2.exit_code == 0 and "k=40" in res2.output


def test_starting_a_changed_sweep_over_a_finished_one_is_refused(grid_sweep, cli) -> None:
    # the same sweep again shows its results (test_newcomer.py); another version of it in its folder is refused
    res = cli("sweep", grid_sweep["file"], "--data-dir", grid_sweep["data"], "--set", "seeds=3")
    assert res.exit_code == 2 and "--resume" in res.output


def test_resume_of_a_finished_sweep_reruns_nothing(grid_sweep, cli) -> None:
    before = {r["trial_key"]: r for r in read_rows(grid_sweep["dir"] / "results.parquet")[0]}
    res = cli("sweep", grid_sweep["file"], "--data-dir", grid_sweep["data"], "--resume")
    assert res.exit_code == 0, res.output
    assert "start  " not in res.output  # no trial started
    after = {r["trial_key"]: r for r in read_rows(grid_sweep["dir"] / "results.parquet")[0]}
    assert {k: r["attempts"] for k, r in after.items()} == {k: r["attempts"] for k, r in before.items()}
    runs = _runs(grid_sweep["dir"], "grid")
    assert sum("orch.trial_key" in r.data.tags for r in runs) == 4  # still one run per trial
    assert sum(r.data.tags.get("orch.role") == "sweep" for r in runs) == 2  # one parent per invocation


def test_resume_refuses_a_changed_sweep(grid_sweep, cli) -> None:
    res = cli("sweep", grid_sweep["file"], "--data-dir", grid_sweep["data"], "--resume", "--set", "axes.method.k=[1,2]")
    assert res.exit_code == 2 and "the sweep changed" in res.output and "axes" in res.output


def test_resume_without_a_sweep_is_refused(write_sweep, cli, tmp_path) -> None:
    res = cli("sweep", write_sweep("never"), "--data-dir", tmp_path, "--resume")
    assert res.exit_code == 2 and "nothing to resume" in res.output


def test_dry_run_lists_trials_and_measures_without_writing(write_sweep, cli, tmp_path) -> None:
    f = write_sweep("dry", axes={"method.k": [1, 40]}, seeds=[0, 3])
    res = cli("sweep", f, "--dry-run", "--data-dir", tmp_path / "d")
    assert res.exit_code == 0, res.output
    spec = load_spec(f)
    for t in spec.trials:
        assert t.name in res.output and t.key in res.output
    assert "4 trials" in res.output and "measured estimate" in res.output and "wall ~" in res.output
    assert not (tmp_path / "d").exists()


def test_asha_cuts_a_weak_trial_and_lets_the_survivor_finish_its_evaluation(ray_session, write_sweep, cli, tmp_path) -> None:
    # one trial at a time, the strong config first: at epoch 1 the weak one (lr 0.001: ~1% PGD accuracy against
    # ~37%) is below the rung's cutoff whatever the timing, so the outcome is deterministic
    f = write_sweep("asha", base={"epochs": 3}, axes={"optim.lr": [0.1, 0.001]}, seeds=[0], max_concurrent_trials=1,
                    scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}, metric="val/pgd_acc")
    res = cli("sweep", f, "--data-dir", tmp_path)
    assert res.exit_code == 0, res.output
    rows = {r["trial_name"]: r for r in read_rows(tmp_path / "sweeps" / "asha" / "results.parquet")[0]}
    strong, weak = rows["lr=0.1,seed=0"], rows["lr=0.001,seed=0"]
    assert strong["status"] == "finished" and strong["epochs_run"] == 3 and "best/pgd10_eps8" in strong
    assert weak["status"] == "stopped" and weak["outcome"] == "stopped" and weak["epochs_run"] == 1
    assert "best/pgd10_eps8" not in weak and "epoch/val/pgd_acc" in weak  # no final numbers; its last epoch's instead
    last = json.loads(Path(strong["out_dir"], "metrics.jsonl").read_text().splitlines()[-1])
    assert strong["epoch/val/pgd_acc"] == pytest.approx(last["val/pgd_acc"])  # a finished trial has its last epoch too
    runs = {r.info.run_name: r for r in _runs(tmp_path / "sweeps" / "asha", "asha") if "orch.trial_key" in r.data.tags}
    assert runs["lr=0.001,seed=0"].info.status == "KILLED" and runs["lr=0.1,seed=0"].info.status == "FINISHED"
    assert "Outcomes" in res.output and "1 stop" in res.output


def test_the_sweep_driver_never_imports_torch(write_sweep, tmp_path) -> None:
    """Issue 14: `orch sweep` runs no tensor in the driver, so it does not import torch (2-10 s and ~600 MB a
    command): GPUs are counted as Ray counts them, the generated and embedded datasets are not checked through
    torch, and nothing a worker reports unpickles into a torch object (its torch version was a TorchVersion).
    A real sweep in its own process, with an import hook that refuses torch in the driver only (its Ray workers
    inherit the environment with the hook switched off)."""
    import os
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('ORCH_TEST_NO_TORCH') == 'driver':\n"
        "    os.environ['ORCH_TEST_NO_TORCH'] = 'worker'  # what the workers Ray starts from here inherit\n"
        "    class _Refuse:  # an import of torch, not importlib.util.find_spec (which only locates it)\n"
        "        def find_spec(self, name, path=None, target=None):\n"
        "            if name == 'torch' or name.startswith('torch.'):\n"
        "                f = sys._getframe(1)\n"
        "                while f is not None and f.f_globals.get('__name__') != 'importlib.util':\n"
        "                    f = f.f_back\n"
        "                if f is None:\n"
        "                    raise ImportError('torch imported in the sweep driver')\n"
        "    sys.meta_path.insert(0, _Refuse())\n")
    f = write_sweep("no-torch", axes={"method.k": [1]}, seeds=2)
    env = {**os.environ, "ORCH_TEST_NO_TORCH": "driver", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parents[2])])])}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(f), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "torch imported in the sweep driver" not in r.stdout + r.stderr
    rows, _ = read_rows(tmp_path / "d" / "sweeps" / "no-torch" / "results.parquet")
    assert sorted(r["status"] for r in rows) == ["finished", "finished"]
