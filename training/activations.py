"""Activation functions for Smooth Adversarial Training: name -> ``nn.Module`` factories in ``ACTIVATIONS``.

Produces one fresh ``nn.Module`` per call of :func:`make_activation` (so a learnable activation gets one parameter
per call site). Definitions follow spec ``at_methods.md`` section 10.1:

- SAT: Xie, Tan, Gong, Yuille, Le, "Smooth Adversarial Training", arXiv 2006.14536
  (parametric softplus, SiLU, GELU, ELU, SmoothReLU, and "ReLU forward, softplus backward").
- CELU: Barron, "Continuously Differentiable Exponential Linear Units", arXiv 1704.07483.

The "ReLU forward, parametric-softplus backward" activation (``relu_softplus_grad``) needs to know *whose* gradient
is being computed (SAT section 3 / thesis Table X: the attacker's input gradient, the optimiser's weight gradient, or
both). That is a process-wide *gradient phase* set by the training loop with :func:`grad_phase`; the activation reads
it at forward time and stores the decision for its backward.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator

import torch
import torch.nn as nn

from training.registry import ACTIVATIONS

__all__ = ["ACTIVATION_DEFAULT_ALPHA", "PHASES", "SMOOTH_GRAD_FOR", "ReLUSoftplusGrad", "SmoothReLU", "current_phase",
           "grad_phase", "make_activation"]

# Shape parameter α of each activation (None: the activation has no parameter; passing alpha is an error).
ACTIVATION_DEFAULT_ALPHA: dict[str, float | None] = {
    "relu": None,
    "softplus": 10.0,  # SAT paper's parametric softplus (the TF code's "softplus" is α = 1)
    "silu": None,  # x·sigmoid(x), β = 1 as tf.nn.swish
    "gelu": None,  # tanh approximation, as the SAT code
    "elu": 1.0,  # SAT uses tf.nn.elu, α = 1
    "celu": 1.0,  # Barron's CELU; α = 1 equals ELU(·, 1)
    "smooth_relu": 400.0,  # *initial* α = r², r learnable, initialised at 20 (SAT TF code)
    "relu_softplus_grad": 10.0,  # α of the sigmoid(αx) surrogate gradient
}

PHASES = ("attack", "train", "eval")
SMOOTH_GRAD_FOR = ("attacker", "optimizer", "both", "none")

# A plain module global (not a ContextVar / threading.local): torch.compile guards on a global's value, so a compiled
# model is specialised per phase and recompiles when the phase changes, instead of graph-breaking. It is process-wide:
# the training loop is single-threaded, and two threads must not train in different phases at once.
_PHASE: str = "eval"


def current_phase() -> str:
    """The gradient phase in force: ``"attack"``, ``"train"`` or ``"eval"`` (the default)."""
    return _PHASE


@contextlib.contextmanager
def grad_phase(phase: str) -> Iterator[None]:
    """Set the gradient phase inside the ``with`` block (nestable; the previous phase is restored on exit).

    ``"attack"``: gradients computed now are the attacker's input gradients (inner maximisation);
    ``"train"``: the optimiser's weight gradients (outer minimisation); ``"eval"``: anything else, including
    evaluation attacks, which therefore always see the true ReLU gradient.
    """
    global _PHASE
    if phase not in PHASES:
        raise ValueError(f"unknown gradient phase {phase!r}; expected one of {PHASES}")
    previous = _PHASE
    _PHASE = phase
    try:
        yield
    finally:
        _PHASE = previous


class SmoothReLU(nn.Module):
    """SAT's SmoothReLU: f(x) = x − (1/α)·log(αx + 1) for x ≥ 0, 0 for x < 0; f′(x) = αx/(αx + 1) (C¹ at 0).

    α = r² with r a learnable scalar (one per module instance, i.e. per call site), r initialised at √α₀ = 20, as in
    the SAT TF code (``smoothrelu_fn``). Evaluated as relu(x − log1p(α|x|)/α), which is the same function: the |x|
    keeps the log's argument ≥ 1 for x < 0, so for any r ≠ 0 neither the value nor any gradient (through x or r) is
    NaN, and log1p keeps precision for small αx (r = 0 exactly would give 0/0). Note that weight decay applied to r
    shrinks α towards 0 over training; whether r belongs in the decayed group is the optimiser's decision.
    Xie et al., arXiv 2006.14536.
    """

    def __init__(self, alpha: float = 400.0) -> None:
        super().__init__()
        self.r = nn.Parameter(torch.tensor(math.sqrt(alpha)))

    @property
    def alpha(self) -> torch.Tensor:
        return self.r * self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.r * self.r
        return torch.relu(x - torch.log1p(alpha * x.abs()) / alpha)

    def extra_repr(self) -> str:
        return f"alpha={float(self.r.detach()) ** 2:.4g} (r={float(self.r.detach()):.4g}, learnable)"


class _ReLUSoftplusGradFn(torch.autograd.Function):
    """y = relu(x); dL/dx = grad_out·sigmoid(αx) when ``smooth`` else grad_out·1[x > 0] (PyTorch's ReLU gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, smooth: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        ctx.smooth = smooth  # decided at forward time: the phase may have changed by the time backward runs
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_in = grad_out * (torch.sigmoid(ctx.alpha * x) if ctx.smooth else (x > 0).to(grad_out.dtype))
        # Written with differentiable ops (no once_differentiable): double backprop (e.g. GradAlign) works.
        return grad_in, None, None


class ReLUSoftplusGrad(nn.Module):
    """Forward exactly ReLU(x); backward grad_out·sigmoid(αx) (the parametric softplus's derivative) when enabled.

    SAT section 3 (Xie et al., arXiv 2006.14536), α = 10. ``smooth_grad_for`` chooses whose gradient is smoothed
    (thesis Table X): ``"attacker"`` (input gradient of the inner maximisation, phase ``"attack"``),
    ``"optimizer"`` (weight gradient of the outer minimisation, phase ``"train"``), ``"both"`` or ``"none"``.
    The phase is read in :meth:`forward` and saved for backward; in phase ``"eval"`` the gradient is always the true
    ReLU gradient, so evaluation attacks are never weakened or helped by the surrogate.
    """

    def __init__(self, alpha: float = 10.0, smooth_grad_for: str = "both") -> None:
        super().__init__()
        if smooth_grad_for not in SMOOTH_GRAD_FOR:
            raise ValueError(f"smooth_grad_for={smooth_grad_for!r}; expected one of {SMOOTH_GRAD_FOR}")
        self.alpha = float(alpha)
        self.smooth_grad_for = smooth_grad_for

    def _smooth_now(self) -> bool:
        return self.smooth_grad_for in {"attack": ("attacker", "both"), "train": ("optimizer", "both")}.get(_PHASE, ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.relu(x)  # no backward will run: skip the autograd.Function bookkeeping
        return _ReLUSoftplusGradFn.apply(x, self.alpha, self._smooth_now())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, smooth_grad_for={self.smooth_grad_for!r}"


# Registry entries: factories returning a fresh module. Parametrised ones take ``alpha``.
@ACTIVATIONS.register("relu")
def _relu() -> nn.Module:
    return nn.ReLU()


@ACTIVATIONS.register("softplus")
def _softplus(alpha: float = 10.0) -> nn.Module:
    # nn.Softplus calls its α "beta" and returns x itself where βx > threshold (20): the error there is
    # log1p(exp(-20))/α < 2.1e-9/α, and the gradient is 1 instead of sigmoid(αx) ≥ 1 − 2.1e-9. Kept at the default.
    return nn.Softplus(beta=alpha, threshold=20.0)


@ACTIVATIONS.register("silu")
def _silu() -> nn.Module:
    return nn.SiLU()


@ACTIVATIONS.register("gelu")
def _gelu() -> nn.Module:
    # SAT's code uses the tanh approximation 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))); nn.GELU's default is exact erf.
    return nn.GELU(approximate="tanh")


@ACTIVATIONS.register("elu")
def _elu(alpha: float = 1.0) -> nn.Module:
    # C¹ only for α = 1: one-sided derivatives at 0 are α (left) and 1 (right).
    return nn.ELU(alpha=alpha)


@ACTIVATIONS.register("celu")
def _celu(alpha: float = 1.0) -> nn.Module:
    # Barron: max(0, x) + min(0, α(exp(x/α) − 1)); derivative exp(x/α) below 0, C¹ for every α.
    return nn.CELU(alpha=alpha)


@ACTIVATIONS.register("smooth_relu")
def _smooth_relu(alpha: float = 400.0) -> nn.Module:
    return SmoothReLU(alpha=alpha)


@ACTIVATIONS.register("relu_softplus_grad")
def _relu_softplus_grad(alpha: float = 10.0, smooth_grad_for: str = "both") -> nn.Module:
    return ReLUSoftplusGrad(alpha=alpha, smooth_grad_for=smooth_grad_for)


def make_activation(name: str, *, alpha: float | None = None, smooth_grad_for: str = "both") -> nn.Module:
    """Build a fresh activation module.

    Args:
        name: a registered activation (``ACTIVATIONS.names()``).
        alpha: its shape parameter α > 0; None keeps the default (``ACTIVATION_DEFAULT_ALPHA``). For ``smooth_relu``
            it is the *initial* α (r₀ = √α). Refused for an activation without a parameter.
        smooth_grad_for: only read by ``relu_softplus_grad`` (``"attacker"``, ``"optimizer"``, ``"both"``,
            ``"none"``); validated for every activation so a typo in a config fails early.

    Returns:
        A new ``nn.Module`` (one per call, so learnable parameters are never shared between call sites).
    """
    if smooth_grad_for not in SMOOTH_GRAD_FOR:
        raise ValueError(f"smooth_grad_for={smooth_grad_for!r}; expected one of {SMOOTH_GRAD_FOR}")
    factory = ACTIVATIONS.get(name)
    kwargs: dict[str, object] = {}
    if alpha is not None:
        if ACTIVATION_DEFAULT_ALPHA.get(name) is None:
            raise ValueError(f"activation {name!r} has no shape parameter, but alpha={alpha!r} was given")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0 < alpha < math.inf):
            raise ValueError(f"activation {name!r}: alpha must be a finite number > 0, got alpha={alpha!r}")
        kwargs["alpha"] = float(alpha)
    if name == "relu_softplus_grad":
        kwargs["smooth_grad_for"] = smooth_grad_for
    return factory(**kwargs)
