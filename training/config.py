"""RunConfig: one typed, immutable description of a training run.

Built from a nested dict (YAML) with :meth:`RunConfig.from_dict`, which refuses unknown keys, wrong types and
out-of-range values with a :class:`ConfigError` naming the dotted key and the value. ``to_dict`` gives back the
resolved config (every default filled in); it is stored with every checkpoint and every result.

Units: ε and step sizes are written in /255 units (``eps_255: 8``) and converted once, in code, to pixel units
(``cfg.threat.eps``). Sections and their keys are the dataclasses below; ``orch train --help-config`` prints them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A config value is wrong. ``key`` is the dotted path (``method.k``), ``value`` the offending value."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key}: {problem} (got {value!r})")


# --------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | mnist5k | synthetic | cifar10 | cifar100 | svhn | mnist | imagefolder
    root: str = "~/.cache/orch/data"  # where torchvision datasets / image folders live
    download: bool = True  # torchvision datasets: try to download when missing
    image_size: int | None = None  # resize to this side (None: native size; digits are 8x8)
    channels: int | None = None  # 1 or 3 (None: native; digits and mnist are grey)
    val_size: int = 200  # training images held out for choosing the best checkpoint (never the test set)
    train_limit: int | None = None  # use at most this many training images (after the validation split)
    test_limit: int | None = None  # use at most this many test images
    augment: bool = True  # random crop (zero padding) + horizontal flip, batched on the device
    crop_padding: int | None = None  # None: 4 at 32 px, scaled with image size (1 at 8 px)
    flip: bool = True
    num_classes: int = 10  # synthetic only
    train_size: int = 512  # synthetic only
    test_size: int = 256  # synthetic only
    num_workers: int = 2  # imagefolder DataLoader workers
    split_seed: int = 0  # seed of the validation split (fixed across runs so runs compare)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small_cnn"
    activation: str = "relu"
    act_alpha: float | None = None  # shape parameter of softplus / elu / celu / relu_softplus_grad (None: default)
    smooth_grad_for: Literal["both", "attacker", "optimizer", "none"] = "both"  # relu_softplus_grad only
    width: int | None = None  # small_cnn base width / WRN widen factor (None: the model's default)


@dataclass(frozen=True)
class ThreatConfig:
    norm: Literal["linf"] = "linf"
    eps_255: float = 8.0

    @property
    def eps(self) -> float:
        return self.eps_255 / 255.0


@dataclass(frozen=True)
class MethodConfig:
    """``name`` plus the method's own parameters, validated against the method's ``Params`` dataclass."""

    name: str = "standard"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:  # cfg.method.k
        params = object.__getattribute__(self, "params")
        if key in params:
            return params[key]
        raise AttributeError(key)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(dict(self.params), sort_keys=True)))


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd"] = "sgd"
    lr: float = 0.1  # peak lr for cyclic
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["multistep", "cyclic", "constant"] = "multistep"
    milestones: tuple[float, ...] = (100 / 110, 105 / 110)  # multistep: fractions of training (0-1)
    gamma: float = 0.1  # multistep factor
    peak: float = 0.5  # cyclic: fraction of training at which the lr peaks
    lr_min: float = 0.0  # cyclic: lr at the start and the end


@dataclass(frozen=True)
class EvalConfig:
    # every epoch (cheap): PGD-k on a fixed training batch and on the validation split
    epoch_pgd_steps: int = 10
    epoch_pgd_alpha_255: float | None = None  # None: ε/4 (= 2/255 at ε = 8/255, the references' setting)
    train_batch_size: int = 256  # size of the fixed training batch checked every epoch
    best_metric: str = "val/pgd_acc"  # chooses the `best` checkpoint (a validation metric, maximised)
    # at the end: the robustness matrix on the test set, for each checkpoint in `checkpoints`
    attacks: tuple[str, ...] = ("clean", "fgsm", "pgd10", "pgd20", "pgd50", "cw", "apgd_ce", "aa")
    eps_255: tuple[float, ...] = ()  # extra test ε values (the threat model's ε is always evaluated)
    subset: int | None = 1000  # test images attacked (None: all)
    batch_size: int = 500
    seed: int = 0
    checkpoints: tuple[str, ...] = ("best", "last")
    aa_n_iter: int = 100  # AutoAttack iterations (100 = the standard version)
    aa_n_queries: int = 5000  # Square queries (5000 = standard)


@dataclass(frozen=True)
class COConfig:
    """Catastrophic-overfitting check (Wong et al. 2020, §3 of the spec), run after every epoch.

    Rule: CO is declared at epoch e when the training accuracy on the method's own adversarial examples rises
    (does not fall) against the previous epoch while PGD accuracy on the fixed training batch either falls by
    more than ``drop`` (absolute) below the best seen so far (a collapse after robustness was gained), or lies
    more than ``gap`` below that training accuracy (the model fits its single-step examples and none of the
    multi-step ones: CO before any robustness was gained, as FGSM at ε = 0.3 on MNIST). Methods that train on
    no attack (``standard``) are never checked. With ``rollback`` the run stops there and the weights of the
    epoch before are restored and kept as ``last``.
    """

    detect: bool = True
    drop: float = 0.2
    gap: float = 0.5
    min_epoch: int = 1  # no verdict before this many epochs
    rollback: bool = False


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast for the forward passes (CUDA or CPU)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    out_dir: str = "runs/run"
    checkpoint_every: int = 1  # write `last` every N epochs (and always at the end)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    threat: ThreatConfig = ThreatConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    co: COConfig = COConfig()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None) -> "RunConfig":
        """Build and validate; ``ConfigError`` names the first wrong key."""
        cfg = _build(cls, dict(d or {}), "")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, MethodConfig):
                out[f.name] = {"name": v.name, **dict(v.params)}
            elif dataclasses.is_dataclass(v):
                out[f.name] = {g.name: _plain(getattr(v, g.name)) for g in fields(v)}
            else:
                out[f.name] = _plain(v)
        return out

    def to_dict_flat(self) -> dict[str, Any]:
        """``{"method.k": 20, "threat.eps_255": 8.0, ...}``: the form of MLflow params and Parquet columns."""
        return flatten(self.to_dict())

    def replace(self, updates: Mapping[str, Any]) -> "RunConfig":
        """A new config with dotted-key updates applied (``{"method.k": 10}``), validated again."""
        d = self.to_dict()
        new_method = updates.get("method.name", (updates.get("method") or {}).get("name") if isinstance(updates.get("method"), Mapping) else None)
        if new_method is not None and new_method != self.method.name:
            d["method"] = {"name": new_method}  # the old method's parameters don't apply to the new one
        for key, value in updates.items():
            set_dotted(d, key, value)
        return RunConfig.from_dict(d)

    def hash(self) -> str:
        """Stable short hash of the resolved config (minus paths and names that don't change results)."""
        d = self.to_dict()
        for k in ("name", "out_dir"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        # names and method parameters come from the torch-free schema (the same names the plug-ins register,
        # checked by tests/training/test_schema.py), so a config is checked without importing torch
        from training import schema

        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("checkpoint_every", self.checkpoint_every)
        if self.seed < 0:
            raise ConfigError("seed", self.seed, "must be >= 0")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError("device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        if not self.out_dir:
            raise ConfigError("out_dir", self.out_dir, "must not be empty")

        d = self.data
        _known("dataset", schema.DATASETS, "data.name", d.name)
        if d.image_size is not None:
            _positive("data.image_size", d.image_size)
        if d.channels not in (None, 1, 3):
            raise ConfigError("data.channels", d.channels, "must be 1 or 3")
        if d.val_size < 0:
            raise ConfigError("data.val_size", d.val_size, "must be >= 0")
        for k in ("train_limit", "test_limit"):
            if getattr(d, k) is not None:
                _positive(f"data.{k}", getattr(d, k))
        if d.crop_padding is not None and d.crop_padding < 0:
            raise ConfigError("data.crop_padding", d.crop_padding, "must be >= 0")
        if d.num_classes < 2:
            raise ConfigError("data.num_classes", d.num_classes, "must be >= 2")
        _positive("data.train_size", d.train_size)
        _positive("data.test_size", d.test_size)
        if d.num_workers < 0:
            raise ConfigError("data.num_workers", d.num_workers, "must be >= 0")

        m = self.model
        _known("model", schema.MODELS, "model.name", m.name)
        _known("activation", schema.ACTIVATIONS, "model.activation", m.activation)
        if m.act_alpha is not None and m.act_alpha <= 0:
            raise ConfigError("model.act_alpha", m.act_alpha, "must be > 0")
        if m.width is not None:
            _positive("model.width", m.width)

        if not (0 <= self.threat.eps_255 <= 255):
            raise ConfigError("threat.eps_255", self.threat.eps_255, "must be in [0, 255]")

        _known("method", schema.METHODS, "method.name", self.method.name)
        # re-validates the parameters (types, ranges) through the method's own Params dataclass
        schema.METHOD_PARAMS[self.method.name].from_dict(dict(self.method.params), prefix="method")
        eps, ga = self.threat.eps_255, schema.FGSMGAParams
        if self.method.name == "fgsm_ga" and dict(self.method.params).get("grad_align_lambda") is None and eps > ga.LAMBDA_RULE_MAX_EPS_255:
            raise ConfigError("method.grad_align_lambda", None, (
                f"must be set when threat.eps_255 > {ga.LAMBDA_RULE_MAX_EPS_255:g} (here {eps:g}): the default is GradAlign's "
                f"CIFAR-10 rule 0.02 * 10^(eps_255 / 8), tabulated for eps <= 16/255 (2.0 there), which would give {ga.default_lambda(eps):.3g}"))

        o = self.optim
        if o.lr < 0:
            raise ConfigError("optim.lr", o.lr, "must be >= 0")
        if not 0 <= o.momentum < 1:
            raise ConfigError("optim.momentum", o.momentum, "must be in [0, 1)")
        if o.weight_decay < 0:
            raise ConfigError("optim.weight_decay", o.weight_decay, "must be >= 0")

        s = self.schedule
        if any(not 0 < x <= 1 for x in s.milestones) or list(s.milestones) != sorted(s.milestones):
            raise ConfigError("schedule.milestones", list(s.milestones), "must be increasing fractions in (0, 1]")
        if not 0 < s.gamma <= 1:
            raise ConfigError("schedule.gamma", s.gamma, "must be in (0, 1]")
        if not 0 < s.peak < 1:
            raise ConfigError("schedule.peak", s.peak, "must be in (0, 1)")
        if s.lr_min < 0 or s.lr_min > o.lr:
            raise ConfigError("schedule.lr_min", s.lr_min, f"must be in [0, optim.lr={o.lr}]")

        e = self.eval
        _positive("eval.epoch_pgd_steps", e.epoch_pgd_steps)
        _positive("eval.train_batch_size", e.train_batch_size)
        _positive("eval.batch_size", e.batch_size)
        _positive("eval.aa_n_iter", e.aa_n_iter)
        _positive("eval.aa_n_queries", e.aa_n_queries)
        if e.subset is not None:
            _positive("eval.subset", e.subset)
        for i, col in enumerate(e.attacks):
            if col not in schema.EVAL_COLUMNS:
                raise ConfigError(f"eval.attacks[{i}]", col, f"unknown attack; known: {', '.join(schema.EVAL_COLUMNS)}")
        for i, x in enumerate(e.eps_255):
            if not 0 <= x <= 255:
                raise ConfigError(f"eval.eps_255[{i}]", x, "must be in [0, 255]")
        for i, c in enumerate(e.checkpoints):
            if c not in ("best", "last"):
                raise ConfigError(f"eval.checkpoints[{i}]", c, "must be best or last")
        if e.best_metric not in EPOCH_METRICS_MAXIMISED:
            raise ConfigError(
                "eval.best_metric", e.best_metric, f"must be one of {', '.join(EPOCH_METRICS_MAXIMISED)}"
            )
        if not 0 < self.co.drop <= 1:
            raise ConfigError("co.drop", self.co.drop, "must be in (0, 1]")
        if not 0 < self.co.gap <= 1:
            raise ConfigError("co.gap", self.co.gap, "must be in (0, 1] (1 turns the gap test off)")

    # convenience
    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def data_epochs(self) -> int:
        """Passes over the training data run() makes, i.e. the epoch records it yields: ``epochs``, except for a
        method that counts otherwise (Free-AT with ``divide_epochs``: ceil(epochs / m))."""
        from training.schema import METHOD_PARAMS  # torch-free: the method's Params counts

        return METHOD_PARAMS[self.method.name].from_dict(dict(self.method.params)).data_epochs(self.epochs)


# named final evaluations (``orch train --eval NAME``): eval.* keys applied before --set
EVAL_SETTINGS: dict[str, dict[str, Any]] = {
    # the thesis's protocol (the defaults): 8 columns with standard AutoAttack on 1000 test images (tens of minutes
    # on a CPU)
    "paper": {},
    # the k_interval demo's: 7 columns, AutoAttack cut to 10 iterations / 200 Square queries, 200 test images
    "demo": {"attacks": ["clean", "pgd10", "pgd20", "pgd50", "cw", "apgd_ce", "aa"], "subset": 200, "aa_n_iter": 10, "aa_n_queries": 200},
    # a few seconds: clean and PGD-10/20 on 500 test images
    "quick": {"attacks": ["clean", "pgd10", "pgd20"], "subset": 500},
}

# validation-split metrics a run can maximise to choose its `best` checkpoint
EPOCH_METRICS_MAXIMISED = ("val/pgd_acc", "val/clean_acc")


# --------------------------------------------------------------------------------------------- helpers


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "method.k", 10)``; creates intermediate dicts."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            if not isinstance(nxt, dict):
                raise ConfigError(key, value, f"'{p}' is not a section")
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"k": 1}}`` -> ``{"method.k": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _positive(key: str, v: float) -> None:
    if v <= 0:
        raise ConfigError(key, v, "must be > 0")


def _known(kind: str, names: tuple[str, ...], key: str, name: str) -> None:
    if name not in names:
        raise ConfigError(key, name, f"unknown {kind}; known: {', '.join(names)}")


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(prefix.rstrip(".") or "<root>", d, "must be a mapping (section)")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for k in d:
        if k not in known:
            raise ConfigError(f"{prefix}{k}", d[k], f"unknown key; known keys here: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        key = f"{prefix}{f.name}"
        v = d[f.name]
        tp = hints[f.name]
        if tp is MethodConfig:
            kwargs[f.name] = _build_method(v, key)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, v if v is not None else {}, key + ".")
        else:
            kwargs[f.name] = coerce(tp, v, key)
    return cls(**kwargs)


def _build_method(v: Any, key: str) -> MethodConfig:
    from training.schema import METHOD_PARAMS

    if isinstance(v, str):
        v = {"name": v}
    if not isinstance(v, Mapping):
        raise ConfigError(key, v, "must be a mapping with 'name' and the method's parameters")
    v = dict(v)
    name = v.pop("name", "standard")
    if not isinstance(name, str) or name not in METHOD_PARAMS:
        raise ConfigError(f"{key}.name", name, f"unknown method; known: {', '.join(METHOD_PARAMS)}")
    params = METHOD_PARAMS[name].from_dict(v, prefix=key)
    return MethodConfig(name=name, params=types.MappingProxyType(params.to_dict()))


def coerce(tp: Any, v: Any, key: str) -> Any:
    """Check ``v`` against the annotation ``tp`` (int -> float widening allowed, nothing else implicit)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, v, key)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(key, v, " or ".join(errors))
    if origin is Literal:
        if v not in args:
            raise ConfigError(key, v, f"must be one of {', '.join(map(str, args))}")
        return v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(key, v, "must be a list")
        inner = args[0] if args else Any
        return tuple(coerce(inner, x, f"{key}[{i}]") for i, x in enumerate(v))
    if tp is Any:
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(key, v, "must be true or false")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(key, v, "must be an integer")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(key, v, "must be a number")
        if v != v or v in (float("inf"), float("-inf")):
            raise ConfigError(key, v, "must be finite")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(key, v, "must be a string")
        return v
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


@dataclass(frozen=True)
class Params:
    """Base for a method's parameter dataclass: typed, immutable, unknown keys refused."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "method") -> "Params":
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise ConfigError(
                    f"{prefix}.{k}", d[k], f"unknown parameter of this method; known: {', '.join(sorted(known)) or 'none'}"
                )
        kwargs = {k: coerce(hints[k], v, f"{prefix}.{k}") for k, v in d.items()}
        obj = cls(**kwargs)
        obj.check(prefix)
        return obj

    def check(self, prefix: str) -> None:  # ranges; overridden per method
        pass

    def data_epochs(self, epochs: int) -> int:
        """Passes over the training data that a budget of ``epochs`` means for this method (overridden by
        Free-AT's ``divide_epochs``); ``Method.data_epochs`` and ``RunConfig.data_epochs`` ask this."""
        return epochs

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def describe() -> str:
    """Every config key with its default, for ``orch train --help-config``."""
    lines = []
    for k, v in flatten(RunConfig().to_dict()).items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines)
