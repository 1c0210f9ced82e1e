"""Runs a validated sweep on Ray Tune: ``run_sweep(spec, sweep_dir=..., ...) -> SweepResult``.

With ``trainable.py``, the only module that imports Ray. What it sets up, and why (stack.md is the evidence):

- **Environment** (:data:`DRIVER_ENV`): ``TUNE_GLOBAL_CHECKPOINT_S=1`` (the experiment snapshot lags by up to
  10 s otherwise; restoring an Optuna search from a stale snapshot crashes, Q4); ``RAY_AUTH_MODE=disabled`` for
  the local cluster (Q7); ``RAY_AIR_NEW_OUTPUT=0`` + ``verbose=0`` (we draw our own live view, Q7);
  ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` (no CSV/JSON/TensorBoard copies of every result, Q7);
  ``RAY_CHDIR_TO_TRIAL_DIR=0`` (all our paths are absolute anyway, Q7); ``TUNE_DISABLE_STRICT_METRIC_CHECKING=1``
  because a sweep's metric may exist only in the final record (``best/pgd10@8``) — ``orch`` checks before the
  start that every trial produces it, which is stricter than Tune's per-result check.
- **Search**: grid and random sweeps are a ``grid_search`` over the trial list made by ``spec.py`` (so the dry
  run lists exactly what runs, and random points are paired across seeds); Optuna runs through
  :class:`SafeOptunaSearch` (module-level, so Tune can pickle it; seeded TPE; ``RDBStorage`` in the sweep
  folder; the study is named after the sweep, so an interrupted search continues).
- **Scheduler**: FIFO, or ASHA on ``epoch`` (the trials' own epoch counter, which survives retries, unlike
  ``training_iteration``), with ``stop_last_trials=False`` so a trial that survives every rung reaches its final
  evaluation; trials ASHA cuts end with status/outcome ``stopped`` and their last epoch's numbers.
- **Checkpoints**: every report carries one; ``CheckpointConfig(num_to_keep=2)`` (Tune forces a snapshot when a
  trial has written ``num_to_keep`` checkpoints since the last one, so the snapshot never points to a deleted
  one); ``FailureConfig(max_failures)`` retries a crashed trial from its latest checkpoint.
- **Callbacks**: Tune pickles the run config into ``tuner.pkl`` and ``Tuner.restore`` unpickles it, callbacks
  included. We pass a :class:`_CallbackProxy` that pickles to its key (the sweep folder) only and forwards every
  hook to the handler registered for that key in *this* process, so a resumed sweep logs with this invocation's
  MLflow parent run and live view, not with a stale copy.
- **Resume**: ``Tuner.restore(..., resume_unfinished=True, resume_errored=True)``: finished trials are not run
  again; errored and interrupted ones continue from their last checkpoint. Optuna trials a killed driver left
  RUNNING are marked FAIL at the end (stack.md Q4).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DRIVER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
}
MLFLOW_WAIT_ENV = "ORCH_MLFLOW_WAIT_S"  # at the end of a sweep, how long to wait for an unreachable MLflow (default 60)
# what trial workers need from the environment (passed through the runtime env of a cluster we start)
WORKER_ENV = {k: DRIVER_ENV[k] for k in ("RAY_CHDIR_TO_TRIAL_DIR", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS")}


def configure_env(local: bool) -> None:
    """Set the driver environment before Ray is imported (an explicit user setting wins)."""
    for k, v in DRIVER_ENV.items():
        if k == "RAY_AUTH_MODE" and not local:
            continue  # a cluster started with `ray start` may need RAY_AUTH_MODE=token from the user
        os.environ.setdefault(k, v)


# before `import ray` (some are read at import). RAY_AUTH_MODE is read at ray.init and only set by run_sweep for a
# local cluster: with --address, Ray's own rule applies (token auth when a token, e.g. RAY_AUTH_TOKEN, is present)
configure_env(local=False)

import logging  # noqa: E402

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from orchestrator.live import LiveView  # noqa: E402
from orchestrator.results import ResultsFile, trial_row  # noqa: E402
from orchestrator.spec import EPOCH_METRICS, SweepSpec, trial_key  # noqa: E402
from orchestrator.timing import emit, span  # noqa: E402
from orchestrator.space import optuna_space, trial_name  # noqa: E402
from orchestrator.trainable import CRASH_ONCE_ENV, ERROR_KEY, TrialContext, run_config_dict, train_trial, trial_dir  # noqa: E402

log = logging.getLogger("orch.tuner")
# our live view and summary say what matters; these loggers repeat it (or warn about the result.json /
# progress.csv files that TUNE_DISABLE_AUTO_CALLBACK_LOGGERS deliberately drops)
for _lg, _lvl in (("ray.tune", logging.WARNING), ("ray.tune.analysis.experiment_analysis", logging.ERROR),
                  ("ray.tune.tune", logging.WARNING), ("alembic", logging.WARNING),
                  # a trial's traceback: kept in its error file, the results row and the MLflow run; the live
                  # view prints its last line (and the retry)
                  ("ray.tune.execution.tune_controller", logging.CRITICAL)):
    logging.getLogger(_lg).setLevel(_lvl)


class _NoRayResumeHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" after an interrupt: orch prints its own resume command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoRayResumeHint())
EXPERIMENT = "ray"  # <sweep>/ray/ is Tune's experiment folder


# ============================================================================================ Optuna


class SafeOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives restores and runs every suggested config with every seed.

    - Seeds: each config TPE suggests is handed out ``len(seeds)`` times (one Tune trial per seed); Optuna is told
      the mean over seeds once all of them completed. Tune's ``Repeater`` does the same but does not save its
      groups, so a restored search loses them (``Repeater.save`` only saves the inner searcher).
    - Restores: results for an Optuna trial that is already finished (a stale snapshot replays them) are ignored
      instead of crashing ``fit()`` with ``UpdateFinishedTrialError`` (stack.md Q4).
    - Metrics that only the final record has (``best/pgd10@8``) are skipped in ``on_trial_result``. An epoch
      metric (``val/pgd_acc``, the one ASHA needs) is not in the final record: a trial that finished is scored with
      its last epoch's value (it was told FAIL, for want of a value, before).
    - A config a scheduler stopped early (ASHA) is told PRUNED, not COMPLETE: TPE then ranks it by its last
      intermediate value and step, instead of taking a 3-epoch accuracy for a finished one.
    The group state lives in ``__dict__``, which ``OptunaSearch.save``/``restore`` pickle whole.
    """

    def __init__(self, *, sweep_name: str, seeds: list[int], **kw: Any) -> None:
        super().__init__(**kw)
        self._orch_sweep = sweep_name
        self._orch_seeds = list(seeds)
        self._orch_groups: dict[str, dict[str, Any]] = {}  # primary tune trial id -> group
        self._orch_member: dict[str, str] = {}  # tune trial id -> primary id
        self._orch_open: str | None = None
        self._orch_last: dict[str, float] = {}  # tune trial id -> last epoch value of the metric

    def suggest(self, trial_id: str) -> dict | None:
        g = self._orch_groups.get(self._orch_open) if self._orch_open else None
        if g is None or len(g["members"]) >= len(self._orch_seeds):
            params = super().suggest(trial_id)
            if params is None or params == Searcher.FINISHED:
                return params
            number = self._ot_trials[trial_id].number
            g = {"params": params, "number": number, "members": {}, "scores": {}, "told": False}
            self._orch_groups[trial_id] = g
            self._orch_open = trial_id
        primary = self._orch_open
        seed = self._orch_seeds[len(g["members"])]
        g["members"][trial_id] = seed
        self._orch_member[trial_id] = primary
        swept = dict(g["params"])
        return {"trial": {
            "swept": swept, "seed": seed, "name": trial_name(swept, seed, prefix=f"t{g['number']}:"),
            "key": trial_key(self._orch_sweep, swept, seed, extra=("optuna", g["number"])),
        }}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        if self.metric in result and not result.get("final") and isinstance(result[self.metric], (int, float)):
            self.__dict__.setdefault("_orch_last", {})[trial_id] = float(result[self.metric])
        primary = self._orch_member.get(trial_id)
        if primary != trial_id or self.metric not in result or "epoch" not in result:
            return  # intermediate values: the first seed's, at epoch steps
        g = self._orch_groups[primary]
        if g["told"]:
            return
        try:
            self._ot_trials[primary].report(float(result[self.metric]), int(result["epoch"]))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, KeyError) as e:
            log.debug("ignored Optuna report for %s: %s", trial_id, e)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        primary = self._orch_member.get(trial_id)
        if primary is None:
            return
        g = self._orch_groups[primary]
        v = None if (error or not result) else result.get(self.metric)
        if v is None and not error:
            v = self.__dict__.get("_orch_last", {}).get(trial_id)  # an epoch metric: the last epoch's value
        g["scores"][trial_id] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        if not error and result and not result.get("final"):
            g["stopped"] = True  # ended by the scheduler before its final record
            # Tune hands the result that made ASHA stop the trial to on_trial_complete only, never to
            # on_trial_result: report it, or Optuna keeps the previous epoch's value for the pruned config
            if primary == trial_id and isinstance(v, (int, float)) and "epoch" in result and not g["told"]:
                try:
                    self._ot_trials[primary].report(float(v), int(result["epoch"]))
                except Exception as e:  # noqa: BLE001 - already reported at that step, or finished after a restore
                    log.debug("ignored Optuna report for %s: %s", trial_id, e)
        if len(g["scores"]) < len(self._orch_seeds) or g["told"]:
            return
        good = [s for s in g["scores"].values() if s is not None]
        from optuna.trial import TrialState

        try:
            if good and g.get("stopped"):
                self._ot_study.tell(self._ot_trials[primary], state=TrialState.PRUNED)
            elif good:
                self._ot_study.tell(self._ot_trials[primary], sum(good) / len(good))
            else:
                self._ot_study.tell(self._ot_trials[primary], state=TrialState.FAIL)
        except Exception as e:  # noqa: BLE001 - already finished after a restore
            log.debug("ignored Optuna tell for %s: %s", primary, e)
        g["told"] = True
        self._completed_trials.add(primary)


