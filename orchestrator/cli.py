"""``orch``: the command line (``orch -h``, ``orch COMMAND -h``). Each command is thin: it parses options and calls
one function.

Exit codes: 0 success; 1 some trials failed (or a training run failed); 2 bad input (sweep file, options,
sweep folder state, an unreachable tracking server) — refused before Ray starts and before anything is
written; 130 interrupted (the command that resumes is printed).

Ray, MLflow and Optuna are imported only by the commands that need them (``orch validate`` stays fast).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import sweepdir
from orchestrator.search import ALGORITHMS
from orchestrator.space import distinct_points
from orchestrator.spec import SpecErrors, SweepSpec, check_resources, load_spec, tracking_uri_problem
from orchestrator.sweepdir import check_storage, check_sweep_dir, storage_error
from training import metrics
from training.config import EVAL_SETTINGS, ConfigError, RunConfig, describe, set_dotted
from training.numbers import fmt_duration


def _flag_type_rich(self: Any, ctx: Any) -> str | None:
    """Typer prints a `<bool>` type beside every flag (--dry-run, --help): a flag takes no value, so none."""
    return None if getattr(self, "is_flag", False) else _option_type_rich(self, ctx)


from typer.core import TyperOption  # noqa: E402

_option_type_rich = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type_rich  # type: ignore[method-assign]

app = typer.Typer(name="orch", help="Sweep orchestrator for adversarial-robustness research (Ray Tune + MLflow + Optuna + Arrow).",
                  rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _setup() -> None:
    """Per invocation: outside a terminal (CI logs, pipes) rich would wrap at 80 columns and cut the
    thesis-style table (~150 columns) into unreadable pieces; give it room unless COLUMNS says otherwise."""
    global console, err_console
    console, err_console = Console(), Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console, err_console = Console(width=180), Console(stderr=True, width=180)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile under `profiles:` (default: the file's default_profile; 'none': no overlay).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a key of the sweep file: base.epochs=2, seeds=3, axes.method.k=[1,40]. Repeatable. "
    "A base key that an axis sweeps (base.method.k when method.k is an axis) is refused, since the axis would replace it in every trial: set the axis instead (axes.method.k=[5]).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", envvar="ORCH_DATA_DIR", help="Where sweep folders live (default ./orch_data; env ORCH_DATA_DIR).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Allow sweeps of more than 1000 trials.")]


def data_dir(path: Path | None) -> Path:
    return (path or Path("orch_data")).expanduser().resolve()


def sweep_dir_for(spec: SweepSpec, ddir: Path | None) -> Path:
    return sweepdir.sweep_path(data_dir(ddir), spec.name)


def orch_command() -> str:
    """How to run this orch again from here: ``orch`` when that name on PATH is this installation, else this
    environment's script (``.venv/bin/orch`` below the current folder, its absolute path elsewhere)."""
    import shutil

    exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orch")
    found = shutil.which("orch")
    if found and (not os.path.exists(exe) or os.path.samefile(found, exe)):
        return "orch"
    if not os.path.exists(exe):
        return f"{shlex.quote(sys.executable)} -m orchestrator"
    rel = os.path.relpath(exe)
    return shlex.quote(rel if not rel.startswith("..") else exe)


def _load(file: Path, profile: str | None, sets: list[str] | None, yes: bool = False, check_configs: bool = True) -> SweepSpec:
    try:
        return load_spec(file, profile=profile, sets=sets or [], yes=yes, check_configs=check_configs)
    except SpecErrors as e:
        _bad_input(e)


