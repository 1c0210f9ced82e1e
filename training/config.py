"""RunConfig: one typed, immutable description of a training run (pydantic models, one per section).

Built from a nested dict (YAML) with :meth:`RunConfig.from_dict`, which refuses unknown keys, wrong types and
out-of-range values with a :class:`ConfigError` naming the dotted key and the value. ``to_dict`` gives back the
resolved config (every default filled in); it is stored with every checkpoint and every result.

Units: ε and step sizes are written in /255 units (``eps_255: 8``) and converted once, in code, to pixel units
(``cfg.threat.eps``). Sections and their keys are the models below; ``orch train --help-config`` prints them. The
method section is one of the method models of ``training.schema`` (``MethodParams``), chosen by ``method.name``, so
``cfg.method.k`` is a typed field and a method's parameters are validated once, here.
"""
from __future__ import annotations

import hashlib
import json
import typing
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ValidationError, field_validator, model_validator

from training import metrics
from training.schema import (
    ACTIVATIONS, DATASETS, EVAL_COLUMNS, METHOD_PARAMS, MODELS, Bool, FGSMGAParams, Float, Int, MethodParams, Params,
    Section, StandardParams, Str, field, known, one_of, problem,
)


class ConfigError(ValueError):
    """A config value is wrong. ``key`` is the dotted path (``method.k``), ``value`` the offending value.

    Raised by ``RunConfig.from_dict`` for the first problem; ``errors`` lists every problem found in that pass."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        self.key, self.value, self.problem = key, value, problem
        self.errors: list[ConfigError] = [self]
        super().__init__(f"{key}: {problem} (got {value!r})")


DEVICES = ("auto", "cpu", "cuda", "mps")

class DataConfig(Section):
    name: Annotated[Str, known("dataset", DATASETS)] = "digits"
    root: Str = "~/.cache/orch/data"  # where torchvision datasets / image folders live
    download: Bool = True  # torchvision datasets: try to download when missing
    image_size: Int | None = field(None, gt=0)  # resize to this side (None: native size; digits are 8x8)
    channels: Annotated[Int, one_of((1, 3), "must be 1 or 3")] | None = None  # None: native; digits, mnist are grey
    val_size: Int = field(200, ge=0)  # training images held out for choosing the best checkpoint (never the test set)
    train_limit: Int | None = field(None, gt=0)  # use at most this many training images (after the validation split)
    test_limit: Int | None = field(None, gt=0)  # use at most this many test images
    augment: Bool = True  # random crop (zero padding) + horizontal flip, batched on the device
    crop_padding: Int | None = field(None, ge=0)  # None: 4 at 32 px, scaled with image size (1 at 8 px)
    flip: Bool = True
    num_classes: Int = field(10, ge=2)  # synthetic only
    train_size: Int = field(512, gt=0)  # synthetic only
    test_size: Int = field(256, gt=0)  # synthetic only
    num_workers: Int = field(2, ge=0)  # imagefolder DataLoader workers
    split_seed: Int = 0  # seed of the validation split (fixed across runs so runs compare)


class ModelConfig(Section):
    name: Annotated[Str, known("model", MODELS)] = "small_cnn"
    activation: Annotated[Str, known("activation", ACTIVATIONS)] = "relu"
    act_alpha: Float | None = field(None, gt=0)  # shape of softplus / elu / celu / relu_softplus_grad (None: default)
    smooth_grad_for: Literal["both", "attacker", "optimizer", "none"] = "both"  # relu_softplus_grad only
    width: Int | None = field(None, gt=0)  # small_cnn base width / WRN widen factor (None: the model's default)


class ThreatConfig(Section):
    norm: Literal["linf"] = "linf"
    eps_255: Float = field(8.0, ge=0, le=255)

    @property
    def eps(self) -> float:
        return self.eps_255 / 255.0


class OptimConfig(Section):
    name: Literal["sgd"] = "sgd"
    lr: Float = field(0.1, ge=0)  # peak lr for cyclic
    momentum: Float = field(0.9, ge=0, lt=1)
    weight_decay: Float = field(5e-4, ge=0)
    nesterov: Bool = False


def _increasing_fractions(v: tuple[float, ...]) -> tuple[float, ...]:
    if any(not 0 < x <= 1 for x in v) or list(v) != sorted(v):
        raise problem("must be increasing fractions in (0, 1]", value=list(v))
    return v


class ScheduleConfig(Section):
    name: Literal["multistep", "cyclic", "constant"] = "multistep"
    # multistep: fractions of training (0-1)
    milestones: Annotated[tuple[Float, ...], AfterValidator(_increasing_fractions)] = (100 / 110, 105 / 110)
    gamma: Float = field(0.1, gt=0, le=1)  # multistep factor
    peak: Float = field(0.5, gt=0, lt=1)  # cyclic: fraction of training at which the lr peaks
    lr_min: Float = 0.0  # cyclic: lr at the start and the end, in [0, optim.lr] (checked by RunConfig)


class EvalConfig(Section):
    # every epoch (cheap): PGD-k on a fixed training batch and on the validation split
    epoch_pgd_steps: Int = field(10, gt=0)
    epoch_pgd_alpha_255: Float | None = None  # None: ε/4 (= 2/255 at ε = 8/255, the references' setting)
    train_batch_size: Int = field(256, gt=0)  # size of the fixed training batch checked every epoch
    # chooses the `best` checkpoint (a validation metric, maximised)
    best_metric: Annotated[Str, one_of(metrics.MAXIMISED, f"must be one of {', '.join(metrics.MAXIMISED)}")] = "val/pgd_acc"
    # at the end: the robustness matrix on the test set, for each checkpoint in `checkpoints`
    attacks: tuple[Annotated[Str, known("attack", EVAL_COLUMNS)], ...] = ("clean", "fgsm", "pgd10", "pgd20", "pgd50", "cw", "apgd_ce", "aa")
    eps_255: tuple[Annotated[Float, field(..., ge=0, le=255)], ...] = ()  # extra test ε (the threat's ε is always evaluated)
    subset: Int | None = field(1000, gt=0)  # test images attacked (None: all)
    batch_size: Int = field(500, gt=0)
    seed: Int = 0
    checkpoints: tuple[Annotated[Str, one_of(("best", "last"), "must be best or last")], ...] = ("best", "last")
    aa_n_iter: Int = field(100, gt=0)  # AutoAttack iterations (100 = the standard version)
    aa_n_queries: Int = field(5000, gt=0)  # Square queries (5000 = standard)


class COConfig(Section):
    """Catastrophic-overfitting check (Wong et al. 2020, §3 of the spec), run after every epoch.

    Rule: CO is declared at epoch e when the training accuracy on the method's own adversarial examples rises
    (does not fall) against the previous epoch while PGD accuracy on the fixed training batch either falls by
    more than ``drop`` (absolute) below the best seen so far (a collapse after robustness was gained), or lies
    more than ``gap`` below that training accuracy (the model fits its single-step examples and none of the
    multi-step ones: CO before any robustness was gained, as FGSM at ε = 0.3 on MNIST). Methods that train on
    no attack (``standard``) are never checked. With ``rollback`` the run stops there and the weights of the
    epoch before are restored and kept as ``last``.
    """

    detect: Bool = True
    drop: Float = field(0.2, gt=0, le=1)
    gap: Float = field(0.5, "must be in (0, 1] (1 turns the gap test off)", gt=0, le=1)
    min_epoch: Int = 1  # no verdict before this many epochs
    rollback: Bool = False


def _device(v: str) -> str:
    if not (v in DEVICES or v.startswith("cuda:")):
        raise problem("must be auto, cpu, cuda, cuda:N or mps")
    return v


class RunConfig(Section):
    name: Str = "run"
    seed: Int = field(0, ge=0)
    epochs: Int = field(10, gt=0)
    batch_size: Int = field(128, gt=0)
    device: Annotated[Str, AfterValidator(_device)] = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast for the forward passes (CUDA or CPU)
    channels_last: Bool = False
    compile: Bool = False  # torch.compile the model
    out_dir: Str = field("runs/run", min_length=1)
    checkpoint_every: Int = field(1, gt=0)  # write `last` every N epochs (and always at the end)
    deterministic: Bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    threat: ThreatConfig = ThreatConfig()
    method: MethodParams = StandardParams()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    co: COConfig = COConfig()

    @field_validator("data", "model", "threat", "optim", "schedule", "eval", "co", mode="before")
    @classmethod
    def _empty_section(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("method", mode="before")
    @classmethod
    def _method_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = {"name": v}
        if isinstance(v, Params):
            return v
        if not isinstance(v, Mapping):
            raise problem("must be a mapping with 'name' and the method's parameters")
        v = {"name": "standard", **v}
        if not isinstance(v["name"], str) or v["name"] not in METHOD_PARAMS:
            raise problem(f"unknown method; known: {', '.join(METHOD_PARAMS)}", sub="name", value=v["name"])
        return v

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
        s, lr = self.schedule, self.optim.lr
        if s.lr_min < 0 or s.lr_min > lr:
            raise problem(f"must be in [0, optim.lr={lr}]", key="schedule.lr_min", value=s.lr_min)
        eps, ga = self.threat.eps_255, FGSMGAParams
        if isinstance(self.method, ga) and self.method.grad_align_lambda is None and eps > ga.LAMBDA_RULE_MAX_EPS_255:
            raise problem(
                f"must be set when threat.eps_255 > {ga.LAMBDA_RULE_MAX_EPS_255:g} (here {eps:g}): the default is GradAlign's "
                f"CIFAR-10 rule 0.02 * 10^(eps_255 / 8), tabulated for eps <= 16/255 (2.0 there), which would give "
                f"{ga.default_lambda(eps):.3g}", key="method.grad_align_lambda", value=None)
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None) -> RunConfig:
        """Build and validate; ``ConfigError`` names the first wrong key (``.errors``: every one of this pass)."""
        try:
            return cls.model_validate(dict(d or {}))
        except ValidationError as e:
            errors = config_errors(e)
            errors[0].errors = errors
            raise errors[0] from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_dict_flat(self) -> dict[str, Any]:
        """``{"method.k": 20, "threat.eps_255": 8.0, ...}``: the form of MLflow params and Parquet columns."""
        return flatten(self.to_dict())

    def replace(self, updates: Mapping[str, Any]) -> RunConfig:
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

    # convenience
    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def data_epochs(self) -> int:
        """Passes over the training data run() makes, i.e. the epoch records it yields: ``epochs``, except for a
        method that counts otherwise (Free-AT with ``divide_epochs``: ceil(epochs / m))."""
        return self.method.data_epochs(self.epochs)


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


def set_dotted(d: dict[str, Any], key: str | tuple[str, ...], value: Any) -> None:
    """``set_dotted(d, "method.k", 10)`` (or a path of keys: ``("axes", "method.k")``); creates intermediate dicts
    where a key is missing or None."""
    parts = key.split(".") if isinstance(key, str) else key
    cur = d
    for p in parts[:-1]:
        if cur.get(p) is None:
            cur[p] = {}
        if not isinstance(cur[p], dict):
            raise ConfigError(".".join(parts), value, f"'{p}' is not a section")
        cur = cur[p]
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


def config_errors(err: ValidationError) -> list[ConfigError]:
    """Every problem of a failed ``RunConfig`` validation as a ``ConfigError``: the dotted key (``method.k``,
    ``eval.attacks[1]``), the value given, and what is allowed, in the words of the catalogue of bad inputs."""
    out = []
    for e in err.errors():
        key, section, info, tp = _locate(e["loc"])
        value, ctx, kind = e.get("input"), e.get("ctx") or {}, e["type"]
        why = (info.json_schema_extra or {}).get("problem") if info is not None else None
        if kind == "config":  # ours (training.schema.problem): the message as written
            text = ctx["problem"]
            key = ctx.get("key") or (f"{key}.{ctx['sub']}" if ctx.get("sub") else key)
            value = ctx.get("value", value)
        elif kind == "extra_forbidden" and section is not None and issubclass(section, Params):
            text = f"unknown parameter of this method; known: {', '.join(sorted(set(section.model_fields) - {'name'})) or 'none'}"
        elif kind == "extra_forbidden" and section is not None:
            text = f"unknown key; known keys here: {', '.join(sorted(section.model_fields))}"
        elif kind in _RANGE_ERRORS:
            text = why or _range_text(info, tp)
        elif kind == "literal_error":
            text = f"must be one of {', '.join(map(str, _literal_args(tp)))}"
        else:
            text = _TYPE_ERRORS.get(kind, e["msg"])
        out.append(ConfigError(key, value, text))
    return out


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_TYPE_ERRORS = {
    "int_type": "must be an integer", "float_type": "must be a number", "finite_number": "must be finite",
    "bool_type": "must be true or false", "string_type": "must be a string", "tuple_type": "must be a list",
    "list_type": "must be a list", "model_type": "must be a mapping (section)", "dict_type": "must be a mapping (section)",
    "string_too_short": "must not be empty",
}


def _locate(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None, Any, Any]:
    """(dotted key, the model holding the last key, its FieldInfo, the annotation at ``loc``) of an error location;
    the method's tag (``("method", "fgsm_sdi", "k")``) is dropped from the key: ``method.k``."""
    key, section, info, tp = "", None, None, RunConfig
    for i, part in enumerate(loc):
        if isinstance(part, int):  # an element of a list
            key, info, tp = f"{key}[{part}]", None, typing.get_args(_strip(tp))[0]
        elif loc[:i] == ("method",) and part in METHOD_PARAMS:
            tp = METHOD_PARAMS[part]
        else:
            key = f"{key}.{part}" if key else str(part)
            model = _strip(tp)
            section = model if isinstance(model, type) and issubclass(model, BaseModel) else None
            info = section.model_fields.get(part) if section is not None else None
            tp = info.annotation if info is not None else None
    return key, section, info, tp


