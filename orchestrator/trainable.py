"""The Ray Tune function trainable: one trial = one ``training.run`` in its own folder, reported every epoch.

``train_trial(config, ctx)`` builds the trial's ``RunConfig`` (the sweep's base + the swept values + seed, with
``out_dir = <sweep>/trials/<name>-<key>``, absolute), sets torch's threads to the CPUs Tune gave the trial
(stack.md Q6: more threads than CPUs costs 28-39% on 2 cores), and iterates ``training.run``. Every record
(epoch, then final) goes to ``tune.report``, each epoch with a checkpoint of the trial folder, so a retried trial
(``FailureConfig(max_failures)``) or a resumed sweep continues from the last epoch Tune knows about. The final
record carries none: nothing is resumed after it (a trial retried or resumed from its last epoch's checkpoint
evaluates again), the driver reads the finished trial's folder, and a second checkpoint per 1-epoch trial made
Tune snapshot the whole experiment after every trial (``CheckpointConfig(num_to_keep=2)``: issue 14).

Where a trial restarts from (the honest-resume rules):

1. Tune hands back a checkpoint (``tune.get_checkpoint()``): the trial folder is reset to exactly that checkpoint
   (a newer ``last.pt`` written after Tune's last report is dropped: Tune, MLflow and the results have not seen
   that epoch) and ``run(cfg, resume=out_dir)`` yields only the epochs after it.
2. No checkpoint, but the folder holds a ``last.pt`` of the same config: the trial was started by a driver that
   died before Tune's experiment snapshot recorded it. Its finished epochs are re-reported from
   ``metrics.jsonl`` (marked ``orch/replayed``; the MLflow logger skips epochs it already has) and training
   continues after them, so no epoch is trained or logged twice.
3. Otherwise the folder is cleared and the trial starts from scratch.

A trial folder is held with an exclusive ``flock`` while a worker trains in it: after a driver is killed its
workers can live on for ~10 s (stack.md Q4), and a resumed trial waits for them rather than write beside them.

Only this module and ``tuner.py`` touch Ray; Ray is imported inside the function so that importing
``orchestrator.trainable`` (for ``TrialContext``) stays cheap.

Test hook: the driver copies ``ORCH_TEST_CRASH_ONCE=<path>`` from its environment into the context; the first
trial to finish an epoch then creates ``<path>`` and raises, once per sweep (tests of retry-from-checkpoint).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import metrics

from orchestrator.spec import run_dict
from orchestrator.sweepdir import trial_dir
from training.config import ConfigError, RunConfig

CRASH_ONCE_ENV = "ORCH_TEST_CRASH_ONCE"
ERROR_KEY = "orch/error"  # in a trial's last result: it failed with an error a retry would repeat (the message)
PROGRESS_EVERY_S = 2.0  # at most one final-evaluation progress result per this many seconds


def _deterministic() -> tuple[type[Exception], ...]:
    from training.data import DatasetUnavailable

    return (DatasetUnavailable, ConfigError)
LOCK_WAIT_S = 120.0  # how long a restarted trial waits for a predecessor worker to die
# files of a trial folder that a checkpoint carries (everything run() needs to resume, and its results)
CURVES_PNG = "curves.png"  # the trial's per-epoch curves (2+ epochs), drawn here at its end (the driver logs it to MLflow)
CHECKPOINT_FILES = ("last.pt", "best.pt", metrics.METRICS_FILE, metrics.CONFIG_FILE, metrics.RESULTS_FILE,
                    "orch_trial.json", "orch_state.json", CURVES_PNG)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``; plain data only)."""

    sweep_name: str
    base: dict[str, Any]
    trials_dir: str  # absolute
    crash_once: str | None = None  # ORCH_TEST_CRASH_ONCE of the driver


