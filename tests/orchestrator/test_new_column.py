"""Issue 13: a new evaluation column is its attack preset plus one line of training/metrics.py, and nothing else.

The check runs in a fresh interpreter that registers the column (``pgd5``: PGD with 5 steps, labelled "PGD-5")
the way a contributor would, before anything else is imported, and then follows it through every place a user
sees it: the config accepts it, ``training.run`` evaluates it, the results.parquet row has it, MLflow has it
under the same name, and the report's table has a "PGD-5" column with its number.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    # --- the contributor's two edits: the attack's preset and its line in the run schema
    from training import metrics
    from training.attacks.presets import EVAL_PRESETS
    EVAL_PRESETS["pgd5"] = ("pgd", {"steps": 5, "alpha_rel": 0.25, "restarts": 1, "loss": "ce", "random_start": True})
    metrics.COLUMNS["pgd5"] = ("PGD-5", True)

    # --- nothing else changes below: a run, its results row, its MLflow run, the report
    import mlflow
    from training.config import RunConfig
    from training.loop import train
    from orchestrator.results import ResultsFile, trial_row
    from orchestrator.tracking import Tracker, is_final_metric
    from orchestrator.report import make_report

    out = Path(sys.argv[1])
    cfg = RunConfig.from_dict({
        "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "val_size": 16, "image_size": 8},
        "model": {"name": "small_cnn", "width": 4}, "method": {"name": "standard"}, "epochs": 1, "batch_size": 32,
        "threat": {"eps_255": 8}, "eval": {"attacks": ["clean", "pgd5"], "checkpoints": ["last"], "batch_size": 32},
        "device": "cpu", "name": "t", "out_dir": str(out / "trials" / "t"),
    })
    final = train(cfg)
    assert "last/pgd5_eps8" in final, sorted(final)
    assert "last/pgd5_eps8" in metrics.final_keys(cfg)  # what `metric:` validation accepts

    res = ResultsFile(out / "results.parquet", {"orch.sweep": "s", "orch.swept": "[]", "orch.metric": "last/pgd5_eps8"})
    res.upsert(trial_row(key="k", name="t", index=0, seed=0, status="finished", last_result=final,
                         config=cfg.to_dict(), out_dir=str(out / "trials" / "t")))
    res.flush()

    tr = Tracker(f"sqlite:///{out}/mlflow.db", "s")
    tr.start_sweep("s", {}, {})
    run = tr.trial_run("k", "t", cfg.to_dict_flat(), {})
    tr.log_final(run, {k: v for k, v in final.items() if is_final_metric(k) or k == "final"}, 1, [], "FINISHED")
    tr.flush(force=True)
    logged = mlflow.tracking.MlflowClient(f"sqlite:///{out}/mlflow.db").get_run(run).data.metrics

    make_report(out, plots=False)
    md = (out / "report" / "table.md").read_text()
    print(json.dumps({"final": final["last/pgd5_eps8"], "mlflow": logged.get("last/pgd5_eps8"), "md": md}))
''')


def test_a_new_registered_column_reaches_parquet_mlflow_and_the_report(tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq

    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    row = pq.read_table(tmp_path / "results.parquet").to_pylist()[0]
    assert row["last/pgd5_eps8"] == got["final"]  # Parquet: the same name and number
    assert got["mlflow"] == got["final"]  # MLflow: the same name and number
    header = next(line for line in got["md"].splitlines() if "PGD-5" in line)  # the report: a labelled column
    assert "PGD-5" in header and f"{100 * got['final']:.2f}"[:4] in got["md"], got["md"]
