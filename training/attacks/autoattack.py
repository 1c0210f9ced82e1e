"""AutoAttack, L∞ "standard" version (Croce & Hein, ICML 2020, arXiv 2003.01690), as a cascade of our in-house attacks.

Spec ``at_methods.md`` §8: clean accuracy first, then APGD-CE (100 iterations, 1 restart, ρ = 0.75) → APGD-T (targeted
DLR, 100 iterations, 9 target classes, 1 restart each) → FAB-T (9 targets, 100 iterations, 1 restart) → Square
(5000 queries, p_init 0.8, 1 restart). Each stage runs only on the points every earlier stage left robust, and the
robust accuracy after each stage is reported; the last one is the "AA" number papers quote.

The cascade is a loop over a list of ``(stage name, registered attack, kwargs)`` (no shared mutable attack objects,
unlike the reference's if/elif dispatch). :func:`autoattack_stages` exposes the iteration and query budgets so tests
can run a cheap version with the same structure.

Returned ``x_adv``: for a point some stage fooled, that stage's adversarial point; for a point still robust at the
end (or misclassified when clean), the clean input, as the reference does.

Differences from ``AutoAttack(version='standard')``: randomness comes from the caller's generator (the reference
re-seeds the global RNG with one seed before every stage, default time-based); the reference's sanity checks are
reduced to a warning when the model seems to output probabilities instead of logits.
"""
from __future__ import annotations

import warnings

import torch

from training.attacks._util import predict
from training.registry import ATTACKS

__all__ = ["autoattack", "autoattack_stages", "STAGES"]

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")


def _check_logits(model: torch.nn.Module, x: torch.Tensor) -> None:
    # the reference's check_range_output: DLR and the margin losses are meaningless on probabilities
    with torch.no_grad():
        out = model(x[: min(len(x), 64)])
    if out.max() < 1.0 + 1e-5 and out.min() > -1e-5 and bool(((out.sum(-1) - 1.0).abs() < 1e-5).all()):
        warnings.warn("autoattack: the model's output looks like a probability distribution; pass logits",
                      stacklevel=3)


def autoattack_stages(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    n_iter: int = 100,
    n_target_classes: int = 9,
    n_queries: int = 5000,
    p_init: float = 0.8,
    rho: float = 0.75,
    stages: tuple[str, ...] = STAGES,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the cascade; returns ``(x_adv, {"clean": acc, "apgd_ce": acc_after, ..., "square": acc_after})``.

    Args:
        n_iter: iterations of APGD-CE, APGD-T and FAB-T (100 in the standard version).
        n_target_classes: target classes of APGD-T and FAB-T (9; capped at num_classes − 1).
        n_queries: Square's query budget (5000).
        stages: a subset of ``STAGES``, in cascade order.

    Accuracies are fractions of all points. A stage that finds no robust point left reports the previous accuracy.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown AutoAttack stage(s) {unknown}; known: {', '.join(STAGES)}")
    stage_kwargs = {
        "apgd_ce": {"n_iter": n_iter, "n_restarts": 1, "rho": rho},
        "apgd_t": {"n_iter": n_iter, "n_target_classes": n_target_classes, "n_restarts": 1, "rho": rho},
        "fab_t": {"n_iter": n_iter, "n_target_classes": n_target_classes, "n_restarts": 1},
        "square": {"n_queries": n_queries, "p_init": p_init, "n_restarts": 1},
    }
    x, y = x.detach(), y.detach()
    n = x.shape[0]
    if n == 0:
        return x.clone(), {"clean": 0.0, **{s: 0.0 for s in stages}}
    _check_logits(model, x)
    robust = predict(model, x) == y
    x_adv = x.clone()
    accs = {"clean": int(robust.sum()) / n}
    for name in stages:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() > 0:
            adv = ATTACKS.get(name)(model, x[idx], y[idx], eps=eps, generator=generator, **stage_kwargs[name])
            fooled = predict(model, adv) != y[idx]
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        accs[name] = int(robust.sum()) / n
    return x_adv, accs


@ATTACKS.register("autoattack")
def autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    **params,
) -> torch.Tensor:
    """AutoAttack "standard" (L∞); ``params`` as in :func:`autoattack_stages`. Returns ``x_adv`` only."""
    return autoattack_stages(model, x, y, eps=eps, generator=generator, **params)[0]
