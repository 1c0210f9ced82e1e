"""``fgsm_sdi``: FGSM with a learnable sample-dependent initialisation (Jia et al., arXiv 2110.05007; spec §2).

A small generator G_φ maps [x, sign ∇ₓCE(f(x), y)] to an initialisation η = ε·tanh(·). Every batch:

1. g0 = ∇ₓ CE(f(x), y)                                  (plain CE; input-only gradient)
2. every k-th batch of the epoch (t mod k = 0), the generator step: η = G(x, sign g0), g1 = ∇CE(f(x+η), y),
   δ = clip_ε(η + clip_ε(α·sign g1)); one Adam step on φ *maximising* LS-CE(f(x+δ), y).
3. the target step: G in eval mode, η recomputed without a graph (no wasted backward through G: the reference
   backpropagates through G here and then throws those gradients away), g1 at x+η, δ as above, one SGD step on
   θ minimising LS-CE(f(x+δ), y).

Choices, logged in the resolved config:
- ``label_smoothing`` is the reference's ``--factor`` (weight of the true class). Default 0.9: the value of the
  released script the published numbers were produced with (HEAD changed it to 0.5 in 2023; spec §2.3, §12.1).
- ``clamp`` (default true): x+δ is clamped to [0,1], as every baseline and evaluator does. The reference never
  clamps (spec §2.6.3); ``clamp: false`` reproduces it.
- The generator's lr schedule in the reference never reaches its milestones (spec §2.3): a constant lr here.
- Both f and G forwards run in train mode except G in step 3, as in the reference (BN statistics included).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from training.activations import grad_phase
from training.methods.base import Method, clip_eps, smoothed_ce
from training.registry import METHODS
from training.schema import FGSMSDIParams


class Generator(nn.Module):
    """The released one-block, 64-channel generator (spec §2.1): 6 -> 64 conv-BN-ReLU, one pre-activation
    residual block with PReLU, BN, 64 -> 3 conv, ε·tanh. About 81 M MACs per 32x32 image."""

    def __init__(self, in_channels: int = 3, width: int = 64, eps: float = 8 / 255) -> None:
        super().__init__()
        self.eps = eps
        self.stem = nn.Sequential(nn.Conv2d(2 * in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width, eps=1e-3), nn.ReLU())
        self.block = nn.Sequential(
            nn.BatchNorm2d(width, affine=False), nn.PReLU(init=0.25), nn.Conv2d(width, width, 3, 1, 1),
            nn.BatchNorm2d(width, affine=False), nn.PReLU(init=0.25), nn.Conv2d(width, width, 3, 1, 1),
        )
        for m in self.block:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=2**0.5)
        self.head = nn.Sequential(nn.BatchNorm2d(width, affine=False), nn.Conv2d(width, in_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, grad_sign: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([x, grad_sign], dim=1))
        h = h + self.block(h)
        return self.eps * torch.tanh(self.head(h))


@METHODS.register("fgsm_sdi")
class FGSMSDI(Method):
    Params = FGSMSDIParams

    # target passes per iteration (+ (2 fwd + 1 full bwd)/k on generator steps, + the generator's own passes)
    passes = {"fwd": 3, "bwd_full": 1, "bwd_input": 2}

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.gen: Generator | None = None
        self.gen_opt: torch.optim.Optimizer | None = None
        self.gen_steps = 0

    def _ensure_generator(self, channels: int) -> None:
        if self.gen is None:
            self.gen = Generator(channels, self.p.gen_width, self.eps).to(self.ctx.device)
            self.gen_opt = torch.optim.Adam(self.gen.parameters(), lr=self.p.gen_lr, weight_decay=self.p.gen_weight_decay)

    def _loss(self, logits, y):
        return smoothed_ce(logits, y, self.p.label_smoothing)

    def _delta(self, x, y, eta):
        """δ = clip_ε(η + clip_ε(α·sign ∇CE(f(x+η), y))); the gradient is taken at x+η, outside φ's graph."""
        g1, _ = self.ctx.input_grad(x + eta.detach(), y)
        delta = clip_eps(eta + clip_eps(self.alpha(1.0, relative=True) * g1.sign(), self.eps), self.eps)
        if self.p.clamp:
            # keep x+δ in [0,1]; written as δ + (clamped − unclamped).detach() so φ still gets the gradient of
            # the unclamped coordinates (a hard clamp would zero it where the image is saturated)
            delta = delta + ((x + delta).clamp(0, 1) - (x + delta)).detach()
        return delta

    def step(self, x, y, it):
        self._ensure_generator(x.shape[1])
        gen, ctx = self.gen, self.ctx
        g0, _ = ctx.input_grad(x, y)
        s0 = g0.sign()

        if it % self.p.k == 0:  # ------------------------------------------------ generator step
            gen.train()
            with grad_phase("attack"), ctx.autocast():
                delta = self._delta(x, y, gen(x, s0).float())
                gen_loss = -self._loss(ctx.forward(x + delta), y)
            grads = torch.autograd.grad(gen_loss, list(gen.parameters()))  # φ only: θ's grads aren't touched
            for p_, g_ in zip(gen.parameters(), grads):
                p_.grad = g_
            self.gen_opt.step()
            self.gen_opt.zero_grad(set_to_none=True)
            self.gen_steps += 1

        gen.eval()  # ------------------------------------------------------------- target step
        with torch.no_grad(), ctx.autocast():
            eta = gen(x, s0).float()
        delta = self._delta(x, y, eta)
        loss, logits = ctx.train_on(x + delta, y, loss_fn=self._loss)
        return self.stats(loss, logits, y)

    def counters(self):
        return {"gen_steps": self.gen_steps}  # generator updates so far: ceil(batches / k) per epoch

    def state_dict(self):
        if self.gen is None:
            return {}
        return {"gen": self.gen.state_dict(), "gen_opt": self.gen_opt.state_dict(), "gen_steps": self.gen_steps}

    def load_state_dict(self, state):
        if not state:
            return
        c = state["gen"]["stem.0.weight"].shape[1] // 2
        self._ensure_generator(c)
        self.gen.load_state_dict(state["gen"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.gen_steps = int(state["gen_steps"])
