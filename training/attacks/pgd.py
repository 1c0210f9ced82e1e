"""L∞ PGD (Madry et al. 2018, arXiv 1706.06083) as the evaluation protocol runs it, and the protocol's "C&W" column.

The loop follows the FGSM-SDI / fast_adversarial evaluation code (spec ``at_methods.md`` §8):

- random start δ ~ U[−ε, ε], then x + δ clamped to [0,1];
- each step: δ ← clip_ε(δ + α·sign(∇_δ L)), then x + δ clamped to [0,1];
- per-sample early stop: only samples still classified correctly are updated (a sample is frozen at the first
  iterate that fools the model; the loop ends when every sample is fooled);
- across restarts, per sample, the δ with the larger cross-entropy is kept (CE even for the CW loss, as the
  reference does) - except that a δ which misclassifies always wins over one that does not, so a sample fooled by any
  restart counts as fooled.

Which iterate is returned: for each restart, the *final* iterate of that restart's loop, which, because of the early
stop, is the first iterate that fooled the model for a fooled sample and the last step (no best-loss tracking) for a
sample that was never fooled; then the restart chosen by the rule above. The clean input competes as a last resort,
so a sample the model already gets wrong is never returned classified correctly.

``cw`` is the thesis's C&W column: PGD-20 under L∞ with α = 2/255, random start, one restart and the CW margin loss
−(z_y − max_{j≠y} z_j); it is not the L2 optimisation attack of Carlini & Wagner.
"""
from __future__ import annotations

import torch

from training.attacks._util import ce_loss, cw_loss, loss_and_grad, predict, rand
from training.registry import ATTACKS

__all__ = ["pgd", "cw"]

_LOSSES = {"ce": ce_loss, "cw": cw_loss}


def _pgd_single_restart(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    loss: str,
    early_stop: bool,
) -> torch.Tensor:
    loss_fn = _LOSSES[loss]
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        xa, ya, da = x[active], y[active], delta[active]
        # the batch-mean loss as in the reference; the mean's scale does not change sign(∇)
        logits, _, grad = loss_and_grad(model, xa + da, lambda z: loss_fn(z, ya), reduction="mean")  # noqa: B023 - called within this iteration
        if early_stop:
            # Forward passes only on the still-correct samples: a frozen sample's prediction cannot change (eval
            # mode, deterministic model), so this equals the reference's full-batch check at a fraction of the cost.
            still = logits.argmax(1) == ya
            if not bool(still.any()):
                break
            xa, da, grad, active = xa[still], da[still], grad[still], active[still]
        with torch.no_grad():
            da = (da + alpha * grad.sign()).clamp(-eps, eps)
            da = torch.max(torch.min(da, 1.0 - xa), -xa)  # keep x + δ in [0,1]
            delta[active] = da
    return delta


@ATTACKS.register("pgd")
def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    steps: int = 10,
    alpha: float = 2 / 255,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    early_stop: bool = True,
) -> torch.Tensor:
    """L∞ PGD on the CE (``loss="ce"``) or CW margin (``loss="cw"``) loss.

    Args:
        eps: radius of the L∞ ball, pixel units.
        steps: gradient steps per restart.
        alpha: step size, pixel units (the protocol uses 2/255 whatever ε is).
        restarts: independent random starts; per sample the misclassifying / highest-CE one is kept.
        random_start: uniform start in the ε-ball (the protocol's setting); False starts at x.
        loss: ``"ce"`` or ``"cw"``.
        early_stop: freeze a sample once it is misclassified (the reference's behaviour; see the module docstring).

    Returns ``x_adv`` (detached), see the module docstring for which iterate.
    """
    if loss not in _LOSSES:
        raise ValueError(f"unknown PGD loss {loss!r}; known: {', '.join(_LOSSES)}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    x, y = x.detach(), y.detach()
    best = x.clone()
    best_fooled = predict(model, x) != y  # the clean input is the candidate every restart must beat
    best_ce = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for _ in range(restarts):
        if random_start:
            delta = (2 * rand(x.shape, generator, x) - 1) * eps
            delta = torch.max(torch.min(delta, 1.0 - x), -x)
        else:
            delta = torch.zeros_like(x)
        delta = _pgd_single_restart(
            model, x, y, delta, eps=eps, alpha=alpha, steps=steps, loss=loss, early_stop=early_stop
        )
        with torch.no_grad():
            logits = model(x + delta)
            fooled = logits.argmax(1) != y
            ce = ce_loss(logits, y)
            take = (fooled & ~best_fooled) | ((fooled == best_fooled) & (ce >= best_ce))
            best[take] = (x + delta)[take]
            best_fooled |= fooled
            best_ce = torch.where(take, ce, best_ce)
    return best


@ATTACKS.register("cw")
def cw(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    steps: int = 20,
    alpha: float = 2 / 255,
    restarts: int = 1,
) -> torch.Tensor:
    """The protocol's "C&W" column: L∞ PGD-``steps`` on the CW margin loss, random start (spec §8)."""
    return pgd(
        model, x, y, eps=eps, generator=generator, steps=steps, alpha=alpha, restarts=restarts, loss="cw",
        random_start=True,
    )
