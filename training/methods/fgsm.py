"""Single-step methods: ``fgsm`` (zero start), ``fgsm_rs``, ``fgsm_ga`` (GradAlign), ``fgsm_ckpt``.

- FGSM-RS: Wong, Rice & Kolter, "Fast is better than free", arXiv 2001.03994 (spec §3).
- GradAlign: Andriushchenko & Flammarion, arXiv 2007.02617 (spec §5).
- FGSM-CKPT: Kim, Lee & Lee, "Understanding catastrophic overfitting in single-step AT", arXiv 2010.01799 (§4).

Deviation shared by all: the attack gradient is taken with respect to the input only (the references do a full
``loss.backward()`` that also fills the weight gradients and throws them away); the weights see the same update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.methods.base import Method, clip_eps, project, uniform_delta
from training.registry import METHODS
from training.schema import FGSMCKPTParams, FGSMGAParams, FGSMParams, FGSMRSParams


@METHODS.register("fgsm")
class FGSM(Method):
    """FGSM from a zero start: δ = clip_ε(α·sign ∇ₓCE(f(x), y)), α = ε by default; x+δ clamped to [0,1]."""

    Params = FGSMParams
    passes = {"fwd": 2, "bwd_full": 1, "bwd_input": 1}

    def step(self, x, y, it):
        g, _ = self.ctx.input_grad(x, y)
        delta = project(x, self.alpha(1.0, relative=True) * g.sign(), self.eps)
        loss, logits = self.ctx.train_on(x + delta, y)
        return self.stats(loss, logits, y)


@METHODS.register("fgsm_rs")
class FGSMRS(Method):
    """FGSM-RS (spec §3): δ ~ U[-ε,ε] (clamped to the image), one step of α = 1.25ε, clip, clamp, train."""

    Params = FGSMRSParams
    passes = {"fwd": 2, "bwd_full": 1, "bwd_input": 1}

    def step(self, x, y, it):
        delta = uniform_delta(x, self.eps)
        g, _ = self.ctx.input_grad(x + delta, y)
        delta = project(x, delta + self.alpha(1.25, relative=True) * g.sign(), self.eps)
        loss, logits = self.ctx.train_on(x + delta, y)
        return self.stats(loss, logits, y)


@METHODS.register("fgsm_ga")
class FGSMGA(Method):
    """FGSM with GradAlign (spec §5): zero-start FGSM (step 1.25ε, clipped to ε) plus
    R = λ·(1 − mean cos(∇ₓCE(x), ∇ₓCE(x+η))), η ~ U[-ε,ε]^n, double-backpropagated.

    λ defaults to the paper's CIFAR-10 rule λ(ε) = 0.02·10^(ε·255/8) (0.2 at 8/255, 2.0 at 16/255).
    """

    Params = FGSMGAParams
    passes = {"fwd": 3, "bwd_full": 2, "bwd_input": 1}  # + a double backprop through the g2 graph

    @property
    def lam(self) -> float:
        if self.p.grad_align_lambda is not None:
            return self.p.grad_align_lambda
        return FGSMGAParams.default_lambda(self.eps * 255)

    def step(self, x, y, it):
        g1, _ = self.ctx.input_grad(x, y)
        delta = project(x, self.alpha(1.25, relative=True) * g1.sign(), self.eps)

        def regulariser() -> torch.Tensor:
            eta = torch.empty_like(x).uniform_(-self.eps, self.eps)
            xe = (x + eta).requires_grad_(True)
            # g2 with a graph, so the cosine term is differentiated through it (double backprop)
            g2 = torch.autograd.grad(F.cross_entropy(self.ctx.forward(xe), y), xe, create_graph=True)[0]
            a, b = g1.flatten(1), g2.flatten(1)
            keep = (a.norm(dim=1) > 0) & (b.norm(dim=1) > 0)  # only samples whose gradients are both non-zero
            if not keep.any():
                return torch.zeros((), device=x.device)
            cos = F.cosine_similarity(a[keep], b[keep], dim=1)
            return self.lam * (1.0 - cos.mean())

        loss, logits = self.ctx.train_on(x + delta, y, extra=regulariser)
        return self.stats(loss, logits, y)


@METHODS.register("fgsm_ckpt")
class FGSMCKPT(Method):
    """FGSM-CKPT (spec §4): per sample, the smallest of c equally spaced fractions of the FGSM-RS perturbation
    that already flips the label; clean x where the random start is already misclassified.

    As the reference (through torchattacks 2.12), the attack and the checkpoint passes run in eval mode and
    the training pass in train mode. The step α defaults to 1.25ε: the reference's fixed 10/255 is its default at
    ε = 8/255 (spec §4), so it scales with ε here as FGSM-RS's does (a fixed 10/255 would be 0.625ε at 16/255);
    ``alpha_255`` sets it in /255.
    """

    Params = FGSMCKPTParams
    passes = {"fwd": 2 + 2 / 3, "bwd_full": 1, "bwd_input": 1}  # checkpoint forwards only on the correct subset

    def step(self, x, y, it):
        model = self.ctx.model
        was_training = model.training
        model.eval()
        try:
            x0 = (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0, 1)
            g, logits0 = self.ctx.input_grad(x0, y)
            x1 = (x + clip_eps(x0 + self.alpha(1.25, relative=True) * g.sign() - x, self.eps)).clamp(0, 1)
            d = x1 - x
            chosen = x1.clone()
            wrong0 = logits0.argmax(1) != y
            chosen[wrong0] = x[wrong0]
            todo = ~wrong0  # still looking for the first flipping checkpoint
            with torch.no_grad():
                for j in range(1, self.p.c):
                    if not todo.any():
                        break
                    idx = todo.nonzero().flatten()
                    xj = x[idx] + (j / self.p.c) * d[idx]
                    flipped = self.ctx.forward(xj).argmax(1) != y[idx]
                    chosen[idx[flipped]] = xj[flipped]
                    todo[idx[flipped]] = False
        finally:
            model.train(was_training)
        loss, logits = self.ctx.train_on(chosen, y)
        return self.stats(loss, logits, y)
