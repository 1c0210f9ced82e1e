"""The sweep folder ``<data_dir>/sweeps/<name>``: its layout, its lock, its record of the sweep (``sweep.json``),
and the checks made before a sweep writes in it (free space, an existing sweep, a changed sweep on ``--resume``).

Layout::

    <sweep>/sweep.json        the sweep as loaded (digest, file, profile, resolved values): --resume compares it
    <sweep>/.lock             held by the driver running the sweep (a second `orch sweep` is refused)
    <sweep>/results.parquet   one row per trial (results.py)
    <sweep>/trials/<trial>/   each trial's run folder (checkpoints, metrics.jsonl, results.json: training.metrics)
    <sweep>/report/           orch report's tables and figures
    <sweep>/ray/              Ray Tune's experiment state
    <sweep>/mlflow.db, mlartifacts/   the MLflow store, unless tracking.uri says otherwise
    <sweep>/optuna.db         an Optuna search's study, unless search.storage says otherwise

Pure Python (no Ray, no torch): the trial workers import it too.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from orchestrator.spec import SpecError, SpecErrors, SweepSpec

EXPERIMENT = "ray"  # <sweep>/ray/ is Tune's experiment folder
SWEEP_JSON = "sweep.json"
RESULTS = "results.parquet"


def sweep_path(data_dir: str | Path, name: str) -> Path:
    """Where the sweep ``name`` lives under ``--data-dir`` (absolute)."""
    return (Path(data_dir).expanduser() / "sweeps" / name).resolve()


def prepare(spec: SweepSpec, sweep_dir: Path) -> None:
    """Create the folders and write ``sweep.json`` (at every start and resume)."""
    for sub in ("trials", "report"):
        (sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_JSON).write_text(json.dumps({"digest": spec.digest, "file": spec.file, "profile": spec.profile,
                                                    "name": spec.name, "resolved": spec.resolved}, indent=2, default=str))


def read_state(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep folder (raises OSError / ValueError when missing or unreadable)."""
    return json.loads((Path(sweep_dir) / SWEEP_JSON).read_text())


def ended_sweep(spec: SweepSpec, sdir: Path) -> dict[str, int] | None:
    """The trials' statuses if ``sdir`` holds this very sweep (same digest) and every trial of it ended (finished,
    failed or stopped); None otherwise (no sweep there, another version of it, or trials left to run)."""
    from orchestrator.results import read_rows

    try:
        state = read_state(sdir)
        rows, _ = read_rows(sdir / RESULTS)
    except (OSError, ValueError):
        return None
    if state.get("digest") != spec.digest:
        return None
    ended = {r["trial_key"]: r.get("status") for r in rows if r.get("status") in ("finished", "failed", "stopped")}
    if len(ended) < spec.num_trials or any(t.key not in ended for t in spec.trials):
        return None
    counts: dict[str, int] = {}
    for st in ended.values():
        counts[st] = counts.get(st, 0) + 1
    return counts


def optuna_url(sweep_dir: Path, spec: SweepSpec) -> str:
    return spec.search.storage or f"sqlite:///{sweep_dir}/optuna.db"


def safe_name(name: str) -> str:
    """A trial or run name as a file name: every run of other characters becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", name)


def trial_dir(trials_dir: str | Path, name: str, key: str) -> Path:
    """``<trials>/<name>-<key8>``: readable, filesystem-safe, and unique through the key."""
    return Path(trials_dir) / f"{safe_name(name).strip('._')[:80]}-{key[:8]}"


def lock_sweep_dir(sweep_dir: Path):
    """Hold ``<sweep>/.lock`` (flock) for the whole invocation: a second driver on the same sweep is refused
    (exit 2) instead of running every trial twice into the same folders and MLflow runs."""
    import fcntl

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


def damaged_tune_state(exp_dir: Path) -> str | None:
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


MIN_FREE_MB_ENV = "ORCH_MIN_FREE_MB"  # free space a sweep needs to start (default 200 MB)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def check_storage(sweep_dir: Path, option: str = "--data-dir") -> None:
    """Refuse, before anything is written, an output folder that cannot hold the sweep: a path through a file,
    a read-only or unwritable file system, or less free space than ``ORCH_MIN_FREE_MB`` (default 200 MB)."""
    sweep_dir = Path(sweep_dir)
    probe = sweep_dir
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            raise SpecErrors([SpecError(option, "output folder", str(probe), "is a broken symbolic link")])
        probe = probe.parent
    if not probe.is_dir():
        raise SpecErrors([SpecError(option, "output folder", str(sweep_dir), f"{probe} is a file, not a folder")])
    st = os.statvfs(probe)
    if st.f_flag & os.ST_RDONLY:
        raise SpecErrors([SpecError(option, "output folder", str(sweep_dir), f"{probe} is on a read-only file system")])
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecErrors([SpecError(option, "output folder", str(sweep_dir), f"{probe} is not writable by this user")])
    need = float(os.environ.get(MIN_FREE_MB_ENV, "200"))
    free = st.f_bavail * st.f_frsize / 2**20
    if free < need:
        raise SpecErrors([SpecError(option, "output folder", str(sweep_dir),
            f"only {free:.1f} MB free on the file system of {probe}; a sweep needs at least {need:g} MB to start "
            f"(checkpoints, Ray's experiment state, MLflow); free space or set {MIN_FREE_MB_ENV}")])


def storage_error(e: BaseException) -> OSError | None:
    """The out-of-space / read-only / permission OSError behind an exception (Ray wraps them), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def check_sweep_dir(spec: SweepSpec, sweep_dir: Path, resume: bool) -> None:
    """Refuse to start over an existing sweep, or to resume one that does not exist or was defined differently.

    A resumed sweep must run the same trials: its folder's ``sweep.json`` digest (name, base, axes, seeds, search,
    scheduler, metric, profile) must match the file as loaded now. Concurrency, failures and tracking may change.
    """
    sweep_dir = Path(sweep_dir)
    state = sweep_dir / SWEEP_JSON
    if not resume:
        started = state.exists() or (sweep_dir / EXPERIMENT).exists() or (sweep_dir / RESULTS).exists()
        if started:
            raise SpecErrors([spec.error(("name",), spec.name,
                f"{sweep_dir} already holds this sweep: continue it with --resume, or remove that folder "
                "(or change the name or profile) to start over", key="sweep folder")])
        return
    if not state.exists():
        raise SpecErrors([SpecError("--resume", "sweep folder", str(sweep_dir), "nothing to resume there (no sweep.json): run without --resume")])
    try:
        old = json.loads(state.read_text())
    except (OSError, ValueError) as e:
        raise SpecErrors([SpecError("--resume", "sweep folder", str(state), f"unreadable: {e}")]) from None
    if old.get("digest") != spec.digest:
        prev = old.get("resolved") or {}
        changed = [k for k in ("name", "base", "axes", "seeds", "search", "scheduler", "metric", "mode")
                   if json.dumps(prev.get(k), sort_keys=True, default=str) != json.dumps(spec.resolved.get(k), sort_keys=True, default=str)]
        if old.get("profile") != spec.profile:
            changed.append(f"profile ({old.get('profile')} -> {spec.profile})")
        raise SpecErrors([SpecError("--resume", "sweep", ", ".join(changed) or old.get("digest"),
            f"the sweep changed since {sweep_dir} was started, so resuming would mix two sweeps; "
            "restore the original file, or start a new sweep (other name or profile)")])
