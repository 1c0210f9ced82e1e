"""FGSM (Goodfellow et al. 2015, arXiv 1412.6572), optionally with a uniform random start (FGSM-RS, Wong et al. 2020,
arXiv 2001.03994): one signed-gradient step of the cross-entropy, projected onto the L∞ ε-ball and [0,1].

The "FGSM" column of the evaluation protocol (spec ``at_methods.md`` §8) is the random-start variant with α = ε:
δ ~ U[−ε, ε], x + δ clamped to [0,1], one step of α, clip to the ε-ball, clamp to [0,1]. The reference runs it through
its PGD loop with one iteration, which leaves a sample whose random start is already misclassified where it is;
:func:`fgsm` keeps that behaviour (a start that fools the model is returned in place of the step).
"""
from __future__ import annotations

import torch

from training.attacks._util import ce_loss, keep_fooled, loss_and_grad, project, rand
from training.registry import ATTACKS

__all__ = ["fgsm"]


@ATTACKS.register("fgsm")
def fgsm(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    alpha: float | None = None,
    random_start: bool = False,
) -> torch.Tensor:
    """One-step L∞ attack on the cross-entropy.

    Args:
        eps: radius of the L∞ ball, in pixel units (8/255 for CIFAR-10).
        alpha: step size in pixel units; None means α = ε (plain FGSM, and the protocol's FGSM-RS column).
        random_start: start from x + U[−ε, ε] (clamped to [0,1]) instead of x.

    Returns ``x_adv`` (detached): per sample, the stepped point, or, if the stepped point is classified correctly
    but the random start (or the clean input) is not, that point instead.
    """
    x, y = x.detach(), y.detach()
    alpha = eps if alpha is None else alpha
    if random_start:
        x_start = (x + (2 * rand(x.shape, generator, x) - 1) * eps).clamp(0.0, 1.0)
    else:
        x_start = x
    _, _, grad = loss_and_grad(model, x_start, lambda z: ce_loss(z, y), reduction="mean")
    x_adv = project(x_start + alpha * grad.sign(), x, eps)
    return keep_fooled(model, y, [x_adv, x_start, x] if random_start else [x_adv, x])
