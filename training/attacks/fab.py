"""Targeted FAB, L∞ (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", arXiv 1907.02044), as AutoAttack's "standard" version runs it (FAB-T: 9 target classes, 100 iterations,
1 restart).

In-house rather than a wrapper: the targeted variant needs a single hyperplane per sample (the linearised decision
boundary between the true class y and the target t), so the whole attack is ~100 lines, runs on CPU and CUDA alike, and
takes input gradients with ``torch.autograd.grad`` (the reference calls ``backward()``, which fills the model's weight
``.grad``). It follows the reference ``fab_base.py`` / ``fab_pt.py`` of fra31/auto-attack (copy in ``pyautoattack``
0.2.0) step for step:

- at x_k, linearise f(x) = z_t(x) − z_y(x): the boundary is the hyperplane w·x = b with w = ∇f(x_k),
  b = w·x_k − f(x_k);
- project both x_k and the original x_0 onto that hyperplane within the box [0,1]ⁿ (the minimal L∞ step,
  :func:`project_linf`), giving d_k and d_0;
- x_{k+1} = clip_[0,1]((1 − α)(x_k + η d_k) + α(x_0 + η d_0)), with α = min(‖d_k‖∞/(‖d_k‖∞ + ‖d_0‖∞), α_max),
  η = 1.05 (overshoot), α_max = 0.1;
- when x_{k+1} is misclassified, keep it if it is the closest adversarial point so far, and pull it back towards x_0:
  x_{k+1} ← x_0 + β(x_{k+1} − x_0), β = 0.9.

Restarts after the first start from x_0 + (ε/2)·t/‖t‖∞ with t ~ U[−1,1]ⁿ (the generator's stream).

Which point is returned: FAB minimises the distortion, so for a sample with an adversarial point of L∞ norm ≤ ε it
returns the smallest-norm adversarial point found; otherwise the clean input (like the reference; FAB has no notion of
a best non-adversarial iterate). Samples the model already misclassifies are returned unchanged.
"""
from __future__ import annotations

import torch

from training.attacks._util import broadcast, loss_and_grad, predict, rand
from training.registry import ATTACKS

