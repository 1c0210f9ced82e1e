"""Auto-PGD, L∞ (Croce & Hein, ICML 2020, arXiv 2003.01690): APGD-CE and APGD-T (targeted DLR).

An in-house implementation that follows the reference ``autopgd_base.py`` of fra31/auto-attack (the copy shipped in
``pyautoattack`` 0.2.0) step for step, so the two agree to the sample when fed the same random numbers (see
``tests/training/test_attacks_agreement.py``):

- start: x + ε·t/‖t‖∞ with t ~ U[−1,1]ⁿ (so one coordinate sits on the sphere), clamped to [0,1];
- step size η = 2ε, per sample; momentum: z = P(x_k + η·sign(∇)),
  x_{k+1} = P(x_k + 0.75·(z − x_k) + 0.25·(x_k − x_{k−1})) (no momentum on the first step);
- checkpoints: the first after p₁·N_iter = 0.22·N_iter iterations, then every k iterations with k shrinking by
  0.03·N_iter down to 0.06·N_iter. At a checkpoint η is halved, and the iterate reset to the best point, for the samples
  where (1) the loss increased in at most ρ = 0.75 of the last k steps, or (2) η was not halved at the previous
  checkpoint and the best loss has not improved since. (As in the reference, the very first window compares its
  oldest step against a zero-filled row; we keep that quirk so the step-size schedule is the same.)
- the best point (highest loss) and the last iterate that misclassifies are tracked per sample.

Which iterate is returned: for a sample the attack fools, the last iterate that misclassified it (the reference's
``x_best_adv``); for a sample it does not fool, the best point, i.e. the highest-loss iterate found (the reference
returns the clean input there; robust accuracy is the same). Samples the model already misclassifies are returned
unchanged (they are not attacked). Restarts (and, for APGD-T, the target classes) only run on the samples still
robust, as in AutoAttack.

APGD-T uses the targeted DLR loss against the classes ranked 2nd, 3rd, ... by the clean logits, one run per target
class; 9 targets by default (``min(9, num_classes − 1)``). The DLR losses need ≥ 4 classes.
"""
from __future__ import annotations

from typing import Callable

import torch

from training.attacks._util import (
    broadcast,
    ce_loss,
    dlr_loss,
    dlr_loss_targeted,
    loss_and_grad,
    predict,
    project,
    rand,
)
from training.registry import ATTACKS

__all__ = ["apgd_ce", "apgd_t", "apgd_single_run"]


def _check_oscillation(loss_steps: torch.Tensor, j: int, k: int, rho: float) -> torch.Tensor:
    """Condition (1): the loss increased in at most ρ·k of the last k steps (True where the step size must drop).

    Row j − c − 1 is negative for the first window and wraps to the last (still zero) row, exactly as in the
    reference; see the module docstring.
    """
    increases = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for c in range(k):
        increases += (loss_steps[j - c] > loss_steps[j - c - 1]).float()
    return increases <= k * rho