def fail_zombie_optuna_trials(storage_url: str, study_name: str) -> int:
    """Mark Optuna trials still RUNNING after a sweep ended as FAIL (a killed driver leaves them, stack.md Q4)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage_url))
    except KeyError:
        return 0
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


# ============================================================================================ callbacks

_HANDLERS: dict[str, tune.Callback] = {}


class _CallbackProxy(tune.Callback):
    """Pickles to its key only; forwards every hook to ``_HANDLERS[key]`` of the current process."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self):
        return (_CallbackProxy, (self.key,))

    def _h(self) -> tune.Callback | None:
        return _HANDLERS.get(self.key)


def _forward(name: str):
    def hook(self, *args: Any, **kw: Any) -> Any:
        h = self._h()
        return getattr(h, name)(*args, **kw) if h is not None else None

    hook.__name__ = name
    return hook


for _name in ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
              "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
              "on_experiment_end"):
    setattr(_CallbackProxy, _name, _forward(_name))


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", trial.config["trial"]["name"])[:80] + "_" + trial.trial_id


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
            cfg = self.resolved_config(t)
            self.info[t["key"]] = _TrialInfo(t["key"], t["name"], self.index.get(t["key"]), t["seed"], epochs=_data_epochs(cfg))
        return self.info[t["key"]]

    def resolved_config(self, t: dict[str, Any]) -> dict[str, Any]:
        if t["key"] not in self._configs:
            from training.config import RunConfig

            out_dir = trial_dir(self.ctx.trials_dir, t["name"], t["key"])
            self._configs[t["key"]] = RunConfig.from_dict(run_config_dict(self.ctx, t, out_dir)).to_dict()
        return self._configs[t["key"]]

    def _run(self, trial: Any, info: _TrialInfo) -> str | None:
        if self.tracker is None:
            return None
        if info.run_id is None:
            from training.config import flatten

            t = trial.config["trial"]
            cfg = self.resolved_config(t)
            tags = {"orch.sweep": self.spec.name, "seed": str(t["seed"]), "orch.tune_trial_id": trial.trial_id,
                    "orch.config_hash": _hash(cfg), **{f"swept.{k}": json.dumps(v) for k, v in t["swept"].items()}}
            info.run_id = self.tracker.trial_run(info.key, info.name, flatten(cfg), tags)
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
                self.tracker.log_epoch(run_id, {k: v for k, v in result.items() if k in EPOCH_METRICS or k == "time/trial_s"}, tags)
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
        cfg = self.resolved_config(t)
        out_dir = trial_dir(self.ctx.trials_dir, t["name"], t["key"])
        run_id = self.tracker.runs.get(t["key"]) if self.tracker is not None else None
        src = Path(checkpoint.path) if checkpoint is not None else out_dir
        epochs = _epoch_rows(src)
        with span("driver/parquet", t["key"]):
            self._upsert(t, trial_id, last, status, error, cfg, run_id, out_dir, epochs, write)
        if self.tracker is not None:
            self.deferred[t["key"]] = (t, src, last, status, error, epochs)
            with span("driver/mlflow_end", t["key"]):
                self.log_deferred()

    def _upsert(self, t: dict[str, Any], trial_id: str, last: dict[str, Any], status: str, error: str | None,
                cfg: dict[str, Any], run_id: str | None, out_dir: Path, epochs: list[dict[str, Any]], write: bool) -> None:
        self.results.upsert(trial_row(
            key=t["key"], name=t["name"], index=self.index.get(t["key"]), seed=t["seed"], status=status, last_result=last,
            config=cfg, error=error, tune_trial_id=trial_id, mlflow_run_id=run_id, out_dir=str(out_dir),
            epoch_record=epochs[-1] if epochs else None,
        ), write=write)

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
            from training.config import flatten

            run_id = self.tracker.trial_run(t["key"], t["name"], flatten(self.resolved_config(t)),
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


def _epoch_rows(src: Path) -> list[dict[str, Any]]:
    p = src / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _data_epochs(cfg: dict[str, Any]) -> int:
    """Epochs run() will yield (``RunConfig.data_epochs``: Free-AT with ``divide_epochs`` makes ceil(epochs / m))."""
    from training.config import RunConfig

    return RunConfig.from_dict(cfg).data_epochs


def _hash(cfg: dict[str, Any]) -> str:
    from training.config import RunConfig

    return RunConfig.from_dict(cfg).hash()


def _error_text(trial: Any) -> str:
    try:
        return Path(trial.error_file).read_text() if trial.error_file else (trial.error_msg or "")
    except (OSError, AttributeError):
        return str(getattr(trial, "error_msg", "") or "error")


def _trial_artifacts(src: Path, tmp: Path, final: dict[str, Any], name: str, epochs: list[dict[str, Any]]) -> list[Path]:
    """Files logged to a trial's MLflow run: the resolved config, the results (with every epoch), the final
    robustness matrix and the curves plot of ``epochs`` (its metrics.jsonl records), written into ``tmp``."""
    from orchestrator.report import plot_trial_curves

    out: list[Path] = []
    for f in ("config.json", "results.json"):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
            out.append(tmp / f)
    matrix = {k: v for k, v in final.items() if k.startswith(("best/", "last/", "seconds/"))}
    if matrix:
        p = tmp / "robustness.json"
        p.write_text(json.dumps(matrix, indent=2))
        out.append(p)
    if epochs:
        p = tmp / "curves.png"
        with span("driver/curves_png"):
            plot_trial_curves(epochs, p, title=name)
        out.append(p)
    return out


# ============================================================================================ the run


@dataclass
class SweepResult:
    sweep_dir: Path
    tracking_uri: str | None
    experiment: str
    parent_run_id: str | None
    wall_s: float
    num_trials: int
    statuses: dict[str, int] = field(default_factory=dict)  # finished / failed / stopped / incomplete
    interrupted: bool = False
    tracking_failures: int = 0  # MLflow calls still undelivered at the end (an outage that outlasted the wait)
    unlogged_trials: list[str] = field(default_factory=list)  # trial keys not in MLflow yet (`--resume` logs them)


def _deliver(tracker: Any, handler: SweepCallback, deadline: float, console: Any) -> None:
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


def _start_ray(address: str | None, cpus: float | None) -> bool:
    """Start (or join) Ray; returns True if this process started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        import orchestrator
        import training

        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env={
            "py_modules": [list(orchestrator.__path__)[0], list(training.__path__)[0]], "env_vars": WORKER_ENV})
    else:
        ray.init(num_cpus=int(cpus) if cpus else None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": WORKER_ENV})
    return True


def cluster_capacity() -> tuple[float, float]:
    r = ray.cluster_resources()
    return float(r.get("CPU", 0)), float(r.get("GPU", 0))


def run_sweep(
    spec: SweepSpec,
    *,
    sweep_dir: Path,
    resume: bool = False,
    address: str | None = None,
    tracking_uri: str | None = None,
    console: Any = None,
    command: str = "",
) -> SweepResult:
    """Run (or resume) a validated sweep; returns where everything is and how the trials ended.

    Args:
        spec: from ``load_spec`` (validated).
        sweep_dir: ``<data_dir>/sweeps/<name>``, absolute; checked by ``spec.check_sweep_dir`` beforehand.
        resume: continue an interrupted sweep in ``sweep_dir``.
        address: an existing Ray cluster (``ray://...`` or ``host:port``); None starts a local one.
        tracking_uri: MLflow URI; None means ``sqlite:///<sweep_dir>/mlflow.db`` (``"none"``: no MLflow).
        console: a rich Console for the live view.
        command: the command line, recorded on the MLflow parent run.
    """
    from rich.console import Console

    from orchestrator import tracking

    configure_env(local=address is None)
    console = console or Console()
    t0 = time.time()
    sweep_dir = Path(sweep_dir).resolve()
    lock = lock_sweep_dir(sweep_dir)
    for sub in ("trials", "report"):
        (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"digest": spec.digest, "file": spec.file, "profile": spec.profile,
                                                      "name": spec.name, "resolved": spec.resolved}, indent=2, default=str))

    # MLflow start-up (import 2.4 s, a fresh SQLite store 2.9 s: stack.md Q3) overlaps Ray's (~5 s)
    uri = None if tracking_uri == "none" else (tracking_uri or spec.tracking_uri or tracking.default_uri(sweep_dir))
    holder: dict[str, Any] = {}

    def start_tracking() -> None:
        try:
            artifact_root = (sweep_dir / "mlartifacts").as_uri() if uri and uri.startswith("sqlite:") else None
            tr = tracking.Tracker(uri, spec.name, artifact_location=artifact_root)
            tr.start_sweep(
                f"{'resume' if resume else 'sweep'} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                {**tracking.environment_tags(), "orch.command": command[:5000], "orch.invocation": "resume" if resume else "start",
                 "orch.sweep_dir": str(sweep_dir), "orch.profile": str(spec.profile)},
                {"algorithm": spec.search.algorithm, "num_trials": spec.num_trials, "seeds": spec.seeds,
                 "axes": {a.key: a.describe() for a in spec.axes}, "metric": spec.metric, "mode": spec.mode,
                 "scheduler": spec.scheduler.name, "profile": spec.profile, "digest": spec.digest, "resources": spec.resources.model_dump()},
            )
            tr.log_parent_artifact(sweep_dir / "sweep.json")
            holder["tracker"] = tr
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            holder["error"] = e

    th = None
    handler: SweepCallback | None = None
    if uri:
        th = threading.Thread(target=start_tracking, name="orch-mlflow-start", daemon=True)
        th.start()
    own_ray = _start_ray(address, None)
    try:
        cpus, gpus = cluster_capacity()
        if address and (spec.resources.cpu > cpus or spec.resources.gpu > gpus):
            console.print(f"[yellow]warning[/]: each trial asks for {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU; "
                          f"the cluster has {cpus:g} / {gpus:g} now. Trials wait until its autoscaler adds nodes.")
        if th is not None:
            th.join()
            if "error" in holder:
                raise RuntimeError(f"MLflow at {uri} could not be used: {holder['error']}") from holder["error"]
        tracker = holder.get("tracker")
        ctx = TrialContext(spec.name, spec.base, str(sweep_dir / "trials"), crash_once=os.environ.get(CRASH_ONCE_ENV))
        concurrency = spec.max_concurrent_trials or max(1, int(cpus // spec.resources.cpu))
        if spec.resources.gpu:
            concurrency = min(concurrency, max(1, int(gpus // spec.resources.gpu)))
        results = ResultsFile(sweep_dir / "results.parquet", {
            "orch.sweep": spec.name, "orch.swept": json.dumps([a.key for a in spec.axes]),
            "orch.metric": spec.metric or "", "orch.mode": spec.mode, "orch.profile": spec.profile or ""})
        live = LiveView(f"orch sweep {spec.name}", console, concurrency, spec.metric, spec.num_trials)
        handler = SweepCallback(spec, ctx, sweep_dir, tracker, results, live)
        handler_key = str(sweep_dir)  # stable across invocations: a restored proxy finds this handler
        _HANDLERS[handler_key] = handler

        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        exp_dir = sweep_dir / EXPERIMENT
        damaged = _damaged_tune_state(exp_dir) if resume else None
        if damaged and spec.search.algorithm != "optuna":
            # Ray writes its experiment state in place, so a disk that filled up (or a crash mid-write) can leave
            # it truncated; the trial folders and results.parquet are intact. Start a new Tune experiment with
            # the trials not finished yet: each continues from its own folder (trainable: resume rule 2).
            moved = exp_dir.with_name(f"{EXPERIMENT}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            exp_dir.rename(moved)
            console.print(f"[yellow]Ray's experiment state is damaged[/] ({damaged}); kept as {moved.name}. "
                          "Continuing the unfinished trials from their own folders.", highlight=False)
            done = {k for k, r in results.rows.items() if r.get("status") == "finished"}
            left = [t for t in spec.trials if t.key not in done]
            tuner = _new_tuner(spec, sweep_dir, trainable, handler_key, concurrency, skip=done) if left else None
        elif damaged:
            raise RuntimeError(f"Ray's experiment state in {exp_dir} is damaged ({damaged}); an Optuna search cannot be "
                               "continued without it. Its finished trials are in results.parquet and optuna.db.")
        elif resume and tune.Tuner.can_restore(str(exp_dir)):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = _new_tuner(spec, sweep_dir, trainable, handler_key, concurrency)
        with live:
            grid = tuner.fit() if tuner is not None else []
        results.flush()
        _reconcile(spec, handler, grid, results)
        if spec.search.algorithm == "optuna":
            fail_zombie_optuna_trials(_optuna_url(sweep_dir, spec), spec.name)
        counts: dict[str, int] = {}
        for r in results.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        incomplete = spec.num_trials - sum(counts.values())
        if incomplete > 0:
            counts["incomplete"] = incomplete
        interrupted = any(s not in ("TERMINATED", "ERROR") for s in handler.statuses.values()) or incomplete > 0
        wall = time.time() - t0
        if tracker is not None:
            deadline = time.time() + float(os.environ.get(MLFLOW_WAIT_ENV, "60"))
            _deliver(tracker, handler, deadline, console)
            tracker.close_unfinished({k for k in handler.info if k not in results.rows})
            tracker.end_sweep("KILLED" if interrupted else ("FAILED" if counts.get("failed") else "FINISHED"),
                              {"trials_finished": counts.get("finished", 0), "trials_failed": counts.get("failed", 0), "wall_s": wall})
            _deliver(tracker, handler, deadline, console)
        return SweepResult(sweep_dir, uri, spec.name, tracker.parent_id if tracker else None, wall, spec.num_trials,
                           counts, interrupted, len(tracker.pending) if tracker else 0, sorted(handler.deferred))
    finally:
        if handler is not None:  # an interrupted sweep keeps every row it has
            try:
                handler.results.flush()
            except OSError as e:  # a full disk: the error that stopped the sweep is the one to report
                log.warning("could not write %s: %s", handler.results.path, e)
        _HANDLERS.pop(str(sweep_dir), None)
        if own_ray:
            ray.shutdown()
        lock.close()


def lock_sweep_dir(sweep_dir: Path):
    """Hold ``<sweep>/.lock`` (flock) for the whole invocation: a second driver on the same sweep is refused
    (exit 2) instead of running every trial twice into the same folders and MLflow runs."""
    import fcntl

    from orchestrator.spec import SpecError, SpecErrors

    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(sweep_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise SpecErrors([SpecError(str(sweep_dir), "sweep folder", holder or "?", "another `orch sweep` is running this sweep right now (pid above); wait for it or stop it")]) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def _optuna_url(sweep_dir: Path, spec: SweepSpec) -> str:
    return spec.search.storage or f"sqlite:///{sweep_dir}/optuna.db"


def optuna_storage(url: str) -> Any:
    """An RDBStorage for ``url``. SQLite shared by several drivers: a 60 s busy timeout (writers queue instead of
    failing with "database is locked"), and the first connection (which may create the schema while another
    process does the same) retried."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    from orchestrator.tracking import sqlite_init_lock

    for attempt in range(5):
        try:
            with sqlite_init_lock(url):  # creating the schema: one process at a time
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception:  # noqa: BLE001 - sqlalchemy OperationalError / IntegrityError while another creates the schema
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)


def _damaged_tune_state(exp_dir: Path) -> str | None:
    """Why Tune's saved state in ``exp_dir`` cannot be trusted (a file that does not parse), or None."""
    import pickle

    for f in sorted(exp_dir.glob("experiment_state-*.json")):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError) as e:
            return f"{f.name}: {e}"
    for f in sorted(exp_dir.glob("basic-variant-state-*.json")):
        try:
            pickle.loads(f.read_bytes())
        except Exception as e:  # noqa: BLE001 - truncated pickles raise EOFError, UnpicklingError, ...
            return f"{f.name}: {type(e).__name__}: {e}"
    return None


