"""The sweep file: ``load_spec(path, profile=..., sets=...) -> SweepSpec``, with ALL validation before Ray starts.

A sweep file is YAML; its format and rules (profiles, ``--set``, axes, search, ``metric``) are in
``sweeps/README.md``. Loading parses it recording the line of every key (duplicate keys, which PyYAML silently
keeps the last of, are refused), overlays the profile and the ``--set`` overrides remembering where every value
came from, checks the structure (pydantic, strict), the axes, the search and the size, then builds the training
core's ``RunConfig`` for every trial (or for the probe points of a sampled space: every choice and both ends of
every range), so an unknown model, method, dataset, activation or attack, or a method parameter out of range, is
refused now, not an hour into the sweep, and checks that ``metric`` is produced by every trial.

Every problem becomes a :class:`SpecError` naming the file, line, key and value; all of them are collected and
raised together as :class:`SpecErrors`. The CLI prints them and exits with code 2. Nothing is written and
nothing is started before this returns.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training import metrics
from training.numbers import is_finite as _is_num

from orchestrator.search import ALGORITHMS
from orchestrator.space import KINDS, Axis, distinct_points, probe_points, trial_name
from training.config import ConfigError, RunConfig, set_dotted

MAX_TRIALS_WITHOUT_YES = 1000
NO_PROFILE = "none"  # `--profile none`: the file without any overlay

# keys the orchestrator owns; a sweep file may not set them
RESERVED_RUN_KEYS = ("out_dir", "name", "seed")


@dataclass
class SpecError(Exception):
    """One problem in a sweep file. ``where`` is ``file:line`` or ``--set key=value``."""

    where: str
    key: str
    value: Any
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        shown = _show(self.value)
        head = f"{self.where}: {self.key}: " if self.key else f"{self.where}: "
        return head + self.problem + (f" (got {shown})" if shown else "")


class SpecErrors(Exception):
    """All problems found in one sweep file (the CLI prints each and exits with code 2)."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


_MISSING = object()


def _show(v: Any) -> str:
    if v is _MISSING:
        return ""
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# Hostile input is refused while loading, in well under a second, before anything walks the document: a sweep
# file is a few KB, at most ~6 levels deep, with a few hundred values; these bounds are far above that.
MAX_FILE_BYTES = 1 << 20  # a sweep file (or one --set value) larger than 1 MiB is refused unread
MAX_DEPTH = 50  # nesting levels ([[[[... ends in a RecursionError in PyYAML's composer otherwise)
MAX_NODES = 100_000  # values in the document, counting every expansion of an alias (a YAML "alias bomb")
MAX_SCALAR_CHARS = 4096  # one key or value (PATH_MAX; MLflow refuses params above 6000 characters)