def apgd_single_run(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    n_iter: int,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start; ``loss_fn(logits)`` is the per-sample loss to maximise.

    Returns ``(x_best, robust, loss_best, x_best_adv)``: the highest-loss iterate, whether the sample survived every
    iterate, that loss, and the last iterate that misclassified it (the start where none did).
    """
    n = x.shape[0]
    # checkpoint schedule (p_{j+1} − p_j shrinks from 0.22 to 0.06 by steps of 0.03, in iterations)
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)

    t = 2 * rand(x.shape, generator, x) - 1
    x_adv = (x + eps * t / (broadcast(t.abs().flatten(1).amax(1), x) + 1e-12)).clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros(n_iter, n, device=x.device)

    logits, loss_indiv, grad = loss_and_grad(model, x_adv, loss_fn)
    grad_best = grad.clone()
    robust = logits.argmax(1) == y
    loss_best = loss_indiv.clone()

    step_size = torch.full((n,) + (1,) * (x.dim() - 1), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_adv_old = x_adv.clone()
    k = n_iter_2
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)

    for i in range(n_iter):
        with torch.no_grad():
            momentum = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            z = project(x_adv + step_size * grad.sign(), x, eps)
            x_adv = project(x_adv + (z - x_adv) * a + momentum * (1 - a), x, eps)

        logits, loss_indiv, grad = loss_and_grad(model, x_adv, loss_fn)
        with torch.no_grad():
            correct = logits.argmax(1) == y
            robust &= correct
            x_best_adv[~correct] = x_adv[~correct]

            loss_steps[i] = loss_indiv
            improved = loss_indiv > loss_best
            x_best[improved] = x_adv[improved]
            grad_best[improved] = grad[improved]
            loss_best[improved] = loss_indiv[improved]

            counter3 += 1
            if counter3 == k:
                no_progress = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                reduce = torch.max(_check_oscillation(loss_steps, i, k, rho).float(), no_progress)
                reduced_last_check = reduce.clone()
                loss_best_last_check = loss_best.clone()
                r = reduce > 0
                if bool(r.any()):
                    # halve η and restart from the best point with its gradient
                    step_size[r] /= 2.0
                    x_adv[r] = x_best[r]
                    grad[r] = grad_best[r]
                k = max(k - size_decr, n_iter_min)
                counter3 = 0

    return x_best, robust, loss_best, x_best_adv


def _apgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None,
    n_iter: int,
    n_restarts: int,
    rho: float,
    make_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Callable[[torch.Tensor], torch.Tensor]],
    runs: list[int],
) -> torch.Tensor:
    """Shared driver: for each entry of ``runs`` (a target rank for APGD-T, a dummy for APGD-CE) and each restart,
    attack the samples still robust; keep fooling iterates, otherwise the highest-loss one."""
    x, y = x.detach(), y.detach()
    robust = predict(model, x) == y
    adv = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for run in runs:
        for _ in range(n_restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                return adv
            xs, ys = x[idx], y[idx]
            loss_fn = make_loss(model, xs, ys, run)
            x_best, rob, loss_best, x_best_adv = apgd_single_run(
                model, xs, ys, loss_fn, eps=eps, n_iter=n_iter, rho=rho, generator=generator
            )
            fooled = ~rob
            adv[idx[fooled]] = x_best_adv[fooled]
            robust[idx[fooled]] = False
            better = rob & (loss_best > best_loss[idx])
            adv[idx[better]] = x_best[better]
            best_loss[idx[better]] = loss_best[better]
    return adv


@ATTACKS.register("apgd_ce")
def apgd_ce(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    n_iter: int = 100,
    n_restarts: int = 1,
    rho: float = 0.75,
    loss: str = "ce",
) -> torch.Tensor:
    """APGD on the cross-entropy (``loss="dlr"``: on the untargeted DLR loss, AutoAttack's APGD-DLR).

    Defaults are AutoAttack "standard": 100 iterations, 1 restart, ρ = 0.75. See the module docstring for the
    iterate returned.
    """
    losses = {"ce": ce_loss, "dlr": dlr_loss}
    if loss not in losses:
        raise ValueError(f"unknown APGD loss {loss!r}; known: {', '.join(losses)}")
    fn = losses[loss]
    return _apgd(
        model, x, y, eps=eps, generator=generator, n_iter=n_iter, n_restarts=n_restarts, rho=rho,
        make_loss=lambda _m, _x, ys, _r: (lambda z: fn(z, ys)), runs=[0],
    )


@ATTACKS.register("apgd_t")
def apgd_t(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    n_iter: int = 100,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD on the targeted DLR loss, one run per target class (the classes ranked 2 .. n_target_classes + 1 by the
    clean logits of the samples still robust). Defaults are AutoAttack "standard": 100 iterations, 9 targets,
    1 restart each."""
    with torch.no_grad():
        num_classes = model(x[:1].detach()).shape[1]
    if num_classes < 4:
        raise ValueError(f"apgd_t's targeted DLR loss needs at least 4 classes, the model has {num_classes}")
    n_targets = min(n_target_classes, num_classes - 1)

    def make_loss(m, xs, ys, target_rank):
        with torch.no_grad():
            y_target = m(xs).sort(dim=1)[1][:, -target_rank]
        return lambda z: dlr_loss_targeted(z, ys, y_target)

    return _apgd(
        model, x, y, eps=eps, generator=generator, n_iter=n_iter, n_restarts=n_restarts, rho=rho,
        make_loss=make_loss, runs=list(range(2, n_targets + 2)),
    )