def run_config_dict(ctx: TrialContext, trial: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    return run_dict(ctx.base, trial["swept"], trial["seed"], name=trial["name"], out_dir=str(out_dir))


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable. ``config["trial"]`` = ``{"swept", "seed", "name", "key"}``."""
    from orchestrator.timing import emit, span

    trial = config["trial"]
    emit("worker/enter", 0.0, trial["key"])
    with span("worker/imports", trial["key"]):  # paid once per worker process (reuse_actors keeps it)
        import torch
        from ray import tune

        from training import run

    DETERMINISTIC = _deterministic()  # errors a retry repeats: data that is not there, a bad config
    t_start = time.time()
    out_dir = trial_dir(ctx.trials_dir, trial["name"], trial["key"])
    out_dir.mkdir(parents=True, exist_ok=True)

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    cfg = RunConfig.from_dict(run_config_dict(ctx, trial, out_dir))
    lock = _lock(out_dir)
    try:
        resume, replay = _prepare(out_dir, tune.get_checkpoint(), cfg)
        state = _read_state(out_dir)
        state["attempts"] += 1
        meta = {
            "orch/key": trial["key"], "orch/name": trial["name"], "orch/out_dir": str(out_dir),
            "orch/host": socket.gethostname(), "orch/pid": os.getpid(), "orch/attempt": state["attempts"],
            "orch/torch": str(torch.__version__), "orch/cuda": torch.version.cuda or "none",  # a str: torch's TorchVersion would import torch into the driver that unpickles it
            "orch/config_hash": cfg.hash(), "orch/threads": torch.get_num_threads(),
        }
        (out_dir / "orch_trial.json").write_text(json.dumps({**trial, **meta}, indent=2, default=str))

        emit("worker/prepare", time.time() - t_start, trial["key"])  # imports excluded

        def report(record: dict[str, Any], with_checkpoint: bool = True, **extra: Any) -> None:
            with span("worker/report", trial["key"]):
                _report(record, with_checkpoint, **extra)

        def _report(record: dict[str, Any], with_checkpoint: bool = True, **extra: Any) -> None:
            state["wall_s"] += time.time() - report.t  # type: ignore[attr-defined]
            report.t = time.time()  # type: ignore[attr-defined]
            _write_state(out_dir, state)
            metrics = {**record, **meta, **extra, "time/trial_s": state["wall_s"]}
            if not with_checkpoint:
                tune.report(metrics)
                return
            staged = _stage(out_dir)
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(staged))
            finally:
                shutil.rmtree(staged, ignore_errors=True)

        report.t = t_start  # type: ignore[attr-defined]
        for i, rec in enumerate(replay):
            report(rec, with_checkpoint=(i == len(replay) - 1), **{"orch/replayed": 1})
        try:
            t_run = time.perf_counter()
            for rec in run(cfg, resume=resume, on_eval=_eval_reporter(tune)):
                emit("worker/run_final" if rec.get("final") else "worker/run_epoch", time.perf_counter() - t_run, trial["key"])
                if rec.get("final"):
                    with span("worker/curves_png", trial["key"]):
                        _draw_curves(out_dir, trial["name"])
                report(rec, with_checkpoint=not rec.get("final"))
                t_run = time.perf_counter()
                if ctx.crash_once and not rec.get("final"):
                    _maybe_crash(ctx.crash_once, trial["name"])
        except DETERMINISTIC as e:
            # the same error on every attempt: end the trial now, failed, instead of letting FailureConfig retry it
            report({"final": True, "outcome": "failed", ERROR_KEY: f"{type(e).__name__}: {e}"}, with_checkpoint=False)
    except OSError as e:
        from orchestrator.sweepdir import STORAGE_ERRNOS

        if e.errno in STORAGE_ERRNOS:
            # one line a researcher can act on, instead of a traceback from inside torch.save or Ray
            raise StorageError(f"cannot write the trial folder {out_dir}: {e.strerror} ({e.filename}); "
                               "the epochs checkpointed before are kept") from e
        raise
    finally:
        lock.close()


def _draw_curves(out_dir: Path, name: str) -> None:
    """The trial's curves.png (its epochs from metrics.jsonl), in the worker: the driver stays free of matplotlib."""
    from orchestrator.figures import plot_trial_curves

    epochs = metrics.read_epochs(out_dir)
    if len(epochs) >= 2:  # one epoch is a point, not a curve (and the plot would cost a short trial ~20% of its time)
        plot_trial_curves(epochs, out_dir / CURVES_PNG, title=name)


def _eval_reporter(tune: Any):
    """The final evaluation's progress as Tune results marked ``orch/progress`` (no checkpoint, no epoch, no
    metric: schedulers, searchers, MLflow and results.parquet ignore them; the live view shows them), at most one
    every ``PROGRESS_EVERY_S`` besides the estimate sent before the evaluation starts."""
    last = [0.0]

    def on_eval(ev: dict[str, Any]) -> None:
        now = time.time()
        if ev["event"] == "eval" and now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        tune.report({"orch/progress": 1, **{f"orch/eval_{k}": v for k, v in ev.items() if k != "text"}})

    return on_eval


class StorageError(OSError):
    """A trial's folder cannot be written (disk full, read-only, permissions)."""


# ------------------------------------------------------------------------------------------------ helpers


def _lock(out_dir: Path):
    """Exclusive flock on the trial folder (released by the kernel when the holder dies)."""
    f = open(out_dir / ".lock", "w")
    deadline = time.time() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.time() > deadline:
                f.close()
                raise RuntimeError(f"{out_dir} is still locked by another worker after {LOCK_WAIT_S:.0f} s") from None
            time.sleep(0.5)


def _prepare(out_dir: Path, checkpoint: Any, cfg: Any) -> tuple[Path | None, list[dict[str, Any]]]:
    """Reset the trial folder per the resume rules (module docstring); returns (resume path, records to replay)."""
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            src = Path(d)
            if (src / "last.pt").exists():
                for name in CHECKPOINT_FILES:
                    if (src / name).exists():
                        if not ((out_dir / name).exists() and os.path.samefile(src / name, out_dir / name)):
                            shutil.copy2(src / name, out_dir / name)
                    elif (out_dir / name).exists():
                        (out_dir / name).unlink()
                return out_dir, []
    if (out_dir / "last.pt").exists() and _same_config(out_dir, cfg):
        rows = metrics.read_epochs(out_dir)
        from training.checkpoint import load

        done = load(out_dir / "last.pt")["epoch"]
        return out_dir, [r for r in rows if r["epoch"] <= done]
    for name in CHECKPOINT_FILES:
        if (out_dir / name).exists():
            (out_dir / name).unlink()
    return None, []


def _same_config(out_dir: Path, cfg: Any) -> bool:
    try:
        return RunConfig.from_dict(json.loads((out_dir / "config.json").read_text())).hash() == cfg.hash()
    except Exception:
        return False


def _stage(out_dir: Path) -> str:
    """A directory of hard links to the files a checkpoint carries (Tune copies it into its storage at once;
    run() replaces files by rename, so a link never sees a later write)."""
    staged = tempfile.mkdtemp(prefix=".ckpt-", dir=out_dir)
    for name in CHECKPOINT_FILES:
        src = out_dir / name
        if src.exists():
            try:
                os.link(src, Path(staged) / name)
            except OSError:
                shutil.copy2(src, Path(staged) / name)
    return staged


def _read_state(out_dir: Path) -> dict[str, Any]:
    """Per-trial bookkeeping carried in checkpoints: compute seconds over all attempts, attempt count."""
    try:
        return json.loads((out_dir / "orch_state.json").read_text())
    except (OSError, ValueError):
        return {"wall_s": 0.0, "attempts": 0}


def _write_state(out_dir: Path, state: dict[str, Any]) -> None:
    tmp = out_dir / "orch_state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out_dir / "orch_state.json")


def _maybe_crash(marker: str, name: str) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, name.encode())
    os.close(fd)
    raise RuntimeError(f"{CRASH_ONCE_ENV}: simulated crash of trial {name} after its first epoch (test hook)")
