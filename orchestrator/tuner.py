"""Runs a validated sweep on Ray Tune: ``run_sweep(spec, sweep_dir=..., ...) -> SweepResult``.

The driver's roles live in their own modules: the sweep folder (``sweepdir.py``), the search algorithms and
their searchers (``search.py``, ``repeater.py``), the per-trial callback with MLflow and results.parquet
(``callback.py``), the worker's side (``trainable.py``). This module sets Ray up and runs the tuner. What it
sets, and why (stack.md is the evidence):

- **Environment** (:data:`DRIVER_ENV`): ``TUNE_GLOBAL_CHECKPOINT_S=1`` (the experiment snapshot lags by up to
  10 s otherwise; restoring an Optuna search from a stale snapshot crashes, Q4); ``RAY_AUTH_MODE=disabled`` for
  the local cluster (Q7); ``RAY_AIR_NEW_OUTPUT=0`` + ``verbose=0`` (we draw our own live view, Q7);
  ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` (no CSV/JSON/TensorBoard copies of every result, Q7);
  ``RAY_CHDIR_TO_TRIAL_DIR=0`` (all our paths are absolute anyway, Q7); ``TUNE_DISABLE_STRICT_METRIC_CHECKING=1``
  because a sweep's metric may exist only in the final record (``best/pgd10_eps8``) — ``orch`` checks before the
  start that every trial produces it, which is stricter than Tune's per-result check.
- **Scheduler**: FIFO, or ASHA on ``epoch`` (the trials' own epoch counter, which survives retries, unlike
  ``training_iteration``), with ``stop_last_trials=False`` so a trial that survives every rung reaches its final
  evaluation; trials ASHA cuts end with status/outcome ``stopped`` and their last epoch's numbers.
- **Checkpoints**: every epoch's report carries one (the final record none: trainable.py);
  ``CheckpointConfig(num_to_keep=2)`` (Tune forces a snapshot when a
  trial has written ``num_to_keep`` checkpoints since the last one, so the snapshot never points to a deleted
  one); ``FailureConfig(max_failures)`` retries a crashed trial from its latest checkpoint.
- **Resume**: ``Tuner.restore(..., resume_unfinished=True, resume_errored=True)``: finished trials are not run
  again; errored and interrupted ones continue from their last checkpoint. Optuna trials a killed driver left
  RUNNING are marked FAIL at the end (stack.md Q4). A damaged Tune state (a full disk) starts a new experiment
  with the unfinished trials, each from its own folder.
"""
from __future__ import annotations

import json
import os
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

from orchestrator import sweepdir  # noqa: E402
from orchestrator.callback import HANDLERS, MLFLOW_WAIT_ENV, CallbackProxy, SweepCallback, deliver  # noqa: E402
from orchestrator.live import LiveView  # noqa: E402
from orchestrator.results import ResultsFile  # noqa: E402
from orchestrator.search import ALGORITHMS, fail_zombie_optuna_trials, tune_search  # noqa: E402
from orchestrator.spec import SweepSpec  # noqa: E402
from orchestrator.timing import span  # noqa: E402
from orchestrator.tracking import checkpoint_wal  # noqa: E402
from orchestrator.trainable import CRASH_ONCE_ENV, TrialContext, train_trial  # noqa: E402

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


def run_sweep(spec: SweepSpec, *, sweep_dir: Path, resume: bool = False, address: str | None = None,
              tracking_uri: str | None = None, console: Any = None, command: str = "") -> SweepResult:
    """Run (or resume) a validated sweep; returns where everything is and how the trials ended.

    Args:
        spec: from ``load_spec`` (validated).
        sweep_dir: ``<data_dir>/sweeps/<name>``, absolute; checked by ``sweepdir.check_sweep_dir`` beforehand.
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
    lock = sweepdir.lock_sweep_dir(sweep_dir)
    sweepdir.prepare(spec, sweep_dir)
    uri = None if tracking_uri == "none" else (tracking_uri or spec.tracking_uri or tracking.default_uri(sweep_dir))
    # MLflow start-up (import 2.4 s, a fresh SQLite store 2.9 s: stack.md Q3) overlaps Ray's (~5 s)
    mlflow_start = _Background(lambda: tracking.sweep_tracker(spec, sweep_dir, uri, resume, command)) if uri else None
    handler: SweepCallback | None = None
    with span("driver/ray_start"):
        own_ray = _start_ray(address)
    try:
        cpus, gpus = cluster_capacity()
        if address and (spec.resources.cpu > cpus or spec.resources.gpu > gpus):
            console.print(f"[yellow]warning[/]: each trial asks for {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU; "
                          f"the cluster has {cpus:g} / {gpus:g} now. Trials wait until its autoscaler adds nodes.")
        with span("driver/mlflow_wait"):  # what is left of MLflow's start-up once Ray is up
            tracker = mlflow_start.result(f"MLflow at {uri} could not be used") if mlflow_start else None
        concurrency = spec.max_concurrent_trials or max(1, int(cpus // spec.resources.cpu))
        if spec.resources.gpu:
            concurrency = min(concurrency, max(1, int(gpus // spec.resources.gpu)))
        results = ResultsFile(sweep_dir / sweepdir.RESULTS, {
            "orch.sweep": spec.name, "orch.swept": json.dumps([a.key for a in spec.axes]),
            "orch.metric": spec.metric or "", "orch.mode": spec.mode, "orch.profile": spec.profile or ""})
        ctx = TrialContext(spec.name, spec.base, str(sweep_dir / "trials"), crash_once=os.environ.get(CRASH_ONCE_ENV))
        live = LiveView(f"orch sweep {spec.name}", console, concurrency, spec.metric, spec.num_trials)
        handler = HANDLERS[str(sweep_dir)] = SweepCallback(spec, ctx, sweep_dir, tracker, results, live)
        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        tuner = _tuner(spec, sweep_dir, trainable, concurrency, resume, results, console)
        with live, span("driver/fit"):
            grid = tuner.fit() if tuner is not None else []
        results.flush()
        handler.reconcile(grid)
        if not ALGORITHMS[spec.search.algorithm].planned:
            fail_zombie_optuna_trials(sweepdir.optuna_url(sweep_dir, spec), spec.name)
        with span("driver/finish"):
            return _finish(spec, handler, sweep_dir, uri, t0, console)
    finally:
        if handler is not None:  # an interrupted sweep keeps every row it has
            try:
                handler.results.flush()
            except OSError as e:  # a full disk: the error that stopped the sweep is the one to report
                log.warning("could not write %s: %s", handler.results.path, e)
        HANDLERS.pop(str(sweep_dir), None)
        if own_ray:
            with span("driver/ray_shutdown"):
                ray.shutdown()
        lock.close()


class _Background(threading.Thread):
    """``fn()`` in a daemon thread; ``result`` waits for it and raises what it raised."""

    def __init__(self, fn: Any) -> None:
        super().__init__(name="orch-mlflow-start", daemon=True)
        self.fn, self.out = fn, {}
        self.start()

    def run(self) -> None:
        try:
            self.out["value"] = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self.out["error"] = e

    def result(self, what: str) -> Any:
        self.join()
        if "error" in self.out:
            raise RuntimeError(f"{what}: {self.out['error']}") from self.out["error"]
        return self.out.get("value")


def _start_ray(address: str | None) -> bool:
    """Start (or join) Ray; returns True if this process started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        import orchestrator
        import training

        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env={
            "py_modules": [list(orchestrator.__path__)[0], list(training.__path__)[0]], "env_vars": WORKER_ENV})
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, runtime_env={"env_vars": WORKER_ENV})
    return True