__all__ = ["fab_t", "project_linf"]


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise: the step d of least L∞ norm with w·(t + d) = b and t + d ∈ [0,1]ⁿ.

    If the box makes the hyperplane unreachable, d moves every coordinate to the bound on the hyperplane's side (the box
    corner closest to it), as the reference does. Shapes: t, w (m, n); b (m,).

    Derivation. Orient the hyperplane so that w·t ≥ b; we must lower w·x by c = b − w·t ≤ 0. Within radius r, coordinate
    i moves by at most p_i = distance to the bound that lowers w·x (t_i if w_i > 0, 1 − t_i if w_i < 0), so the most
    w·x can change is g(r) = −Σ |w_i| min(r, p_i): continuous, piecewise linear and non-increasing. With p sorted in
    decreasing order, at r = p_(m) the coordinates (0..m) are unsaturated, g(p_(m)) = S_m − A_m p_(m), where A_m is
    their Σ|w_i| and S_m the change contributed by the saturated rest. g(p_(m)) increases with m; the last m with
    g(p_(m)) < c brackets the root, and there r* = (c − S_m)/(−A_m). The reference finds the same m by bisection.
    """
    sign = torch.where((w * t).sum(1) - b >= 0, 1.0, -1.0).to(w.dtype)
    w = w * sign[:, None]
    b = b * sign
    lowers_by_increasing = w < 0
    corner = torch.where(lowers_by_increasing, 1.0 - t, -t)  # the step to the bound that lowers w·x
    p = corner.abs()
    need = b - (w * t).sum(1)  # c <= 0
    full = (w * corner).sum(1)  # g(∞): the most w·x can be lowered inside the box

    p_desc, order = p.sort(1, descending=True)
    a_cum = w.abs().gather(1, order).cumsum(1)  # A_m
    s_cum = full[:, None] - (w * corner).gather(1, order).cumsum(1)  # S_m
    g_at = s_cum - a_cum * p_desc
    m = ((g_at < need[:, None]).sum(1) - 1).clamp_min(0)[:, None]
    a_m = a_cum.gather(1, m).squeeze(1)
    r = ((need - s_cum.gather(1, m).squeeze(1)) / (-a_m).clamp(max=-1e-30)).clamp_min(0.0)[:, None]
    d = torch.where(lowers_by_increasing, torch.min(r, corner), torch.max(-r, corner))
    feasible = (need - full > 0)[:, None]
    d = torch.where(feasible, d, corner)
    return d * (w != 0)


def _fab_targeted_run(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target_rank: int,
    *,
    eps: float,
    n_iter: int,
    alpha_max: float,
    eta: float,
    beta: float,
    random_start: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One FAB-T run against the class ranked ``target_rank`` by the clean logits; returns, per sample, the closest
    adversarial point found (any norm) or ``x`` where none was found."""
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    out = x.clone()
    if not bool(correct.any()):
        return out
    idx = correct.nonzero().squeeze(1)
    y_target = logits.sort(dim=-1)[1][:, -target_rank][idx]
    x0, y0 = x[idx], y[idx]
    bs = x0.shape[0]
    x0_flat = x0.flatten(1)
    adv = x0.clone()
    best_norm = torch.full((bs,), 1e10, device=x.device)

    x1 = x0.clone()
    if random_start:
        t = 2 * rand(x1.shape, generator, x1) - 1
        x1 = (x0 + eps * t / broadcast(t.flatten(1).abs().amax(1), x1) * 0.5).clamp(0.0, 1.0)

    def boundary_gap(z: torch.Tensor) -> torch.Tensor:
        zz = z.gather(1, torch.stack([y0, y_target], 1))
        return zz[:, 1] - zz[:, 0]  # z_t − z_y: the target wins where > 0

    for _ in range(n_iter):
        _, f, g = loss_and_grad(model, x1, boundary_gap)
        with torch.no_grad():
            w = g.flatten(1)
            b = -f + (w * x1.flatten(1)).sum(1)
            d3 = project_linf(torch.cat((x1.flatten(1), x0_flat), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1, d2 = d3[:bs].view_as(x1), d3[bs:].view_as(x1)
            a0 = d3.abs().amax(1).clamp_min(1e-8)
            a1, a2 = a0[:bs], a0[bs:]
            alpha = broadcast((a1 / (a1 + a2)).clamp(0.0, alpha_max), x1)
            x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha).clamp(0.0, 1.0)

            is_adv = predict(model, x1) != y0
            if bool(is_adv.any()):
                norm = (x1 - x0).flatten(1).abs().amax(1)
                closer = is_adv & (norm < best_norm)
                adv[closer] = x1[closer]
                best_norm = torch.where(closer, norm, best_norm)
                x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta

    found = best_norm < 1e10
    out[idx[found]] = adv[found]
    return out


@ATTACKS.register("fab_t")
def fab_t(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    n_iter: int = 100,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
) -> torch.Tensor:
    """Targeted L∞ FAB; a sample counts as fooled only by an adversarial point within the ε-ball.

    Defaults are AutoAttack "standard" (100 iterations, 9 targets = ``min(9, num_classes − 1)``, 1 restart, α_max 0.1,
    η 1.05, β 0.9). See the module docstring for the point returned.
    """
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        logits = model(x)
    robust = logits.argmax(1) == y
    n_targets = min(n_target_classes, logits.shape[1] - 1)
    adv = x.clone()
    for target_rank in range(2, n_targets + 2):
        for restart in range(n_restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                return adv
            xs, ys = x[idx], y[idx]
            cand = _fab_targeted_run(
                model, xs, ys, target_rank, eps=eps, n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta,
                random_start=restart > 0, generator=generator,
            )
            dist = (cand - xs).flatten(1).abs().amax(1)
            fooled = (predict(model, cand) != ys) & (dist <= eps)
            adv[idx[fooled]] = cand[fooled]
            robust[idx[fooled]] = False
    return adv