def _bad_input(e: SpecErrors) -> None:
    n = len(e.errors)
    err_console.print(f"[bold red]error[/]: {n} problem{'s' if n > 1 else ''} — nothing was run or written", highlight=False)
    for x in e.errors:
        err_console.print(f"  {x}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="The sweep file (YAML; format in sweeps/README.md).")],
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List every trial (or the search plan) and the resources, then a measured compute estimate (probes of a few batches and of each final attack, bounded: at most ~20 s, with a progress line; the final evaluation is an upper bound: every point assumed to stay robust); run nothing.")] = False,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="With --dry-run: skip the measured estimate.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted sweep: finished trials are kept, the rest continue from their last checkpoint.")] = False,
    address: Annotated[Optional[str], typer.Option("--address", help="An existing Ray cluster (host:port or ray://...). Default: a local Ray on this machine.")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow: http://host:port, sqlite:////abs.db, or 'none'. Default: sqlite in the sweep folder.")] = None,
    data_dir_: DataDirOpt = None,
    yes: YesOpt = False,
) -> None:
    """Run every trial of a sweep file on Ray Tune, log to MLflow, write results.parquet and the report."""
    from orchestrator.timing import emit, emit_cpu_at_exit

    emit("driver/command", 0.0)  # when the command starts (after its imports): benchmarks/sweep_scale.py
    emit_cpu_at_exit("driver/cpu")
    spec = _load(file, profile, set_, yes)
    sdir = sweep_dir_for(spec, data_dir_)
    errors = []
    if not address:
        try:
            check_resources(spec, float(os.cpu_count() or 1), float(_gpu_count(ask_torch=bool(spec.resources.gpu) and not dry_run)))
        except SpecErrors as e:
            if not dry_run:
                errors += e.errors
            else:  # planning a GPU sweep on a laptop is fine; running it here is not
                for x in e.errors:
                    err_console.print(f"[yellow]warning[/]: {x} (a run here would be refused; use --address)", highlight=False)
    ended = None if (dry_run or resume) else sweepdir.ended_sweep(spec, sdir)
    try:
        if not dry_run and ended is None:  # a dry run writes nothing, so any folder state is fine
            check_sweep_dir(spec, sdir, resume)
            check_storage(sdir)
    except SpecErrors as e:
        errors += e.errors
    uri = tracking_uri or spec.tracking_uri
    if uri and uri != "none":
        from orchestrator.spec import SpecError
        from orchestrator.tracking import check_reachable

        problem = tracking_uri_problem(uri) or check_reachable(uri)
        if problem:
            errors.append(SpecError("--tracking-uri" if tracking_uri else spec.file, "tracking.uri", uri, problem))
    if not errors and not address and not dry_run and ended is None:
        errors += data_problems(spec)  # here, before Ray starts: on a cluster, the data is on the workers
    if errors:
        _bad_input(SpecErrors(errors))
    if ended is not None:
        _show_ended(spec, sdir, ended, uri)
        return
    if dry_run:
        _dry_run(spec, sdir, uri, probe=not no_probe)
        return
    _run(spec, sdir, resume=resume, address=address, tracking_uri=uri, file=file, profile=profile, sets=set_ or [], data_dir_=data_dir_)


def data_problems(spec: SweepSpec) -> list:
    """A SpecError for each distinct dataset of the sweep's trials that cannot be loaded on this machine (files
    missing, and not downloadable), with the loader's full message: which files, which folder, how to fix."""
    points = distinct_points(spec.trials, spec.axes)
    seen: set[str] = set()
    out = []
    for p in points:
        data = RunConfig.from_dict(spec.run_dict(p, spec.seeds[0], name="check", out_dir="/nonexistent/check")).data
        k = json.dumps(data.__dict__, sort_keys=True, default=str)
        if k in seen:
            continue
        seen.add(k)
        if data.name in ("digits", "synthetic"):
            continue  # embedded or generated: always there (and the check would import torch into the driver)
        console.print(f"checking the data: {data.name} in {data.root}" + (" (downloading it if missing)" if data.download else ""), highlight=False)
        from training.data import DatasetUnavailable, check_available

        try:
            check_available(data)
        except DatasetUnavailable as e:
            axis = next((a for a in p if a == "data" or a.startswith("data.")), None)
            out.append(spec.error(("axes", axis) if axis else ("base", "data", "name"), data.name, str(e),
                                  key=f"axes.{axis}" if axis else "base.data.name"))
    return out


def _gpu_count(ask_torch: bool = False) -> int:
    """GPUs on this machine, counted without importing torch (2-10 s and ~700 MB in the driver, which never runs
    a tensor) and as Ray counts what it schedules: ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA driver's list.
    Where that list finds none and ``ask_torch`` (a sweep that needs GPUs, about to run), torch is asked before the
    sweep is refused: some set-ups (WSL2, some containers) have GPUs without ``/proc/driver/nvidia``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        return next((i for i, x in enumerate(ids) if x.startswith("-")), len(ids))  # CUDA stops at an invalid id
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        if not ask_torch:
            return 0
    import torch

    return torch.cuda.device_count()


def _run(spec: SweepSpec, sdir: Path, *, resume: bool, address: str | None, tracking_uri: str | None, file: Path,
         profile: str | None, sets: list[str], data_dir_: Path | None) -> None:
    from orchestrator.tuner import run_sweep

    command = "orch sweep " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["sweep"] else "orch sweep " + str(file)
    resume_cmd = " ".join([f"{orch_command()} sweep", shlex.quote(str(file))] + (["--profile", profile] if profile else [])
                          + [f"--set {shlex.quote(s)}" for s in sets] + (["--data-dir", shlex.quote(str(data_dir_))] if data_dir_ else []) + ["--resume"])
    try:
        res = run_sweep(spec, sweep_dir=sdir, resume=resume, address=address, tracking_uri=tracking_uri, console=console, command=command)
    except SpecErrors as e:  # the sweep folder is busy, or the cluster cannot run a trial
        _bad_input(e)
    except KeyboardInterrupt:
        err_console.print(f"\n[yellow]interrupted[/]: checkpoints are kept in {sdir}. Resume with:\n  {resume_cmd}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as e:  # a full or read-only disk surfaces from deep inside Ray: say what it is, once
        se = storage_error(e)
        if se is None:
            raise
        err_console.print(f"[bold red]error[/]: cannot write {se.filename or sdir}: {se.strerror}. What was written before "
                          f"is kept in {sdir}; make room (or fix the permissions), then resume with:\n  {resume_cmd}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    _print_summary(res, sdir)
    if res.interrupted:
        err_console.print(f"[yellow]the sweep stopped before every trial finished[/] ({res.statuses}). Resume with:\n  {resume_cmd}")
        raise typer.Exit(EXIT_INTERRUPTED)
    if res.statuses.get("failed"):
        raise typer.Exit(EXIT_FAILED)


def _show_ended(spec: SweepSpec, sdir: Path, counts: dict[str, int], uri: str | None) -> None:
    """`orch sweep FILE` on a sweep that already ran to its end: its results and where they are, and how to start
    afresh, instead of a refusal (so `make demo` can be run again)."""
    from types import SimpleNamespace

    if not uri and (sdir / "mlflow.db").exists():
        uri = f"sqlite:///{sdir}/mlflow.db"
    _print_summary(SimpleNamespace(statuses=counts, wall_s=None, tracking_uri=uri if uri != "none" else None, experiment=spec.name,
                                   parent_run_id=None, tracking_failures=0, unlogged_trials=[]), sdir, write=False)
    console.print(f"[bold]this sweep already ran[/] ({', '.join(f'{v} {k}' for k, v in counts.items())}): its results are above. "
                  f"To start afresh, remove {shlex.quote(str(sdir))} (or use another --data-dir or --profile)"
                  + ("; --resume retries the failed trials" if counts.get("failed") else ""), highlight=False, soft_wrap=True)
    if counts.get("failed"):
        raise typer.Exit(EXIT_FAILED)


def _print_summary(res: Any, sdir: Path, write: bool = True) -> None:
    """The sweep's table (the report written first, unless ``write`` is False: then the files already there) and
    where everything is."""
    from orchestrator.report import make_report
    from orchestrator.results import read_rows
    from orchestrator.table import render
    from orchestrator.timing import span

    try:
        if write:
            with span("driver/report"):
                files = ", ".join(p.name for p in make_report(sdir, console=console)["files"])
        else:
            console.print(render(*read_rows(sdir / "results.parquet"))[0])
            files = ", ".join(sorted(p.name for p in (sdir / "report").glob("*") if p.is_file()))
    except FileNotFoundError as e:
        console.print(f"[yellow]{e}[/]")
        files = ""
    t = Table(show_header=False, box=None, title="where everything is", title_justify="left")
    t.add_row("sweep folder", str(sdir))
    wall = f"; wall {res.wall_s:.0f} s" if res.wall_s is not None else ""
    t.add_row("results", f"{sdir / 'results.parquet'}  ({', '.join(f'{v} {k}' for k, v in res.statuses.items())}{wall})")
    t.add_row("report", f"{sdir / 'report'}/  {files}")
    t.add_row("trials", f"{sdir / 'trials'}/<trial>/  (checkpoints, metrics.jsonl, results.json)")
    if res.tracking_uri:
        t.add_row("MLflow", f"{res.tracking_uri}  experiment '{res.experiment}'" + (f", parent run {res.parent_run_id}" if res.parent_run_id else ""))
        if res.tracking_uri.startswith("sqlite:"):
            t.add_row("browse", f"{orch_command()} ui {shlex.quote(str(sdir))}   (= mlflow ui --backend-store-uri {res.tracking_uri} --host 127.0.0.1)")
        else:
            t.add_row("browse", res.tracking_uri)
    if res.tracking_failures or res.unlogged_trials:
        t.add_row("[red]MLflow[/]", f"{len(res.unlogged_trials)} trials and {res.tracking_failures} logging calls could not be delivered: "
                  "the numbers are in results.parquet and the trial folders; run the same command with --resume once "
                  "the server answers to log them")
    console.print(t)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _folder_state(spec: SweepSpec, sdir: Path) -> str:
    """What the sweep folder already holds, for the dry run (which neither needs nor changes it)."""
    if not (sdir / sweepdir.SWEEP_JSON).exists():
        return ""
    ended = sweepdir.ended_sweep(spec, sdir)
    if ended is not None:
        return f" (this sweep already ran to its end: `{orch_command()} sweep {shlex.quote(spec.file)}` shows its results)"
    try:
        same = sweepdir.read_state(sdir).get("digest") == spec.digest
    except (OSError, ValueError):
        same = False
    return (" (holds this sweep, not finished: --resume continues it)" if same
            else " (holds another version of this sweep: remove the folder or change the name or profile to run this one)")


def _dry_run(spec: SweepSpec, sdir: Path, uri: str | None, probe: bool) -> None:
    from orchestrator.estimate import estimate_sweep

    cpus = float(os.cpu_count() or 1)
    concurrency = spec.max_concurrent_trials or max(1, int(cpus // spec.resources.cpu))
    console.print(f"[bold]{spec.name}[/] ({spec.file}{', profile ' + spec.profile if spec.profile else ''}): {spec.description}".rstrip(": "))
    console.print(f"search {spec.search.algorithm}, {plural(spec.num_trials, 'trial')} = "
                  + (plural(len(spec.trials) // max(len(spec.seeds), 1), 'config') if spec.trials else plural(spec.search.num_samples or 0, 'sampled config'))
                  + f" x {plural(len(spec.seeds), 'seed')} {spec.seeds}; scheduler {spec.scheduler.name}"
                  + (f" (max_t {spec.scheduler.max_t}, grace {spec.scheduler.grace_period}, x{spec.scheduler.reduction_factor:g})" if spec.scheduler.name == "asha" else "")
                  + (f"; metric {spec.metric} ({spec.mode})" if spec.metric else ""), highlight=False)
    console.print(f"resources per trial: {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU; up to {concurrency} at a time here "
                  f"({cpus:g} CPUs); retries per trial: {spec.max_failures}; epochs per trial: {', '.join(map(str, spec.epochs))}", highlight=False)
    console.print(f"sweep folder: {sdir}{_folder_state(spec, sdir)}\nMLflow: {uri or 'sqlite:///' + str(sdir / 'mlflow.db')}", highlight=False)
    if spec.trials:
        t = Table(title="trials")
        for c in ["#", "trial", *(a.key for a in spec.axes), "seed", "key"]:  # an axis is never named # or seed
            t.add_column(c, justify="right" if c in ("#", "seed") else "left")
        for tr in spec.trials:
            t.add_row(str(tr.index), tr.name, *[json.dumps(tr.swept[a.key]) for a in spec.axes], str(tr.seed), tr.key)
        console.print(t)
    else:
        alg = ALGORITHMS[spec.search.algorithm]
        study = f", study '{spec.name}' in {sweepdir.optuna_url(sdir, spec)}" if alg.storage else ""
        t = Table(title=f"search space ({alg.label}, seed {spec.search.seed}{study})")
        t.add_column("axis")
        t.add_column("distribution")
        for a in spec.axes:
            t.add_row(a.key, a.describe())
        console.print(t)
    if not probe:
        console.print(f"compute: {spec.num_trials} trials x {max(spec.epochs)} epochs (no estimate: --no-probe)")
        return
    with console.status("measuring: a few batches and each final attack of each config on this machine (at most ~20 s)...") as st:
        ests, total, why = estimate_sweep(spec, progress=lambda text: (st.update(f"measuring: {text}") if console.is_terminal
                                                                      else console.print(f"measuring: {text}", highlight=False)))
    if total is None:
        console.print(f"[yellow]no compute estimate[/]: a probe run failed here ({why}). "
                      f"Plan: {spec.num_trials} trials x {max(spec.epochs)} epochs.", highlight=False)
        return
    t = Table(title="measured estimate (this machine, 1 thread per trial)")
    for c in ("config", "epochs", "train imgs", "s/epoch", "final eval ≤", "per trial ≤"):
        t.add_column(c, justify="right" if c != "config" else "left")
    for e in ests:
        t.add_row(e.label, str(e.epochs), str(e.n_train), f"{e.n_train * e.train_s_per_image + e.epoch_eval_s:.1f}",
                  fmt_duration(e.final_eval_s), fmt_duration(e.trial_s))
    console.print(t)
    console.print(f"compute: ~{fmt_duration(total)} of trial time; wall ~{fmt_duration(total / concurrency)} with {concurrency} "
                  f"concurrent trials (+ ~10 s start-up). At most: the final evaluation (≤) assumes every test point stays "
                  f"robust; each trial prints a tighter estimate before it evaluates.", highlight=False)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The sweep file.")],
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    yes: YesOpt = False,
) -> None:
    """Check a sweep file (structure, axes, every trial's run config, the metric) without running anything."""
    spec = _load(file, profile, set_, yes)
    kind = f"{len(spec.trials)} trials" if spec.trials else f"{spec.num_trials} trials ({spec.search.algorithm}, {spec.search.num_samples} configs x {len(spec.seeds)} seeds)"
    console.print(f"[green]ok[/]: {spec.name}: {kind}, epochs {', '.join(map(str, spec.epochs))}", highlight=False)


def _resolve_sweep_dir(target: Path, profile: str | None, data_dir_: Path | None) -> Path:
    if target.is_dir():
        return target.resolve()
    if target.suffix in (".yaml", ".yml") and target.is_file():
        return sweep_dir_for(_load(target, profile, [], yes=True, check_configs=False), data_dir_)
    err_console.print(f"[bold red]error[/]: {target}: not a sweep folder or a sweep file")
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def report(
    target: Annotated[Path, typer.Argument(help="A sweep folder, or the sweep file (with --profile) that made it.")],
    profile: ProfileOpt = None,
    data_dir_: DataDirOpt = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Only the table, Markdown and CSV.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the files here (default: <sweep>/report).")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", min=0.0, max=1.0,
        help="Validation PGD accuracy (a fraction) for time_to_threshold.png (default: 0.9 x the sweep's best).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="A row, as the table's Config column names it "
        "(e.g. 'activation=relu'): every other row's difference from it, 95% interval over seeds (paired t or Welch).")] = None,
) -> None:
    """Print the sweep's table (mean ± std over seeds, best and last) and write Markdown, CSV and plots."""
    from orchestrator.compare import BaselineError
    from orchestrator.report import make_report

    sdir = _resolve_sweep_dir(target, profile, data_dir_)
    try:
        rep = make_report(sdir, console=console, plots=not no_plots, out_dir=out, threshold=threshold, baseline=baseline)
    except (FileNotFoundError, BaselineError) as e:
        err_console.print(f"[bold red]error[/]: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print("written: " + ", ".join(str(p) for p in rep["files"]), highlight=False)
    if rep.get("threshold") is not None:
        console.print(f"time to threshold: validation PGD accuracy >= {100 * rep['threshold']:.1f}% "
                      "(--threshold to change)", highlight=False)


@app.command()
def ui(
    target: Annotated[Path, typer.Argument(help="A sweep folder, or its sweep file.")],
    profile: ProfileOpt = None,
    data_dir_: DataDirOpt = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, show_default=False,
        help="Port of the MLflow UI. Default: 5000, or the next free port when 5000 is taken. A port given here that is taken is refused (exit 2).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on a sweep's local store (mlflow.db + mlartifacts); print its experiment and compare pages."""
    from orchestrator import ui as mlflow_ui

    sdir = _resolve_sweep_dir(target, profile, data_dir_)
    db = sdir / "mlflow.db"
    if not db.exists():
        err_console.print(f"[bold red]error[/]: no {db} (did this sweep log to a server? open that instead)")
        raise typer.Exit(EXIT_BAD_INPUT)
    port, why = mlflow_ui.pick_port(host, port)
    if port is None:
        err_console.print(f"[bold red]error[/]: {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if why:
        console.print(why, highlight=False, soft_wrap=True)
    base = mlflow_ui.base_url(host, port)
    experiment, metric, mode, swept = mlflow_ui.sweep_identity(sdir)
    try:
        links = mlflow_ui.ui_links(db, experiment, base, metric, mode, swept)
    except Exception as e:  # noqa: BLE001 - MlflowException / SQLAlchemy errors: not an MLflow store
        err_console.print(f"[bold red]error[/]: {db}: not a readable MLflow store ({e})")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    say = dict(soft_wrap=True, markup=False, highlight=False)  # whole URLs on one line each, printed as they are
    console.print(f"MLflow UI on {base} (Ctrl-C to stop)", **say)
    if links["experiment_id"] is None:
        console.print(f"  no experiment '{experiment}' in {db} yet (has a trial started?)", **say)
    else:
        n = len(links["run_ids"])
        console.print(f"  experiment '{experiment}' (id {links['experiment_id']}): {links['experiment_url']}", **say)
        if n:
            by = f", best first by {links['sort_metric']}" if links["sort_metric"] else ""
            console.print(f"  its {n} trial runs{by}: {links['trials_url']}", **say)
            console.print(f"  chart of the swept parameters against the metric: {links['chart_url']}", **say)
            console.print(f"  compare the {n} trial runs: {links['compare_url']}", **say)
        else:
            console.print("  no trial runs in it yet", **say)
    mlflow_ui.serve(db, host, port)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A RunConfig YAML (nested sections).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a RunConfig key: method.k=20, epochs=3. Repeatable.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Run folder (default: the config's out_dir if it sets one, "
        "else a new runs/<name>-<date>-<time>). A folder that already holds a run is refused unless --resume: runs are never overwritten.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out-dir (or the config's out_dir) from its last.pt.")] = False,
    eval_: Annotated[Optional[str], typer.Option("--eval", help="A named final evaluation, applied before --set: paper (the default config: 8 attacks incl. standard AutoAttack on 1000 test images, tens of minutes on a CPU), demo (the k_interval demo's 7 attacks, AutoAttack cut to 10 iterations / 200 queries, 200 images), quick (clean, PGD-10, PGD-20 on 500 images: seconds).")] = None,
    help_config: Annotated[bool, typer.Option("--help-config", help="List every config key with its default.")] = False,
) -> None:
    """One training run without Ray or MLflow (the training core alone), with a progress bar; before the final
    evaluation it prints how long that will take, then shows its progress."""
    from orchestrator.spec import _MISSING, SpecError, parse_yaml

    if help_config:
        console.print(describe(), highlight=False)
        return
    d: dict[str, Any] = {}
    lines: dict[tuple, int] = {}
    where = str(config) if config else "--set"
    try:
        if config is not None:
            try:
                d, lines = parse_yaml(config.read_text(), str(config))
            except OSError as e:
                raise SpecErrors([SpecError(str(config), "", None, f"cannot read: {e}")]) from None
            d = d or {}
            if not isinstance(d, dict):
                raise SpecErrors([SpecError(str(config), "", d, "a run config must be a mapping of sections")])
        if eval_ is not None:
            if eval_ not in EVAL_SETTINGS:
                raise SpecErrors([SpecError("--eval", "", eval_, f"unknown evaluation; known: {', '.join(EVAL_SETTINGS)}")])
            for k, v in EVAL_SETTINGS[eval_].items():
                set_dotted(d, f"eval.{k}", v)
        for s in set_ or []:
            if "=" not in s:
                raise SpecErrors([SpecError(f"--set {s}", s, None, "expected key=value")])
            k, raw = s.split("=", 1)
            v, _ = parse_yaml(raw, f"--set {s}")
            set_dotted(d, k.strip(), v)
        if out_dir is not None:
            d["out_dir"] = str(out_dir)
        if "out_dir" not in d:
            if resume:
                raise SpecErrors([SpecError("--resume", "out_dir", _MISSING, "which run? name its folder with --out-dir "
                                            "(each run without one gets a new folder)" + _latest_run_hint())])
            d["out_dir"] = _new_run_dir(str(d.get("name") or "run"))
        cfg = RunConfig.from_dict(d)
    except ConfigError as e:
        path = tuple(e.key.split("."))
        ln = next((lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in lines), None)
        _bad_input(SpecErrors([SpecError(f"{where}:{ln}" if ln else where, e.key, e.value, e.problem, ln)]))
    except SpecErrors as e:
        _bad_input(e)
    run_dir = Path(cfg.out_dir).expanduser()
    held = [f for f in RUN_FILES if (run_dir / f).exists()]
    if held and not resume:
        _bad_input(SpecErrors([SpecError("--out-dir" if out_dir is not None else where, "out_dir", cfg.out_dir,
            f"already holds a run ({', '.join(held)}): continue it with --resume, or give another --out-dir "
            "(without any out_dir each run gets its own new folder); it is not overwritten")]))
    if resume and not (run_dir / "last.pt").exists():
        _bad_input(SpecErrors([SpecError("--resume", "out_dir", cfg.out_dir, "no last.pt there: nothing to resume" + _latest_run_hint())]))
    from training import run

    resume_cmd = " ".join([f"{orch_command()} train"] + ([f"--config {shlex.quote(str(config))}"] if config else [])
                          + [f"--set {shlex.quote(x)}" for x in set_ or [] if not x.strip().startswith("out_dir=")]
                          + [f"--out-dir {shlex.quote(str(cfg.out_dir))}", "--resume"])
    console.print(f"run folder: {run_dir}", highlight=False)
    final: dict[str, Any] = {}
    try:
        for rec in run(cfg, resume=cfg.out_dir if resume else None, progress=True):
            final = rec
    except KeyboardInterrupt:
        err_console.print(f"\n[yellow]interrupted[/]: resume with  {resume_cmd}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    t = Table(title=f"{cfg.name}: {final.get('outcome')} (best epoch {final.get('best_epoch')})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in final.items():
        if k.startswith(("best/", "last/")) and "/aa/" not in k:
            t.add_row(k, f"{100 * v:.2f} %")
    t.add_row("train time", f"{final.get('time/train_s', 0):.1f} s")
    console.print(t)
    console.print(f"results: {run_dir / metrics.RESULTS_FILE}")
    if final.get("outcome") == "diverged":
        raise typer.Exit(EXIT_FAILED)


RUN_FILES = (metrics.CONFIG_FILE, metrics.METRICS_FILE, "last.pt", "best.pt", metrics.RESULTS_FILE)  # what makes a folder a run
RUNS_DIR = Path("runs")


def _new_run_dir(name: str) -> str:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... if two runs start in the same second)."""
    import time

    stem = RUNS_DIR / f"{sweepdir.safe_name(name).strip('._') or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    d, i = stem, 1
    while d.exists():
        i += 1
        d = stem.with_name(f"{stem.name}-{i}")
    return str(d)


def _latest_run_hint() -> str:
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / "last.pt").exists()), key=lambda p: p.stat().st_mtime) if RUNS_DIR.is_dir() else []
    return f"; the latest run here is --out-dir {shlex.quote(str(runs[-1]))}" if runs else ""


cluster_app = typer.Typer(help="Local Ray clusters for trying autoscaling by hand, and the cluster.yaml check (docs/cluster.md).",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("validate")
def cluster_validate(file: Annotated[Path, typer.Argument(help="A `ray up` cluster.yaml.")]) -> None:
    """Validate a ray-up cluster.yaml offline against Ray's schema (no cloud access)."""
    from jsonschema import ValidationError

    from orchestrator.cluster import load_cluster_yaml, validate_cluster_config

    try:
        cfg = validate_cluster_config(load_cluster_yaml(file))
    except (OSError, ValueError, ValidationError) as e:
        err_console.print(f"[bold red]error[/]: {file}: {getattr(e, 'message', e)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    types = ", ".join(f"{k} (min {t.get('min_workers', 0)}, max {t.get('max_workers', '-')})" for k, t in cfg["available_node_types"].items())
    typer.echo(f"ok: {file}: cluster {cfg['cluster_name']}, max_workers {cfg['max_workers']}; node types: {types}")


@cluster_app.command("fake-up")
def cluster_fake_up(
    max_workers: Annotated[int, typer.Option(help="Most fake worker nodes the autoscaler starts.")] = 2,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs each fake worker advertises.")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs each fake worker advertises.")] = 1,
    idle_timeout_minutes: Annotated[float, typer.Option(help="Idle minutes before the autoscaler removes a worker.")] = 0.1,
) -> None:
    """Start a local autoscaling cluster (fake GPU workers); Ctrl-C stops it (only its own processes)."""
    import time

    from orchestrator.cluster import start_local_cluster

    c = start_local_cluster(fake_worker={"worker_resources": {"CPU": cpus_per_worker, "GPU": gpus_per_worker},
                                         "max_workers": max_workers, "idle_timeout_minutes": idle_timeout_minutes})
    typer.echo(f"cluster up in {c.start_s} s at {c.address} (temp dir {c.temp_dir}). Clients need:")
    for k, val in c.env.items():
        typer.echo(f"  export {k}={val}")
    typer.echo("Ctrl-C stops it (only its own processes).")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo(json.dumps(c.stop()))


@cluster_app.command("down")
def cluster_down(temp_dir: Annotated[Path, typer.Argument(help="The cluster's temp dir (/tmp/orchray-XXXX).")]) -> None:
    """Stop a local cluster started by orch, by its temp dir (only its processes): for one whose starter was killed."""
    from orchestrator.cluster import stop_local_cluster

    typer.echo(json.dumps(stop_local_cluster(temp_dir)))


@cluster_app.command("watch")
def cluster_watch(
    address: Annotated[str, typer.Option(help="The cluster's address (host:port).")],
    interval: Annotated[float, typer.Option(help="Seconds between looks.")] = 1.0,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")] = None,
) -> None:
    """Print the alive worker nodes whenever they change (JSON lines)."""
    from orchestrator.cluster import watch

    watch(address, interval, duration)


def main() -> None:  # `python -m orchestrator`
    app()


if __name__ == "__main__":
    main()
