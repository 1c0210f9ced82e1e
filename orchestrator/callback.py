"""The driver's side of every trial, as a Tune callback: MLflow logging (with the queue that rides out an
outage), ``results.parquet`` rows, and the live view.

Tune pickles the run config into ``tuner.pkl`` and ``Tuner.restore`` unpickles it, callbacks included. The sweep
passes a :class:`CallbackProxy` that pickles to its key (the sweep folder) only and forwards every hook to the
:class:`SweepCallback` registered for that key in *this* process, so a resumed sweep logs with this invocation's
MLflow parent run and live view, not with a stale copy.

Each trial's RunConfig is built once here (from the sweep's base, its swept values and seed) and kept for its
MLflow params, its epoch count and its results row. A trial's ``curves.png`` is drawn by its worker (trainable);
the driver draws one only for a trial a scheduler stopped before its end (no matplotlib otherwise).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from training import metrics

from orchestrator.live import LiveView
from orchestrator.results import ResultsFile, trial_row
from orchestrator.spec import SweepSpec
from orchestrator.sweepdir import trial_dir
from orchestrator.timing import emit, span
from orchestrator.tracking import PARAMS_WAIT_S
from orchestrator.trainable import CURVES_PNG, ERROR_KEY, TrialContext, run_config_dict
from training.config import RunConfig

MLFLOW_WAIT_ENV = "ORCH_MLFLOW_WAIT_S"  # at the end of a sweep, how long to wait for an unreachable MLflow (default 60)


HANDLERS: dict[str, tune.Callback] = {}


class CallbackProxy(tune.Callback):
    """Pickles to its key only; forwards every hook to ``HANDLERS[key]`` of the current process."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self):
        return (CallbackProxy, (self.key,))

    def _h(self) -> tune.Callback | None:
        return HANDLERS.get(self.key)


def _forward(name: str):
    def hook(self, *args: Any, **kw: Any) -> Any:
        h = self._h()
        return getattr(h, name)(*args, **kw) if h is not None else None

    hook.__name__ = name
    return hook


for _name in ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
              "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
              "on_experiment_end"):
    setattr(CallbackProxy, _name, _forward(_name))


@dataclass
class _TrialInfo:
    key: str
    name: str
    index: int | None
    seed: int
    run_id: str | None = None
    final: dict[str, Any] | None = None
    epochs: int = 0
    last: dict[str, Any] | None = None  # its last result that is not a progress event