def startup_trials(num_samples: int | None) -> int:
    """Random configs before TPE models the results: a third of the budget, at least 2, at most Optuna's 10."""
    return max(2, min(10, (num_samples or 0) // 3))


def _new_tuner(spec: SweepSpec, sweep_dir: Path, trainable: Any, handler_key: str, concurrency: int,
               skip: set[str] = frozenset()) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search_alg = None
    num_samples = 1
    param_space: dict[str, Any] = {}
    if spec.search.algorithm == "optuna":
        import optuna

        storage = optuna_storage(_optuna_url(sweep_dir, spec))
        search_alg = SafeOptunaSearch(
            sweep_name=spec.name, seeds=spec.seeds, space=optuna_space(spec.axes), metric=spec.metric, mode=spec.mode,
            # TPE samples at random until n_startup_trials configs are COMPLETE (default 10): a 12-config search
            # would be a random search. A third of the budget, between 2 and 10, leaves TPE most of it.
            sampler=optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup_trials(spec.search.num_samples)),
            storage=storage, study_name=spec.name,
        )
        num_samples = spec.num_trials
    else:
        param_space = {"trial": tune.grid_search([t.tune_config for t in spec.trials if t.key not in skip])}
    if spec.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=spec.metric, mode=spec.mode, max_t=spec.scheduler.max_t,
                                  grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
                                  # ASHA would STOP a trial at max_t, one step before its final record (the
                                  # robustness evaluation); a trial that gets there finishes on its own
                                  stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent_trials or concurrency, reuse_actors=True,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=str(sweep_dir), verbose=0, callbacks=[_CallbackProxy(handler_key)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _reconcile(spec: SweepSpec, handler: SweepCallback, grid: Any, results: ResultsFile) -> None:
    """Make results.parquet and MLflow agree with Tune's final state: a driver killed between a trial's end and
    its logging leaves a finished trial without a row (and its MLflow run RUNNING); this invocation's callback
    never sees that trial end, because Tune does not run it again."""
    changed = False
    for r in grid:
        t = (r.config or {}).get("trial")
        if not t:
            continue
        last = r.metrics or {}
        status = "failed" if (r.error is not None or last.get(ERROR_KEY)) else ("finished" if last.get("final") else None)
        row = results.rows.get(t["key"])
        logged = (handler.tracker is None or t["key"] in handler.deferred
                  or handler.tracker.finished_with(t["key"], "FAILED" if status == "failed" else "FINISHED"))
        if status is None or (row is not None and row.get("status") == status and logged):
            continue
        handler.record(t, last.get("trial_id", ""), r.checkpoint, last, status, error=str(r.error) if r.error else last.get(ERROR_KEY), write=False)
        changed = True
    if changed:
        results.write()