def _strip(tp: Any) -> Any:
    """The type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, type(int | None)) and type(None) in typing.get_args(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _literal_args(tp: Any) -> tuple[Any, ...]:
    tp = _strip(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _range_text(info: Any, tp: Any) -> str:
    """``must be > 0``, ``must be in [0, 1)``: from the field's constraints (``ge``, ``gt``, ``le``, ``lt``)."""
    found: dict[str, float] = {}

    def collect(x: Any) -> None:
        for m in getattr(x, "metadata", None) or ():
            collect(m)
        for a in ("ge", "gt", "le", "lt"):
            if getattr(x, a, None) is not None:
                found[a] = getattr(x, a)
        if typing.get_origin(x) is Annotated or typing.get_origin(x) in (typing.Union, type(int | None)):
            for m in typing.get_args(x):
                collect(m)

    collect(info)
    collect(tp)
    lo = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    hi = (found["le"], "]") if "le" in found else (found["lt"], ")") if "lt" in found else None
    if lo and hi:
        return f"must be in {lo[0]}{lo[1]:g}, {hi[0]:g}{hi[1]}"
    if lo:
        return f"must be {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"must be {'<=' if hi[1] == ']' else '<'} {hi[0]:g}"
    return "is out of range"


def describe() -> str:
    """Every config key with its default, for ``orch train --help-config``."""
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in flatten(RunConfig().to_dict()).items())
