"""Square Attack, L∞ (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, arXiv 1912.00049): a score-based
black-box random search, AutoAttack's last stage (5000 queries, p_init 0.8, 1 restart).

In-house (it needs forward passes only, ~80 lines) and faithful to the reference ``square.py`` of fra31/auto-attack
(copy in ``pyautoattack`` 0.2.0), including the order of its random draws, so that with a CPU generator seeded like
the reference's global seed both produce the same queries:

- start: vertical stripes, x + ε·s with s ∈ {−1, +1} drawn per (sample, channel, column), clamped to [0,1];
- iteration i: a square of side s_i = round(√(p_i·H·W)) (at least 1, at most min(H, W)) at a random position
  (one position for the whole batch, as in the reference), filled per channel with ±2ε, added to the current best
  point and projected onto the ε-ball and [0,1]; the candidate is kept where it lowers the margin loss
  z_y − max_{j≠y} z_j (or misclassifies);
- p_i follows the reference's piecewise-constant schedule p_init/2^j at iterations 10, 50, 200, 500, 1000, 2000, 4000,
  6000, 8000 (``resc_schedule=True`` rescales it to ``n_queries``; AutoAttack's standard run does not);
- only samples not yet fooled are queried; the loop stops once all are fooled.

Which point is returned: per sample, the best point found (lowest loss; for a fooled sample, the first point that
fooled it, which is never replaced since fooled samples stop being queried); samples the model already misclassifies
are returned unchanged. With restarts, a later restart only runs on the samples still robust.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.attacks._util import predict, project, rand
from training.registry import ATTACKS

__all__ = ["square"]


def _p_selection(p_init: float, it: int, n_queries: int, rescale: bool) -> float:
    """Fraction of pixels the square covers at iteration ``it`` (the reference's schedule)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _margin_and_loss(model, x, y, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(x)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    margin = z_y - other
    if loss == "ce":
        return margin, -F.cross_entropy(logits, y, reduction="none")
    return margin, margin


def _random_sign(shape, generator, like):
    return torch.sign(2 * rand(shape, generator, like) - 1)


def _random_int(high: int, generator, like) -> int:
    # the reference's (0 + high·u).long(): an integer in [0, high), with high itself never drawn
    return int((high * rand((1,), generator, like)).long().item())


def _square_single_run(model, x, y, *, eps, n_queries, p_init, loss, rescale, generator) -> torch.Tensor:
    c, h, w = x.shape[1:]
    n_features = c * h * w
    x_best = (x + eps * _random_sign((x.shape[0], c, 1, w), generator, x)).clamp(0.0, 1.0)
    margin_min, loss_min = _margin_and_loss(model, x_best, y, loss)
    if bool((margin_min < 0.0).all()):
        return x_best

    for i_iter in range(n_queries):
        idx = (margin_min > 0.0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        x_curr, x_best_curr, y_curr = x[idx], x_best[idx], y[idx]
        margin_min_curr, loss_min_curr = margin_min[idx], loss_min[idx]

        p = _p_selection(p_init, i_iter, n_queries, rescale)
        s = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
        vh = _random_int(h - s, generator, x)
        vw = _random_int(w - s, generator, x)
        new_deltas = torch.zeros((c, h, w), device=x.device, dtype=x.dtype)
        new_deltas[:, vh:vh + s, vw:vw + s] = 2.0 * eps * _random_sign((c, 1, 1), generator, x)

        x_new = project(x_best_curr + new_deltas, x_curr, eps)
        margin, loss_new = _margin_and_loss(model, x_new, y_curr, loss)

        improved = loss_new < loss_min_curr
        loss_min[idx] = torch.where(improved, loss_new, loss_min_curr)
        improved |= margin <= 0.0  # a misclassifying candidate is always taken
        margin_min[idx] = torch.where(improved, margin, margin_min_curr)
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_curr)

        if bool((margin_min <= 0.0).all()):
            break
    return x_best


@ATTACKS.register("square")
def square(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    n_queries: int = 5000,
    p_init: float = 0.8,
    n_restarts: int = 1,
    loss: str = "margin",
    resc_schedule: bool = False,
) -> torch.Tensor:
    """L∞ Square Attack on images (N, C, H, W). Defaults are AutoAttack "standard": 5000 queries, p_init 0.8,
    1 restart, margin loss, schedule not rescaled. See the module docstring for the point returned."""
    if x.dim() != 4:
        raise ValueError(f"square needs images shaped (N, C, H, W), got {tuple(x.shape)}")
    if loss not in ("margin", "ce"):
        raise ValueError(f"unknown Square loss {loss!r}; known: margin, ce")
    x, y = x.detach(), y.detach()
    robust = predict(model, x) == y
    adv = x.clone()
    for _ in range(n_restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        cand = _square_single_run(
            model, x[idx], y[idx], eps=eps, n_queries=n_queries, p_init=p_init, loss=loss,
            rescale=resc_schedule, generator=generator,
        )
        adv[idx] = cand  # fooled or not, the best point found (restarts only revisit robust samples)
        robust[idx] = predict(model, cand) == y[idx]
    return adv
