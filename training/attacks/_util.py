"""Small pieces every L∞ attack shares: random draws from the caller's generator, the ε-ball/[0,1] projection, the
losses (CE, CW margin, DLR and targeted DLR), input-only gradients, and the "keep whatever misclassifies" selection.

Conventions (spec ``at_methods.md`` §1): images in [0,1] pixel space, normalisation inside the model, so ε and every
step size are plain pixel units. Nothing here touches the model's train/eval mode or its parameters' ``.grad``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "rand",
    "project",
    "broadcast",
    "predict",
    "ce_loss",
    "cw_loss",
    "dlr_loss",
    "dlr_loss_targeted",
    "loss_and_grad",
    "keep_fooled",
]


def rand(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """U[0,1) drawn from ``generator`` and moved to ``like``'s device and dtype.

    The draw happens on the generator's own device (a CPU generator also works for CUDA inputs), so a CPU generator
    seeded with s yields the same stream as ``torch.manual_seed(s); torch.rand(...)``: that is how the agreement tests
    replay the reference implementations' random starts exactly.
    """
    device = generator.device if generator is not None else like.device
    return torch.rand(tuple(shape), generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample vector viewed as (N, 1, 1, ...) to broadcast against ``x``."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L∞ ball of radius ``eps`` around ``x``, then onto the [0,1] box (x itself lies in the box,
    so the result lies in both)."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return z_y, other


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin loss −(z_y − max_{j≠y} z_j) (spec §8's "C&W" column); > 0 exactly when misclassified."""
    z_y, other = _true_and_best_other(logits, y)
    return other - z_y


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR, −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3) (Croce & Hein 2020, eq. 5); needs ≥ 3 classes."""
    z_sorted = logits.sort(1)[0]
    z_y, other = _true_and_best_other(logits, y)
    return -(z_y - other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2) (Croce & Hein 2020, eq. 6); needs ≥ 4 classes."""
    z_sorted = logits.sort(1)[0]
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, y_target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def loss_and_grad(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_adv: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    reduction: str = "sum",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, per-sample loss, ∂loss/∂x_adv), all detached.

    The gradient is taken with ``torch.autograd.grad`` with respect to the input only, so the model's parameters
    never get a ``.grad`` (a ``loss.backward()`` would fill them and leak into a training step's optimiser), and
    ``enable_grad`` makes this work even when the caller runs under ``torch.no_grad``.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = loss_fn(logits)
        total = loss.sum() if reduction == "sum" else loss.mean()
        (grad,) = torch.autograd.grad(total, [x_adv])
    return logits.detach(), loss.detach(), grad.detach()


@torch.no_grad()
def keep_fooled(
    model: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, candidates: list[torch.Tensor]
) -> torch.Tensor:
    """Per sample, the first candidate the model misclassifies; the first candidate where none does.

    Attacks end with ``keep_fooled(model, y, [x_adv, ..., x])``: a point counted as fooled by any candidate stays
    fooled, and listing the clean ``x`` last makes robust accuracy never exceed clean accuracy, by construction.
    """
    out = candidates[0].clone()
    fooled = predict(model, out) != y
    for cand in candidates[1:]:
        if bool(fooled.all()):
            break
        take = ~fooled & (predict(model, cand) != y)
        out[take] = cand[take]
        fooled |= take
    return out
