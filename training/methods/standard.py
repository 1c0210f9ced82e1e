"""``standard``: no attack; clean training (the baseline every robust number is read against)."""
from __future__ import annotations

from training.methods.base import Method
from training.registry import METHODS
from training.schema import StandardParams


@METHODS.register("standard")
class Standard(Method):
    Params = StandardParams
    passes = {"fwd": 1, "bwd_full": 1, "bwd_input": 0}
    attacks = False  # clean accuracy far above PGD accuracy is expected here, not catastrophic overfitting

    def step(self, x, y, it):
        loss, logits = self.ctx.train_on(x, y)
        return self.stats(loss, logits, y)
