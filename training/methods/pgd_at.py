"""``pgd_at``: PGD adversarial training (Madry et al. arXiv 1706.06083; Rice et al.'s recipe, spec §7).

Per batch, in train mode: δ ~ U[-ε,ε] (clamped to the image), K steps δ ← Proj(δ + α·sign ∇ₓCE), train on x+δ.
Deviations from Rice's code, both pure savings that leave the weight update unchanged: the attack steps take
input-only gradients (Rice: a full backward per step), and the extra clean forward used only for logging is
dropped (it also nudged the BN running statistics).
"""
from __future__ import annotations

from training.methods.base import Method, project, uniform_delta
from training.registry import METHODS
from training.schema import PGDATParams


@METHODS.register("pgd_at")
class PGDAT(Method):
    Params = PGDATParams
    passes = {"fwd": 11, "bwd_full": 1, "bwd_input": 10}

    def step(self, x, y, it):
        alpha = self.alpha(2.0)
        delta = uniform_delta(x, self.eps)
        for _ in range(self.p.steps):
            g, _ = self.ctx.input_grad(x + delta, y)
            delta = project(x, delta + alpha * g.sign(), self.eps)
        loss, logits = self.ctx.train_on(x + delta, y)
        return self.stats(loss, logits, y)
