"""What a run config may name, without importing torch: the name tables and every method's ``Params``.

``RunConfig.validate`` checks names and method parameters against this module, so ``orch validate`` and the trial
list of ``orch sweep --dry-run`` check a sweep file in about a second instead of importing torch (~10 s, 800 MB).
The plug-ins still register themselves where they are defined (``training/registry.py``); the tables here are the
names they register, and ``tests/training/test_schema.py`` checks that both agree, so a new model, dataset,
activation, method or evaluation column that is missing here fails that test rather than drifting.

A method's typed knobs live here (``FGSMSDIParams``) and its class points at them (``Params = FGSMSDIParams``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import ConfigError, Params

# sorted, as ``Registry.names()`` lists them (error messages show them in this order)
DATASETS = ("cifar10", "cifar100", "digits", "imagefolder", "mnist", "mnist5k", "svhn", "synthetic")
MODELS = (
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "preact_resnet18", "resnet101", "resnet152", "resnet18", "resnet50",
    "resnext152_32x8d", "resnext50_32x4d", "resnext50_32x8d", "small_cnn", "wrn34_10",
)
ACTIVATIONS = ("celu", "elu", "gelu", "relu", "relu_softplus_grad", "silu", "smooth_relu", "softplus")
# the evaluation columns, in the order of ``training.attacks.presets.EVAL_PRESETS``
EVAL_COLUMNS = ("clean", "fgsm", "pgd10", "pgd20", "pgd50", "cw", "apgd_ce", "apgd_t", "fab_t", "square", "aa")


# --------------------------------------------------------------------------------------------- method parameters


@dataclass(frozen=True)
class StandardParams(Params):
    pass


@dataclass(frozen=True)
class AlphaParams(Params):
    """fgsm, fgsm_rs: the step size only."""

    alpha_255: float | None = None  # step size in /255 units (None: the method's default)

    def check(self, prefix: str) -> None:
        if self.alpha_255 is not None and self.alpha_255 <= 0:
            raise ConfigError(f"{prefix}.alpha_255", self.alpha_255, "must be > 0")


@dataclass(frozen=True)
class FGSMGAParams(AlphaParams):
    grad_align_lambda: float | None = None

    # GradAlign's CIFAR-10 rule for the default lambda (spec §5), tabulated for eps <= 16/255 (2.0 there)
    LAMBDA_RULE_MAX_EPS_255 = 16.0

    @staticmethod
    def default_lambda(eps_255: float) -> float:
        return 0.02 * 10 ** (eps_255 / 8)

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.grad_align_lambda is not None and self.grad_align_lambda < 0:
            raise ConfigError(f"{prefix}.grad_align_lambda", self.grad_align_lambda, "must be >= 0")


@dataclass(frozen=True)
class FGSMCKPTParams(AlphaParams):
    c: int = 3

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.c < 1:
            raise ConfigError(f"{prefix}.c", self.c, "must be >= 1")


@dataclass(frozen=True)
class FGSMSDIParams(Params):
    k: int = 20  # generator update interval, in target steps (--att_num)
    alpha_255: float | None = None  # FGSM step at x+η; default ε (the reference's 8/255)
    label_smoothing: float = 0.9  # weight of the true class in LS-CE (--factor); 1.0 = plain CE
    gen_lr: float = 1e-3  # Adam
    gen_weight_decay: float = 5e-4  # the reference reuses the target's weight decay
    gen_width: int = 64
    clamp: bool = True

    def check(self, prefix: str) -> None:
        if self.k < 1:
            raise ConfigError(f"{prefix}.k", self.k, "must be >= 1 (the generator updates every k steps)")
        if self.alpha_255 is not None and self.alpha_255 <= 0:
            raise ConfigError(f"{prefix}.alpha_255", self.alpha_255, "must be > 0")
        if not 0 < self.label_smoothing <= 1:
            raise ConfigError(f"{prefix}.label_smoothing", self.label_smoothing, "must be in (0, 1]")
        if self.gen_lr <= 0:
            raise ConfigError(f"{prefix}.gen_lr", self.gen_lr, "must be > 0")
        if self.gen_weight_decay < 0:
            raise ConfigError(f"{prefix}.gen_weight_decay", self.gen_weight_decay, "must be >= 0")
        if self.gen_width < 1:
            raise ConfigError(f"{prefix}.gen_width", self.gen_width, "must be >= 1")


@dataclass(frozen=True)
class FreeParams(Params):
    m: int = 8
    alpha_255: float | None = None  # step size; default ε
    divide_epochs: bool = False  # true: ceil(epochs / m) data passes (Shafahi et al.); false: epochs (thesis)

    def check(self, prefix: str) -> None:
        if self.m < 1:
            raise ConfigError(f"{prefix}.m", self.m, "must be >= 1")
        if self.alpha_255 is not None and self.alpha_255 <= 0:
            raise ConfigError(f"{prefix}.alpha_255", self.alpha_255, "must be > 0")

    def data_epochs(self, epochs: int) -> int:
        return math.ceil(epochs / self.m) if self.divide_epochs else epochs


@dataclass(frozen=True)
class PGDATParams(Params):
    steps: int = 10
    alpha_255: float | None = None  # default 2/255

    def check(self, prefix: str) -> None:
        if self.steps < 1:
            raise ConfigError(f"{prefix}.steps", self.steps, "must be >= 1")
        if self.alpha_255 is not None and self.alpha_255 <= 0:
            raise ConfigError(f"{prefix}.alpha_255", self.alpha_255, "must be > 0")


# method name -> its Params (sorted by name, as ``METHODS.names()``)
METHOD_PARAMS: dict[str, type[Params]] = {
    "fgsm": AlphaParams,
    "fgsm_ckpt": FGSMCKPTParams,
    "fgsm_ga": FGSMGAParams,
    "fgsm_rs": AlphaParams,
    "fgsm_sdi": FGSMSDIParams,
    "free": FreeParams,
    "pgd_at": PGDATParams,
    "standard": StandardParams,
}
METHODS = tuple(METHOD_PARAMS)