def cluster_capacity() -> tuple[float, float]:
    r = ray.cluster_resources()
    return float(r.get("CPU", 0)), float(r.get("GPU", 0))


def _tuner(spec: SweepSpec, sweep_dir: Path, trainable: Any, concurrency: int, resume: bool, results: ResultsFile,
           console: Any) -> tune.Tuner | None:
    """A new tuner; on ``--resume`` the restored one. Ray writes its experiment state in place, so a disk that
    filled up (or a crash mid-write) can leave it truncated while the trial folders and results.parquet are
    intact: a planned search then starts a new Tune experiment with the trials not finished yet, each continuing
    from its own folder (trainable: resume rule 2). None when every trial is finished."""
    exp_dir = sweep_dir / sweepdir.EXPERIMENT
    damaged = sweepdir.damaged_tune_state(exp_dir) if resume else None
    if damaged and not ALGORITHMS[spec.search.algorithm].planned:
        raise RuntimeError(f"Ray's experiment state in {exp_dir} is damaged ({damaged}); an Optuna search cannot be "
                           "continued without it. Its finished trials are in results.parquet and optuna.db.")
    if damaged:
        moved = exp_dir.with_name(f"{sweepdir.EXPERIMENT}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        exp_dir.rename(moved)
        console.print(f"[yellow]Ray's experiment state is damaged[/] ({damaged}); kept as {moved.name}. "
                      "Continuing the unfinished trials from their own folders.", highlight=False)
        done = {k for k, r in results.rows.items() if r.get("status") == "finished"}
        if all(t.key in done for t in spec.trials):
            return None
        return _new_tuner(spec, sweep_dir, trainable, concurrency, skip=done)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    return _new_tuner(spec, sweep_dir, trainable, concurrency)


def _new_tuner(spec: SweepSpec, sweep_dir: Path, trainable: Any, concurrency: int, skip: set[str] = frozenset()) -> tune.Tuner:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search_alg, param_space, num_samples = tune_search(spec, sweep_dir, skip)
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
            name=sweepdir.EXPERIMENT, storage_path=str(sweep_dir), verbose=0, callbacks=[CallbackProxy(str(sweep_dir))],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["name"]


def _trial_dirname(trial: Any) -> str:
    return sweepdir.safe_name(trial.config["trial"]["name"])[:80] + "_" + trial.trial_id


def _finish(spec: SweepSpec, handler: SweepCallback, sweep_dir: Path, uri: str | None, t0: float, console: Any) -> SweepResult:
    """Count how the trials ended, deliver what an MLflow outage held back, and close the parent run."""
    counts: dict[str, int] = {}
    for r in handler.results.rows.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    incomplete = spec.num_trials - sum(counts.values())
    if incomplete > 0:
        counts["incomplete"] = incomplete
    interrupted = any(s not in ("TERMINATED", "ERROR") for s in handler.statuses.values()) or incomplete > 0
    wall = time.time() - t0
    tracker = handler.tracker
    if tracker is not None:
        deadline = time.time() + float(os.environ.get(MLFLOW_WAIT_ENV, "60"))
        deliver(tracker, handler, deadline, console)
        tracker.close_unfinished({k for k in handler.info if k not in handler.results.rows})
        tracker.end_sweep("KILLED" if interrupted else ("FAILED" if counts.get("failed") else "FINISHED"),
                          {"trials_finished": counts.get("finished", 0), "trials_failed": counts.get("failed", 0), "wall_s": wall})
        deliver(tracker, handler, deadline, console)
        checkpoint_wal(tracker.uri)
    return SweepResult(sweep_dir, uri, spec.name, tracker.parent_id if tracker else None, wall, spec.num_trials,
                       counts, interrupted, len(tracker.pending) if tracker else 0, sorted(handler.deferred))
