"""What a run config may name, without importing torch: the name tables, the checked value types, and every
method's parameters (one pydantic model per method, the members of ``MethodParams``).

``training.config`` builds ``RunConfig`` from this module, so ``orch validate`` and the trial list of
``orch sweep --dry-run`` check a sweep file in about a second instead of importing torch (~10 s, 800 MB).
The plug-ins still register themselves where they are defined (``training/registry.py``); the tables here are the
names they register, and ``tests/training/test_schema.py`` checks that both agree, so a new model, dataset,
activation, method or evaluation column that is missing here fails that test rather than drifting. A method's
class points at its model here (``Params = FGSMSDIParams``); adding one: ``docs/architecture.md``.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from training import metrics

# sorted, as ``Registry.names()`` lists them (error messages show them in this order)
DATASETS = ("cifar10", "cifar100", "digits", "imagefolder", "mnist", "mnist5k", "svhn", "synthetic")
MODELS = (
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "preact_resnet18", "resnet101", "resnet152", "resnet18", "resnet50",
    "resnext152_32x8d", "resnext50_32x4d", "resnext50_32x8d", "small_cnn", "wrn34_10",
)
ACTIVATIONS = ("celu", "elu", "gelu", "relu", "relu_softplus_grad", "silu", "smooth_relu", "softplus")
# the evaluation columns, in the order of ``training.attacks.presets.EVAL_PRESETS``
EVAL_COLUMNS = tuple(metrics.COLUMNS)  # the final evaluation's columns (training/metrics.py names and labels them)

# strict: no implicit conversion ("3" is not 3, true is not 1), except int -> float widening; floats are finite
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def problem(text: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose message is ``text`` as it is (``ctx``: ``sub`` appends a key, ``value`` replaces it)."""
    return PydanticCustomError("config", "{problem}", {"problem": text, **ctx})


def one_of(names: tuple[Any, ...], text: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if v not in names:
            raise problem(text)
        return v

    return AfterValidator(check)


def known(kind: str, names: tuple[str, ...]) -> AfterValidator:
    return one_of(names, f"unknown {kind}; known: {', '.join(names)}")


def field(default: Any, why: str | None = None, **constraints: Any) -> Any:
    """``Field`` with range constraints; ``why`` replaces the message built from them (``must be >= 1 (...)``)."""
    return Field(default, json_schema_extra={"problem": why} if why else None, **constraints)


class Section(BaseModel):
    """A config section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Alpha255 = Annotated[Float, Field(gt=0)] | None  # step size in /255 units (None: the method's default)


class Params(Section):
    """Base of a method's parameters; ``name`` (the discriminator of ``MethodParams``) is the method's name."""

    name: str

    def data_epochs(self, epochs: int) -> int:
        """Passes over the training data that a budget of ``epochs`` means for this method (overridden by
        Free-AT's ``divide_epochs``); ``Method.data_epochs`` and ``RunConfig.data_epochs`` ask this."""
        return epochs


class StandardParams(Params):
    name: Literal["standard"] = "standard"


class FGSMParams(Params):
    name: Literal["fgsm"] = "fgsm"
    alpha_255: Alpha255 = None


class FGSMRSParams(FGSMParams):
    name: Literal["fgsm_rs"] = "fgsm_rs"


class FGSMGAParams(FGSMParams):
    name: Literal["fgsm_ga"] = "fgsm_ga"
    grad_align_lambda: Annotated[Float, Field(ge=0)] | None = None

    # GradAlign's CIFAR-10 rule for the default lambda (spec §5), tabulated for eps <= 16/255 (2.0 there)
    LAMBDA_RULE_MAX_EPS_255: ClassVar[float] = 16.0

    @staticmethod
    def default_lambda(eps_255: float) -> float:
        return 0.02 * 10 ** (eps_255 / 8)


class FGSMCKPTParams(FGSMParams):
    name: Literal["fgsm_ckpt"] = "fgsm_ckpt"
    c: Int = field(3, ge=1)


class FGSMSDIParams(Params):
    name: Literal["fgsm_sdi"] = "fgsm_sdi"
    k: Int = field(20, "must be >= 1 (the generator updates every k steps)", ge=1)  # generator update interval (--att_num)
    alpha_255: Alpha255 = None  # FGSM step at x+η; default ε (the reference's 8/255)
    label_smoothing: Float = field(0.9, gt=0, le=1)  # weight of the true class in LS-CE (--factor); 1.0 = plain CE
    gen_lr: Float = field(1e-3, gt=0)  # Adam
    gen_weight_decay: Float = field(5e-4, ge=0)  # the reference reuses the target's weight decay
    gen_width: Int = field(64, ge=1)
    clamp: Bool = True


class FreeParams(Params):
    name: Literal["free"] = "free"
    m: Int = field(8, ge=1)
    alpha_255: Alpha255 = None  # step size; default ε
    divide_epochs: Bool = False  # true: ceil(epochs / m) data passes (Shafahi et al.); false: epochs (thesis)

    def data_epochs(self, epochs: int) -> int:
        return math.ceil(epochs / self.m) if self.divide_epochs else epochs


class PGDATParams(Params):
    name: Literal["pgd_at"] = "pgd_at"
    steps: Int = field(10, ge=1)
    alpha_255: Alpha255 = None  # default 2/255


# method name -> its Params (sorted by name, as ``METHODS.names()``)
METHOD_PARAMS: dict[str, type[Params]] = {
    "fgsm": FGSMParams,
    "fgsm_ckpt": FGSMCKPTParams,
    "fgsm_ga": FGSMGAParams,
    "fgsm_rs": FGSMRSParams,
    "fgsm_sdi": FGSMSDIParams,
    "free": FreeParams,
    "pgd_at": PGDATParams,
    "standard": StandardParams,
}
METHODS = tuple(METHOD_PARAMS)
# the ``method`` section: one of the models above, chosen by ``name``
MethodParams = Annotated[Union[tuple(METHOD_PARAMS.values())], Field(discriminator="name")]  # noqa: UP007