class _TooLarge(Exception):
    def __init__(self, problem: str, mark: Any) -> None:
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader (no tags that build objects, nothing evaluated) that reads ``1e-3`` as a float and refuses
    documents nested deeper than ``MAX_DEPTH`` or with more than ``MAX_NODES`` values while composing them."""

    _depth = 0  # per loader: the first += makes them instance attributes
    _nodes = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner looks up to 1024 characters ahead with a cost that grows with the flow level, so
        # `[[[[...` is stopped here, while scanning, rather than at the composer (0.4 s later)
        if self.flow_level >= MAX_DEPTH:
            raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._nodes += 1
        if self._depth >= MAX_DEPTH:
            raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        if self._nodes > MAX_NODES:
            raise _TooLarge(f"more than {MAX_NODES} values", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_expansion(root: yaml.Node) -> None:
    """Refuse aliases that expand to more than ``MAX_NODES`` values or contain themselves, and over-long
    scalars. Linear in the distinct nodes: each node's expanded size is computed once."""
    size: dict[int, int] = {}
    busy: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            busy.discard(nid)
            kids = [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else node.value
            size[nid] = 1 + sum(size[id(c)] for c in kids)
            if size[nid] > MAX_NODES:
                raise _TooLarge(f"aliases expand to more than {MAX_NODES} values (nested anchors: an alias bomb?)", node.start_mark)
            continue
        if nid in size:
            continue
        if nid in busy:
            raise _TooLarge("an alias refers to a collection that contains it (a recursive alias)", node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_SCALAR_CHARS:
                raise _TooLarge(f"a value of {len(node.value)} characters (at most {MAX_SCALAR_CHARS})", node.start_mark)
            size[nid] = 1
            continue
        busy.add(nid)
        stack.append((node, True))
        kids = [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else node.value
        stack.extend((c, False) for c in kids)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


Path_ = tuple  # a path into the document: ("axes", "method.k", 0)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], dups: list[tuple[Path_, int]]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                continue
            key = k.value
            if key in seen:
                dups.append((path + (key,), k.start_mark.line + 1))
            seen.add(key)
            _walk(v, path + (key,), lines, dups)
            lines[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (i,), lines, dups)


def parse_yaml(text: str, where: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document; returns (data, {path: line}). Raises SpecErrors on syntax errors and duplicates."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecErrors([SpecError(where, "", _MISSING, f"{len(text)} characters: too large for a sweep file (at most {MAX_FILE_BYTES})")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(node)
        lines: dict[Path_, int] = {}
        dups: list[tuple[Path_, int]] = []
        _walk(node, (), lines, dups)
        if dups:
            raise SpecErrors([SpecError(f"{where}:{ln}", _dotted(p), _MISSING, "duplicate key (YAML would silently keep the last one)", ln)
                              for p, ln in dups])
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        ln = mark.line + 1 if mark else None
        ctx = e.context or ""
        if e.context_mark is not None and e.problem_mark is not None and e.context_mark.line != e.problem_mark.line:
            ctx += f" started on line {e.context_mark.line + 1}"
        msg = ": ".join(x for x in (ctx.strip(), e.problem) if x)
        raise SpecErrors([SpecError(f"{where}:{ln}" if ln else where, "", _MISSING, f"YAML syntax error: {msg}", ln)]) from None
    except yaml.YAMLError as e:
        raise SpecErrors([SpecError(where, "", _MISSING, f"YAML error: {e}")]) from None
    except _TooLarge as e:
        ln = e.mark.line + 1 if e.mark is not None else None
        raise SpecErrors([SpecError(f"{where}:{ln}" if ln else where, "", _MISSING, f"refused: {e.problem}", ln)]) from None
    finally:
        loader.dispose()


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Origins:
    """Where each value of the merged document came from: ``file:line`` or ``--set ...``."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.map: dict[Path_, tuple[str, int | None]] = {}

    def add_file(self, lines: Mapping[Path_, int], src_prefix: Path_ = (), dst_prefix: Path_ = ()) -> None:
        n = len(src_prefix)
        for p, ln in lines.items():
            if p[:n] == src_prefix and (n == 0 or len(p) > n):
                self.map[dst_prefix + p[n:]] = (f"{self.file}:{ln}", ln)

    def locate(self, path: Path_) -> tuple[str, int | None]:
        for i in range(len(path), -1, -1):
            if path[:i] in self.map:
                return self.map[path[:i]]
        return (self.file, None)

    def error(self, path: Path_, value: Any, problem: str, key: str | None = None) -> SpecError:
        where, ln = self.locate(path)
        return SpecError(where, key if key is not None else _dotted(path), value, problem, ln)


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchConfig(_Strict):
    algorithm: Literal[tuple(ALGORITHMS)] = "grid"  # search.py's registry
    num_samples: int | None = Field(None, ge=1)  # random / optuna: configs to try (each runs with every seed)
    seed: int = 0  # random points / TPE sampler seed
    # optuna: the study's storage; default sqlite in the sweep folder. Several sweeps (or machines) may share one
    # database: each sweep is its own study (named after the sweep). sqlite:////abs/path.db or postgresql://...
    storage: str | None = None


class SchedulerConfig(_Strict):
    name: Literal["fifo", "asha"] = "fifo"
    max_t: int | None = Field(None, ge=1)  # asha: epochs (default: the trials' epochs)
    grace_period: int = Field(1, ge=1)  # asha: epochs before the first cut
    reduction_factor: float = Field(3.0, gt=1)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class TrackingConfig(_Strict):
    uri: str | None = None  # sqlite:////abs/path.db | http(s)://host:port | file:///abs (default: sweep folder)


class SweepFile(_Strict):
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Any] = Field(default_factory=dict)
    seeds: Any = None  # list of ints or a count; parsed by hand for clearer messages
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(2, ge=0)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_profile: str | None = None


_SECTION_MODELS: dict[Path_, type[BaseModel]] = {
    (): SweepFile, ("search",): SearchConfig, ("scheduler",): SchedulerConfig,
    ("resources",): Resources, ("tracking",): TrackingConfig,
}


def _pydantic_errors(err: ValidationError, origins: _Origins) -> list[SpecError]:
    out = []
    for e in err.errors():
        path = tuple(e["loc"])
        value = e.get("input", _MISSING)
        if e["type"] == "extra_forbidden":
            model = _SECTION_MODELS.get(path[:-1])
            known = ", ".join(model.model_fields) if model else ""
            problem = "unknown key" + (f"; known keys here: {known}" if known else "")
        elif e["type"] == "missing":
            problem, value = "required key is missing", _MISSING
        else:
            problem = e["msg"]
        out.append(origins.error(path, value, problem))
    return out


@dataclass
class TrialSpec:
    """One trial of a grid or random sweep: its swept values, its seed, and its stable identity."""

    index: int
    swept: dict[str, Any]  # axis key -> value (seed not included)
    seed: int
    name: str  # "k=20,seed=0"
    key: str  # stable id: hash of sweep name + swept values + seed (+ sample index for random)

    @property
    def tune_config(self) -> dict[str, Any]:
        return {"swept": self.swept, "seed": self.seed, "name": self.name, "key": self.key}


@dataclass
class SweepSpec:
    """A validated sweep, ready to run. ``trials`` is the full list for grid/random, empty for optuna."""

    file: str
    profile: str | None
    name: str  # effective name: `name` or `name-profile`; the sweep folder, MLflow experiment, Optuna study
    description: str
    base: dict[str, Any]
    axes: list[Axis]
    seeds: list[int]
    search: SearchConfig
    scheduler: SchedulerConfig
    metric: str | None
    mode: str
    max_concurrent_trials: int | None
    resources: Resources
    max_failures: int
    tracking_uri: str | None
    trials: list[TrialSpec]
    num_trials: int
    resolved: dict[str, Any]  # the merged document (profile + --set applied), written to the sweep folder
    epochs: list[int] = field(default_factory=list)  # distinct epoch counts over the trials
    origins: "_Origins" = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def digest(self) -> str:
        """Hash of everything that defines the trials (not concurrency, failures or tracking), for --resume."""
        keep = {k: self.resolved.get(k) for k in ("name", "base", "axes", "seeds", "search", "scheduler", "metric", "mode")}
        keep["profile"] = self.profile
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run_dict(self, swept: Mapping[str, Any], seed: int, *, name: str, out_dir: str) -> dict[str, Any]:
        return run_dict(self.base, swept, seed, name=name, out_dir=out_dir)

    def error(self, path: Path_, value: Any, problem: str, key: str | None = None) -> SpecError:
        """A SpecError located at ``path`` of the sweep document (for checks made after loading)."""
        return self.origins.error(path, value, problem, key)


def run_dict(base: Mapping[str, Any], swept: Mapping[str, Any], seed: int, *, name: str, out_dir: str) -> dict[str, Any]:
    """The nested RunConfig dict of one trial: the sweep's base, then the swept values, then seed / name / out_dir
    (the one place it is built: validation, the estimate, the driver and the worker all call this)."""
    d = json.loads(json.dumps(base))  # deep copy, plain types
    for k, v in swept.items():
        set_dotted(d, k, json.loads(json.dumps(v)))
    d["seed"], d["name"], d["out_dir"] = seed, name, out_dir
    return d


def trial_key(sweep_name: str, swept: Mapping[str, Any], seed: int, extra: Any = None) -> str:
    """A trial's stable identity: the same sweep, values and seed give the same key in every invocation, so a
    retried or resumed trial finds its folder and its MLflow run again. ``extra`` disambiguates points that can
    repeat (the sample index of a random search, the Optuna trial number)."""
    payload = json.dumps([sweep_name, swept, seed, extra], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def load_spec(path: str | Path, *, profile: str | None = None, sets: list[str] | tuple[str, ...] = (), yes: bool = False,
              check_configs: bool = True) -> SweepSpec:
    """Load and validate a sweep file.

    Args:
        path: the YAML file.
        profile: a name under ``profiles:``; ``None`` takes the file's ``default_profile``; ``"none"`` no overlay.
        sets: ``key=value`` overrides of the merged document (``base.epochs=2``, ``seeds=3``,
            ``axes.method.k=[1,40]``); values are YAML.
        yes: allow more than ``MAX_TRIALS_WITHOUT_YES`` trials.
        check_configs: build every trial's RunConfig (off only for tools that just need the structure).

    Raises:
        SpecErrors: every problem found, each with file, line, key and value.
    """
    path = Path(path)
    where = str(path)
    try:
        with path.open("rb") as fh:  # read at most one byte past the cap: a huge file (or /dev/zero) is not read whole
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            size = path.stat().st_size if path.is_file() else None
            got = f"{size / 2**20:.1f} MiB" if size else f"more than {MAX_FILE_BYTES} bytes"
            raise SpecErrors([SpecError(where, "", _MISSING, f"{got}: too large for a sweep file (at most {MAX_FILE_BYTES >> 20} MiB)")])
        text = raw.decode()
    except FileNotFoundError:
        raise SpecErrors([SpecError(where, "", _MISSING, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecErrors([SpecError(where, "", _MISSING, f"cannot read: {e}")]) from None
    doc, lines = parse_yaml(text, where)
    origins = _Origins(where)
    origins.add_file(lines)
    if not isinstance(doc, dict):
        raise SpecErrors([SpecError(f"{where}:1", "", doc if doc is not None else _MISSING, "a sweep file must be a mapping (name:, base:, axes:, ...)", 1)])

    # ---------------------------------------------------------------- profile
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SpecErrors([origins.error(("profiles",), profiles, "must be a mapping of profile name -> overlay")])
    chosen = profile if profile is not None else doc.get("default_profile")
    if chosen is not None and not isinstance(chosen, str):
        raise SpecErrors([origins.error(("default_profile",), chosen, "must be a profile name")])
    if chosen == NO_PROFILE:
        chosen = None
    if chosen is not None:
        if chosen not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            src = ("default_profile",) if profile is None else ("profiles",)
            err = origins.error(src, chosen, f"no such profile; profiles in this file: {known} (or '{NO_PROFILE}')", key="profile")
            if profile is not None:
                err.where = f"--profile {profile} ({err.where})"
            raise SpecErrors([err])
        overlay = profiles[chosen]
        if not isinstance(overlay, dict):
            raise SpecErrors([origins.error(("profiles", chosen), overlay, "a profile must be a mapping that overlays the file")])
        for bad in ("profiles", "default_profile"):
            if bad in overlay:
                raise SpecErrors([origins.error(("profiles", chosen, bad), overlay[bad], "a profile cannot contain this key")])
        doc = _deep_merge(doc, overlay)
        origins.add_file(lines, ("profiles", chosen))

    # ---------------------------------------------------------------- --set
    errors: list[SpecError] = []
    set_paths: list[tuple[str, Path_, Any]] = []  # (the --set text, its path, its value)
    for s in sets:
        try:
            set_paths.append((s, *_apply_set(doc, s, origins)))
        except SpecError as e:
            errors.append(e)
    if errors:
        raise SpecErrors(errors)

    # ---------------------------------------------------------------- structure
    try:
        model = SweepFile.model_validate(doc)
    except ValidationError as e:
        errors = _pydantic_errors(e, origins)
        # report the axes' and seeds' problems in the same pass (they don't depend on the rest)
        axes_ = _parse_axes(doc["axes"], origins, errors) if isinstance(doc.get("axes"), dict) else []
        _parse_seeds(doc.get("seeds", _MISSING), doc.get("base") if isinstance(doc.get("base"), dict) else {}, origins, errors)
        if isinstance(doc.get("base"), dict):  # and the run config's, so that every typo is reported at once
            point = (probe_points(axes_) or [{}])[0]
            d = json.loads(json.dumps({**doc["base"], "seed": 0, "name": "validate", "out_dir": "/nonexistent/validate"}, default=str))
            try:
                for k, v in point.items():
                    set_dotted(d, k, json.loads(json.dumps(v)))
            except ConfigError:
                pass  # a section that is not one: reported by the full check once the structure is right
            errors += [_config_error(origins, e, point, "") for e in config_problems(d)[1]]
        raise SpecErrors(errors) from None
    errors = []
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", model.name) or ".." in model.name:
        errors.append(origins.error(("name",), model.name, "must be 1-100 of A-Z a-z 0-9 _ . - (it names a folder, an MLflow experiment and an Optuna study)"))
    for pname in model.profiles:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,49}", str(pname)) or ".." in str(pname):
            errors.append(origins.error(("profiles", pname), pname, "a profile name must be 1-50 of A-Z a-z 0-9 _ . - "
                                        "(it becomes part of the sweep folder's name)", key=f"profiles.{pname}"))
        elif pname == NO_PROFILE:
            errors.append(origins.error(("profiles", pname), pname, f"'{NO_PROFILE}' is reserved (it means: no profile)"))
    name = model.name if chosen is None else f"{model.name}-{chosen}"

    for k in RESERVED_RUN_KEYS:
        if k in model.base and k != "seed":
            errors.append(origins.error(("base", k), model.base[k], "set by orch for every trial (inside the sweep folder); remove it"))

    seeds = _parse_seeds(doc.get("seeds", _MISSING), model.base, origins, errors)
    axes = _parse_axes(model.axes, origins, errors)
    errors += _sets_under_axes(set_paths, axes, model.base, origins)
    alg = ALGORITHMS[model.search.algorithm]
    if not alg.samples and model.search.num_samples not in (None, 1):
        errors.append(origins.error(("search", "num_samples"), model.search.num_samples, f"a {alg.name} runs every combination once; repeats are `seeds:`"))
    elif alg.samples and model.search.num_samples is None:
        errors.append(origins.error(("search",), alg.name, f"search.num_samples is required for {alg.name} (how many configs to try)", key="search.num_samples"))
    if not alg.ranges:
        for a in axes:
            if not a.discrete:
                ranged = " or ".join(n for n, x in ALGORITHMS.items() if x.ranges)
                errors.append(origins.error(("axes", a.key), a.describe(), f"a {a.kind} range cannot be a {alg.name} axis: use search.algorithm {ranged}, or list values"))
    if alg.needs_axes and not axes:
        errors.append(origins.error(("search", "algorithm"), alg.name, "needs at least one axis to search over"))
    if alg.needs_metric and not model.metric:
        errors.append(origins.error(("search", "algorithm"), alg.name, f"{alg.name} needs `metric:` (and `mode:`) to optimise", key="metric"))
    if model.scheduler.name == "asha":
        if not model.metric:
            errors.append(origins.error(("scheduler", "name"), "asha", "asha needs `metric:` (and `mode:`)", key="metric"))
        elif not metrics.is_epoch_metric(metrics.canonical(model.metric)):
            errors.append(origins.error(("metric",), model.metric, "asha compares trials every epoch, so `metric` must be an epoch metric: " + ", ".join(metrics.EPOCH_KEYS)))
    if model.resources.gpu > 1 and model.resources.gpu != int(model.resources.gpu):
        errors.append(origins.error(("resources", "gpu"), model.resources.gpu, "a fraction of a GPU must be <= 1 (0.5 packs two trials per GPU); above 1, whole GPUs"))
    st = model.search.storage
    if st is not None:
        if not alg.storage:
            errors.append(origins.error(("search", "storage"), st, "only an optuna search keeps a study storage"))
        elif not st.startswith(("sqlite:////", "postgresql", "mysql")):
            errors.append(origins.error(("search", "storage"), st, "expected sqlite:////abs/path.db (an absolute path), "
                                        "postgresql://... or mysql://..."))
    uri = model.tracking.uri
    if uri is not None:
        err = tracking_uri_problem(uri)
        if err:
            errors.append(origins.error(("tracking", "uri"), uri, err))
    if errors:
        raise SpecErrors(errors)

    # ---------------------------------------------------------------- size
    n_points = (model.search.num_samples or 0) if alg.samples else math.prod(len(a.values) for a in axes)  # no axes: 1
    num_trials = n_points * len(seeds)
    if num_trials > MAX_TRIALS_WITHOUT_YES and not yes:
        p = ("search", "num_samples") if alg.samples else ("axes",)
        raise SpecErrors([origins.error(p, num_trials, f"this sweep has {num_trials} trials (more than {MAX_TRIALS_WITHOUT_YES}); pass --yes if you mean it", key="trials")])

    trials: list[TrialSpec] = []
    if alg.planned:
        for i, p in enumerate(alg.plan(axes, n_points, model.search.seed)):
            for s in seeds:
                extra = i if alg.repeats else None  # random may draw the same point twice
                prefix = f"#{i}:" if alg.repeats else ""
                trials.append(TrialSpec(len(trials), p, s, trial_name(p, s, prefix), trial_key(name, p, s, extra)))

    spec = SweepSpec(
        file=where, profile=chosen, name=name, description=model.description, base=model.base, axes=axes,
        seeds=seeds, search=model.search, scheduler=model.scheduler, metric=metrics.canonical(model.metric) if model.metric else None, mode=model.mode,
        max_concurrent_trials=model.max_concurrent_trials, resources=model.resources,
        max_failures=model.max_failures, tracking_uri=uri, trials=trials, num_trials=num_trials,
        resolved={k: v for k, v in doc.items() if k not in ("profiles", "default_profile")},
        origins=origins,
    )
    if check_configs:
        _check_run_configs(spec)
    return spec


def _apply_set(doc: dict[str, Any], text: str, origins: _Origins) -> tuple[Path_, Any]:
    where = f"--set {text}"
    if "=" not in text:
        raise SpecError(where, text, _MISSING, "expected key=value (e.g. base.epochs=2, seeds=3, axes.method.k=[1,40])")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value, _ = parse_yaml(raw, where)
    except SpecErrors as e:
        raise SpecError(where, key, raw, e.errors[0].problem) from None
    parts = key.split(".")
    if not key or not all(parts):
        raise SpecError(where, key, value, "empty key")
    if parts[0] not in SweepFile.model_fields or parts[0] in ("profiles", "default_profile"):
        hint = f"; did you mean base.{key}?" if parts[0] not in SweepFile.model_fields else ""
        raise SpecError(where, key, value, f"unknown sweep key '{parts[0]}'; known: {', '.join(k for k in SweepFile.model_fields if k not in ('profiles', 'default_profile'))}{hint}")
    path: Path_ = ("axes", ".".join(parts[1:])) if parts[0] == "axes" and len(parts) > 1 else tuple(parts)
    try:
        set_dotted(doc, path, value)
    except ConfigError as e:
        raise SpecError(where, key, value, e.problem) from None
    origins.map.update({p: (where, None) for p in [path, *origins.map] if p[:len(path)] == path})  # the value and all below it
    return path, value


def _sets_under_axes(sets: list[tuple[str, Path_, Any]], axes: list[Axis], base: dict[str, Any], origins: _Origins) -> list[SpecError]:
    """Refuse a ``--set base.K=V`` whose value an axis replaces in every trial (``base.method.k`` when ``method.k``
    is swept): it would be accepted and have no effect. The value is still checked first, so a bad one gets its
    own message (``base.method.k=abc``: an integer is expected)."""
    out = []
    for text, path, value in sets:
        if path[:1] != ("base",) or len(path) < 2:
            continue
        key = ".".join(str(p) for p in path[1:])
        for ax in axes:
            hidden = key == ax.key or key.startswith(ax.key + ".")
            if not hidden and ax.key.startswith(key + "."):  # a whole section set: does it hold the swept key?
                sub: Any = value
                for part in ax.key[len(key) + 1:].split("."):
                    sub = sub.get(part, _MISSING) if isinstance(sub, dict) else _MISSING
                hidden = sub is not _MISSING
            if not hidden:
                continue
            problem = None
            try:  # the value where it would land, beside the swept values of the first point
                d = run_dict(base, (probe_points(axes) or [{}])[0], 0, name="check", out_dir="/nonexistent/check")
                set_dotted(d, key, json.loads(json.dumps(value)))  # never seed, name or out_dir: no axis sets those
                RunConfig.from_dict(d)
            except ConfigError as e:
                if e.key == key or e.key.startswith(key + ".") or key.startswith(e.key + "."):
                    problem = e.problem
            except Exception:  # noqa: BLE001 - anything else is for the full check of every trial
                pass
            if problem is None:
                vals = ax.describe()
                sub = ax.key[len(key) + 1:] if ax.key.startswith(key + ".") else ""
                change = (f"--set 'axes.{ax.key}=[{json.dumps(value)}]'" if ax.key == key and ax.discrete
                          else f"--set 'axes.{ax.key}=[...]'")
                problem = (f"'{ax.key}' is an axis of this sweep ({vals}, {origins.locate(('axes', ax.key))[0]}), which sets it "
                           f"in every trial, so this --set{' (its ' + sub + ')' if sub else ''} would have no effect; "
                           f"to change the swept values, set the axis: {change}")
            out.append(SpecError(f"--set {text}", f"base.{key}", value, problem))
            break
    return out


def _parse_seeds(raw: Any, base: Mapping[str, Any], origins: _Origins, errors: list[SpecError]) -> list[int]:
    if raw is _MISSING or raw is None:
        s = base.get("seed", 0)
        return [s] if isinstance(s, int) and not isinstance(s, bool) else [0]
    if isinstance(raw, int) and not isinstance(raw, bool):  # a bool is refused below
        if raw >= 1:
            return list(range(raw))
        errors.append(origins.error(("seeds",), raw, "a count of seeds must be >= 1"))
        return [0]
    if isinstance(raw, list):
        if not raw:
            errors.append(origins.error(("seeds",), raw, "empty: give a list of seeds or a count"))
            return [0]
        bad = [i for i, s in enumerate(raw) if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        errors.extend(origins.error(("seeds", i), raw[i], "a seed must be an integer >= 0") for i in bad)
        if not bad and len(set(raw)) != len(raw):
            errors.append(origins.error(("seeds",), raw, "repeated seed (each seed runs once per config)"))
        return [s for s in raw if isinstance(s, int)] or [0]
    errors.append(origins.error(("seeds",), raw, "must be a list of integers ([0, 1, 2]) or a count (3)"))
    return [0]


def _parse_axes(raw: Mapping[str, Any], origins: _Origins, errors: list[SpecError]) -> list[Axis]:
    axes: list[Axis] = []
    for key, spec in raw.items():
        p = ("axes", key)
        n0 = len(errors)
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            errors.append(origins.error(p, key, "an axis is a dotted config key such as method.k or optim.lr"))
            continue
        if key.split(".")[0] in RESERVED_RUN_KEYS and key != "seed":
            errors.append(origins.error(p, spec, f"'{key}' is set by orch for every trial; it cannot be swept"))
            continue
        if key == "seed":
            errors.append(origins.error(p, spec, "seeds are their own axis: write `seeds: [0, 1, 2]` (or a count) at the top level"))
            continue
        if isinstance(spec, list):
            kind, body = "values", spec
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS:
            kind, body = next(iter(spec.items()))
            p = p + (kind,)
        elif isinstance(spec, dict):
            unknown = [k for k in spec if k not in KINDS]
            hint = ""
            if unknown and all(isinstance(v, (list, dict)) for v in spec.values()):
                hint = f"; nested keys are written dotted, e.g. '{key}.{unknown[0]}'"
            problem = f"exactly one of {', '.join(KINDS)}" if not unknown else f"unknown axis kind '{unknown[0]}'; use one of {', '.join(KINDS)}{hint}"
            errors.append(origins.error(p, spec, problem))
            continue
        else:
            errors.append(origins.error(p, spec, f"an axis is a list of values or one of {{{', '.join(KINDS)}: ...}}"))
            continue
        if kind in ("values", "choice"):
            if not isinstance(body, list) or not body:
                errors.append(origins.error(p, body, "empty axis: give at least one value"))
            else:
                seen = []
                for i, v in enumerate(body):
                    if v in seen:
                        errors.append(origins.error(p + (i,), v, "repeated value (it would run the same trial twice)"))
                    seen.append(v)
                    if v is None or (isinstance(v, float) and not math.isfinite(v)):
                        errors.append(origins.error(p + (i,), v, "not a usable value"))
                if len(errors) == n0:
                    axes.append(Axis(key, kind, tuple(body)))
            continue
        if not isinstance(body, list) or len(body) != 2 or not all(_is_num(v) for v in body):
            errors.append(origins.error(p, body, f"{kind} takes [low, high] (two finite numbers)"))
            continue
        lo, hi = body
        if kind == "randint":
            if not all(isinstance(v, int) for v in body):
                errors.append(origins.error(p, body, "randint takes two integers [low, high] (both included)"))
            elif lo > hi:
                errors.append(origins.error(p, body, "impossible range: low > high"))
            else:
                axes.append(Axis(key, kind, low=int(lo), high=int(hi)))
            continue
        if lo >= hi:
            errors.append(origins.error(p, body, "impossible range: low must be < high"))
        elif kind == "loguniform" and lo <= 0:
            errors.append(origins.error(p, body, "loguniform needs low > 0"))
        else:
            axes.append(Axis(key, kind, low=float(lo), high=float(hi)))
    return axes


def tracking_uri_problem(uri: str) -> str | None:
    """Why a tracking URI can't work, or None. Relative paths are refused: Ray trials run elsewhere (stack.md Q3)."""
    if uri.startswith(("http://", "https://", "databricks", "/")):
        return None
    if uri.startswith("sqlite:///"):
        return None if uri.startswith("sqlite:////") else "use an absolute path: sqlite:////abs/path/mlflow.db"
    if uri.startswith("file:"):
        return None if uri.startswith("file:///") else "use an absolute file:///path"
    return "expected http(s)://host:port, sqlite:////abs/path.db or an absolute path"


def _config_error(origins: _Origins, e: Any, swept: Mapping[str, Any], label: str) -> SpecError:
    """Map a training ConfigError (dotted RunConfig key, ``method.k``) back to where the value came from in the sweep
    file: the axis that sets it, else the ``base`` key, through the same ``origins`` as the sweep file's own errors."""
    key = re.sub(r"\[\d+\]$", "", e.key)
    for ax in swept:
        if key == ax or key.startswith(ax + ".") or ax.startswith(key + "."):
            return origins.error(("axes", ax), e.value, f"{e.problem} (in trial {label})" if label else e.problem, f"axes.{ax}")
    path: Path_ = ("base",) + tuple(int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", e.key) if p != "")
    return origins.error(path, e.value, e.problem, f"base.{e.key}")


def config_problems(d: dict[str, Any], limit: int = 20) -> tuple[Any, list[Any]]:
    """``(RunConfig, [])``, or ``(None, every ConfigError)``. One validation names every wrong key of the sections
    (``ConfigError.errors``); the checks across sections run once those pass, so the offending keys are taken out
    (a wrong ``X.name``: its whole section) and the rest checked again, and every typo in a file is reported."""
    def take_out(key: str) -> bool:
        parts = re.sub(r"\[\d+\].*$", "", key).split(".")
        if len(parts) > 1 and parts[-1] == "name":
            parts = parts[:-1]  # another method, model, dataset: its parameters no longer apply
        cur: Any = d
        for p in parts[:-1]:
            cur = cur.get(p) if isinstance(cur, dict) else None
        if not isinstance(cur, dict) or parts[-1] not in cur:
            return False  # not a key of the document (a check across keys): nothing to take out
        del cur[parts[-1]]
        return True

    d = json.loads(json.dumps(d))
    errs: list[ConfigError] = []
    for _ in range(limit):
        try:
            cfg = RunConfig.from_dict(d)
            return (None if errs else cfg), errs
        except ConfigError as e:
            errs += e.errors
            if not [x for x in e.errors if take_out(x.key)]:
                break
    return None, errs


def _check_run_configs(spec: SweepSpec) -> None:
    """Build the RunConfig of every trial (or of every probe point) and check the metric; raise SpecErrors."""
    points = distinct_points(spec.trials, spec.axes)  # one config per distinct point: seeds don't change validity
    errors: dict[tuple[str, str], SpecError] = {}
    configs = []
    for p in points:
        label = trial_name(p, spec.seeds[0]) if p else ""
        try:
            d = spec.run_dict(p, spec.seeds[0], name="validate", out_dir="/nonexistent/validate")
        except ConfigError as e:  # an axis under a key the base gives as a value (`method: fgsm_sdi` + `method.k`)
            cfg, errs = None, [ConfigError(e.key, e.value, f"{e.problem}: write the base's value as a section "
                                           f"({e.key.split('.')[0]}: {{name: ...}})")]
        else:
            cfg, errs = config_problems(d)
        for e in errs:
            err = _config_error(spec.origins, e, p, label)
            errors.setdefault((err.key, e.problem), err)
        if cfg is not None:
            configs.append((label, cfg))
    if errors:
        raise SpecErrors(list(errors.values()))
    spec.epochs = sorted({c.data_epochs for _, c in configs})  # the epochs trials report (ASHA's time axis)
    if spec.scheduler.name == "asha" and spec.scheduler.max_t is None:
        spec.scheduler = spec.scheduler.model_copy(update={"max_t": max(spec.epochs)})
    if spec.metric:
        missing = [label or "(base)" for label, cfg in configs if spec.metric not in metrics.final_keys(cfg)]
        if missing:
            sample = sorted(metrics.final_keys(configs[0][1]))
            finals = [m for m in sample if "/" in m and m.split("/")[0] in ("best", "last")]
            raise SpecErrors([spec.error(("metric",), spec.metric,
                f"no such metric in {'any trial' if len(missing) == len(configs) else 'trials ' + ', '.join(missing[:5])}; "
                f"epoch metrics: {', '.join(metrics.EPOCH_KEYS[1:])}; final metrics here: {', '.join(finals[:12])}{' ...' if len(finals) > 12 else ''}")])
    for _, cfg in configs[:1]:
        if cfg.device.startswith("cuda") and spec.resources.gpu == 0:
            raise SpecErrors([spec.error(("resources", "gpu"), 0, f"trials ask for device {cfg.device} but get no GPU: set resources.gpu (or device: auto)")])


def check_resources(spec: SweepSpec, cpus: float, gpus: float, where: str = "this machine") -> None:
    """Refuse a per-trial request the cluster can never satisfy (Tune would otherwise wait forever)."""
    errs = []
    if spec.resources.cpu > cpus:
        errs.append(spec.error(("resources", "cpu"), spec.resources.cpu, f"each trial asks for more CPUs than {where} has ({cpus:g}); it would wait forever"))
    if spec.resources.gpu > gpus:
        errs.append(spec.error(("resources", "gpu"), spec.resources.gpu, f"each trial asks for more GPUs than {where} has ({gpus:g}); it would wait forever"))
    if errs:
        raise SpecErrors(errs)