class SweepCallback(tune.Callback):
    """Driver-side handler: MLflow logging, results.parquet rows, the live view. Never pickled."""

    def __init__(self, spec: SweepSpec, ctx: TrialContext, sweep_dir: Path, tracker: Any, results: ResultsFile, live: LiveView) -> None:
        self.spec, self.ctx, self.sweep_dir, self.tracker, self.results, self.live = spec, ctx, sweep_dir, tracker, results, live
        self.info: dict[str, _TrialInfo] = {}
        self.index = {t.key: t.index for t in spec.trials}
        self.statuses: dict[str, str] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        # trials that ended and are not in MLflow yet: key -> (trial, checkpoint folder, last result, status, error,
        # its metrics.jsonl records)
        self.deferred: dict[str, tuple[dict[str, Any], Path, dict[str, Any], str, str | None, list[dict[str, Any]]]] = {}

    # ------------------------------------------------------------------ helpers
    def _info(self, trial: Any) -> _TrialInfo:
        t = trial.config["trial"]
        if t["key"] not in self.info:
            self.info[t["key"]] = _TrialInfo(t["key"], t["name"], self.index.get(t["key"]), t["seed"], epochs=self.config(t).data_epochs)
        return self.info[t["key"]]

    def config(self, t: dict[str, Any]) -> Any:
        """The trial's RunConfig, built once per trial (the worker builds its own from the same dict)."""
        if t["key"] not in self._configs:
            out_dir = trial_dir(self.ctx.trials_dir, t["name"], t["key"])
            self._configs[t["key"]] = RunConfig.from_dict(run_config_dict(self.ctx, t, out_dir))
        return self._configs[t["key"]]

    def _run(self, trial: Any, info: _TrialInfo) -> str | None:
        if self.tracker is None:
            return None
        if info.run_id is None:
            t = trial.config["trial"]
            cfg = self.config(t)
            tags = {"orch.sweep": self.spec.name, "seed": str(t["seed"]), "orch.tune_trial_id": trial.trial_id,
                    "orch.config_hash": cfg.hash(), **{f"swept.{k}": json.dumps(v) for k, v in t["swept"].items()}}
            info.run_id = self.tracker.trial_run(info.key, info.name, cfg.to_dict_flat(), tags)
        return info.run_id

    # ------------------------------------------------------------------ hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        i = self._info(trial)
        emit("driver/trial_start", 0.0, i.key)
        with span("driver/mlflow_start", i.key):
            self._run(trial, i)
        with span("driver/live", i.key):
            self.live.started(i.key, i.name, i.epochs)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        i = self._info(trial)
        if result.get("orch/progress"):  # final-evaluation progress (trainable._eval_reporter): the live view only
            self.live.result(i.key, i.name, i.epochs, result)
            return
        i.last = dict(result)
        with span("driver/mlflow_epoch", i.key):
            self._log_result(trial, i, result)
        if result.get("final"):
            i.final = dict(result)
        with span("driver/live", i.key):
            self.live.result(i.key, i.name, i.epochs, result)

    def _log_result(self, trial: Any, i: _TrialInfo, result: dict) -> None:
        run_id = self._run(trial, i)
        if run_id is not None:
            tags = None if run_id in self.tracker.tagged else {
                "host": result.get("orch/host"), "torch": result.get("orch/torch"), "cuda": result.get("orch/cuda"),
                "orch.out_dir": result.get("orch/out_dir"), "orch.config_hash": result.get("orch/config_hash"),
            }
            if not result.get("final"):  # the worker's tags go with the first epoch: one log_batch
                self.tracker.log_epoch(run_id, {k: v for k, v in result.items() if metrics.is_epoch_metric(k) or k == "time/trial_s"}, tags)
            elif tags:
                self.tracker.set_tags(run_id, tags, once=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        i = self._info(trial)
        last = i.final or i.last or trial.last_result or {}
        if last.get(ERROR_KEY):  # ended by an error a retry would repeat (trainable.DETERMINISTIC): failed, not retried
            self.record(trial.config["trial"], trial.trial_id, trial.checkpoint, last, "failed", error=last[ERROR_KEY])
            self.live.finished(i.key, i.name, "failed", last[ERROR_KEY])
            return
        status = "finished" if last.get("final") else "stopped"
        self.record(trial.config["trial"], trial.trial_id, trial.checkpoint, last, status)
        with span("driver/live", i.key):
            self.live.finished(i.key, i.name, "done" if status == "finished" else "stopped")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        i = self._info(trial)
        self.live.error(i.key, i.name, _error_text(trial), will_retry=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        i = self._info(trial)
        err = _error_text(trial)
        self.record(trial.config["trial"], trial.trial_id, trial.checkpoint, i.last or trial.last_result or {}, "failed", error=err)
        self.live.finished(i.key, i.name, "failed", err)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.results.dirty:
            with span("driver/parquet"):
                self.results.flush(force=False)
        if self.tracker is not None and self.tracker.unsent:
            self.tracker.send_params(older_than=PARAMS_WAIT_S)
        if self.tracker is not None and (self.tracker.pending or self.deferred):
            if not self.tracker.flush() and self.deferred:
                with span("driver/mlflow_end"):  # trial ends held back by an MLflow outage
                    self.log_deferred()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for t in trials:
            self.statuses[t.config["trial"]["key"]] = t.status

    # ------------------------------------------------------------------ results and MLflow at a trial's end
    def record(self, t: dict[str, Any], trial_id: str, checkpoint: Any, last: dict[str, Any], status: str,
               error: str | None = None, write: bool = True) -> None:
        """A trial ended: its results row, then its MLflow final numbers, artifacts and status."""
        cfg = self.config(t)
        out_dir = trial_dir(self.ctx.trials_dir, t["name"], t["key"])
        run_id = self.tracker.runs.get(t["key"]) if self.tracker is not None else None
        # a finished trial's folder holds its results (its final record has no checkpoint); another's is reset to
        # its last checkpoint by any retry, so that is what Tune, MLflow and the results know of it
        src = Path(checkpoint.path) if checkpoint is not None and status != "finished" else out_dir
        epochs = metrics.read_epochs(src)
        with span("driver/parquet", t["key"]):
            self._upsert(t, trial_id, last, status, error, cfg, run_id, out_dir, epochs, write)
        if self.tracker is not None:
            self.deferred[t["key"]] = (t, src, last, status, error, epochs)
            with span("driver/mlflow_end", t["key"]):
                self.log_deferred()

    def _upsert(self, t: dict[str, Any], trial_id: str, last: dict[str, Any], status: str, error: str | None,
                cfg: Any, run_id: str | None, out_dir: Path, epochs: list[dict[str, Any]], write: bool) -> None:
        self.results.upsert(trial_row(
            key=t["key"], name=t["name"], index=self.index.get(t["key"]), seed=t["seed"], status=status, last_result=last,
            config=cfg.to_dict(), error=error, tune_trial_id=trial_id, mlflow_run_id=run_id, out_dir=str(out_dir), swept=t["swept"],
            epoch_record=epochs[-1] if epochs else None,
        ), write=write)

    def reconcile(self, grid: Any) -> None:
        """Make results.parquet and MLflow agree with Tune's final state: a driver killed between a trial's end
        and its logging leaves a finished trial without a row (and its MLflow run RUNNING); this invocation's
        callback never sees that trial end, because Tune does not run it again."""
        changed = False
        for r in grid:
            t = (r.config or {}).get("trial")
            if not t:
                continue
            last = r.metrics or {}
            status = "failed" if (r.error is not None or last.get(ERROR_KEY)) else ("finished" if last.get("final") else None)
            row = self.results.rows.get(t["key"])
            logged = (self.tracker is None or t["key"] in self.deferred
                      or self.tracker.finished_with(t["key"], "FAILED" if status == "failed" else "FINISHED"))
            if status is None or (row is not None and row.get("status") == status and logged):
                continue
            self.record(t, last.get("trial_id", ""), r.checkpoint, last, status, error=str(r.error) if r.error else last.get(ERROR_KEY), write=False)
            changed = True
        if changed:
            self.results.write()

    def log_deferred(self) -> None:
        """Log the trials that ended but are not yet in MLflow (all of them, unless the store is unreachable:
        then they wait here for the next try). A run created late gets its id into results.parquet too."""
        for key in list(self.deferred):
            t, src, last, status, error, epochs = self.deferred[key]
            had_run = key in self.tracker.runs
            if self._log_end(t, src, last, status, error, epochs):
                del self.deferred[key]
                if not had_run and key in self.results.rows:
                    self.results.rows[key]["mlflow_run_id"] = self.tracker.runs[key]
                    self.results.dirty = True
                    self.results.flush(force=False)
            else:
                break  # the store is down: keep the order, try again at the next step

    def _log_end(self, t: dict[str, Any], src: Path, last: dict[str, Any], status: str, error: str | None,
                 epochs: list[dict[str, Any]]) -> bool:
        """MLflow side of a trial's end; False if its run cannot be created now (nothing was sent)."""
        run_id = self.tracker.runs.get(t["key"])
        if run_id is None:  # its start was never logged here (outage, reconcile after a driver died)
            run_id = self.tracker.trial_run(t["key"], t["name"], self.config(t).to_dict_flat(),
                                            {"orch.sweep": self.spec.name, "seed": str(t["seed"]),
                                             **{f"swept.{k}": json.dumps(v) for k, v in t["swept"].items()}})
            if run_id is None:
                return False
        if status == "failed":
            self.tracker.fail_trial(run_id, error or "")
            return True
        for rec in epochs:  # epochs this driver never sent (outage, reconcile, replay); skipped when logged
            self.tracker.log_epoch(run_id, rec)
        out_dir = trial_dir(self.ctx.trials_dir, t["name"], t["key"])
        art = out_dir / "mlflow"  # kept (not a temp folder): a queued upload still finds its files
        art.mkdir(exist_ok=True)
        artifacts = _trial_artifacts(src, art, last, t["name"], epochs)
        final = last if last.get("final") else {"outcome": "stopped"}
        step = int(last.get("epochs_run") or last.get("epoch") or 0)
        self.tracker.log_final(run_id, {k: v for k, v in final.items() if not k.startswith("orch/")}, step, artifacts,
                               "FINISHED" if status == "finished" else "KILLED")
        return True


def _error_text(trial: Any) -> str:
    try:
        return Path(trial.error_file).read_text() if trial.error_file else (trial.error_msg or "")
    except (OSError, AttributeError):
        return str(getattr(trial, "error_msg", "") or "error")


def _trial_artifacts(src: Path, tmp: Path, final: dict[str, Any], name: str, epochs: list[dict[str, Any]]) -> list[Path]:
    """Files logged to a trial's MLflow run: the resolved config, the results (with every epoch), the final
    robustness matrix and the curves plot of ``epochs`` (its metrics.jsonl records), written into ``tmp``. The
    plot is the one its worker drew at the trial's end; the driver draws it only for a trial stopped before. A
    trial of one epoch has no curves to draw (its numbers are the run's metrics), so no plot."""
    out: list[Path] = []
    for f in (metrics.CONFIG_FILE, metrics.RESULTS_FILE, CURVES_PNG):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
            out.append(tmp / f)
    matrix = {k: v for k, v in final.items() if k.startswith(metrics.MATRIX_PREFIXES)}
    if matrix:
        p = tmp / "robustness.json"
        p.write_text(json.dumps(matrix, indent=2))
        out.append(p)
    if len(epochs) >= 2 and not (tmp / CURVES_PNG).exists():
        from orchestrator.figures import plot_trial_curves

        with span("driver/curves_png"):
            plot_trial_curves(epochs, tmp / CURVES_PNG, title=name)
        out.append(tmp / CURVES_PNG)
    return out


def deliver(tracker: Any, handler: SweepCallback, deadline: float, console: Any) -> None:
    """Deliver what an MLflow outage held back (queued calls, then trials that ended during it), retrying until
    ``deadline``; what is still undelivered then is reported by the caller."""
    told = False
    while True:
        left = tracker.flush(force=True)
        if not left and handler.deferred:
            handler.log_deferred()
            left = tracker.flush(force=True)
        if not left and not handler.deferred:
            return
        if not told:
            console.print(f"[yellow]MLflow at {tracker.uri} does not answer[/]: {left} calls and {len(handler.deferred)} trials "
                          f"wait to be logged; retrying until {time.strftime('%H:%M:%S', time.localtime(deadline))} "
                          f"({MLFLOW_WAIT_ENV} sets how long)", highlight=False)
            told = True
        if time.time() >= deadline:
            return
        time.sleep(min(2.0, max(0.0, deadline - time.time())))
