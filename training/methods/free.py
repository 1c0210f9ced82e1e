"""``free``: Free adversarial training (Shafahi et al., arXiv 1904.12843; spec §6).

Each minibatch is replayed m times; one forward and one backward per replay give ∇θ and ∇δ together; δ is one
persistent batch-shaped buffer, never reset between minibatches (a warm start), sliced for a short last batch.
The schedule steps once per replay.

How epochs are counted (``divide_epochs``):
- false (default, the thesis): ``epochs`` passes over the data, each replaying every minibatch m times (m x the
  optimiser steps of the other methods). Thesis §3.4.4, before "Results on CIFAR10": "to ensure fairness of
  comparison, the number of epochs were not divided by m such that the total number of epochs remains the same
  with the other fast AT methods"; its times agree (Free/FGSM-RS = 215/51 min ≈ 4.2x). Wong et al.'s
  ``train_free.py`` counts the same way (``--epochs 10`` = 10 data passes at m = 8).
- true (Shafahi et al.'s FREE code, ``ceil(90 / m)`` on ImageNet): ceil(epochs / m) passes, the same number of
  optimiser steps as ``epochs`` epochs of the other methods.
Correction to ../shared/spec/at_methods.md: its §6 line "How epochs are counted: the number of passes over the
data is (epoch budget)/m", given as common to the implementations, holds for FREE and RO only (its own RS bullet
and the thesis paragraph below it say otherwise), and its §9 row gives the thesis's count correctly. This
module once followed that line and always divided; the thesis's tables are reproduced with ``divide_epochs: false``.

Deviation: before the first replay of a new minibatch the carried-over δ is clamped so that x+δ ∈ [0,1] for the
new images (the reference feeds x+δ unclamped until the first update).
Relu_softplus_grad: one backward serves attacker and optimiser, so the phases can't be separated; it runs in
the "train" phase.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.activations import grad_phase
from training.methods.base import Method, project
from training.registry import METHODS
from training.schema import FreeParams


@METHODS.register("free")
class Free(Method):
    Params = FreeParams
    passes = {"fwd": 1, "bwd_full": 1, "bwd_input": 0}  # per replay

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.replays = params.m
        self.delta: torch.Tensor | None = None

    def step(self, x, y, it):
        ctx, n = self.ctx, len(y)
        if self.delta is None or self.delta.shape[0] < n or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        delta = project(x, self.delta[:n], self.eps)
        step = self.alpha(1.0, relative=True)
        losses, correct = [], 0
        for _ in range(self.p.m):
            d = delta.detach().requires_grad_(True)
            with grad_phase("train"):
                logits = ctx.forward(x + d)
                loss = F.cross_entropy(logits, y)
                ctx.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            delta = project(x, d.detach() + step * d.grad.sign(), self.eps)
            ctx.optimizer.step()
            ctx.schedule.step()
            losses.append(loss.detach())
            correct = correct + (logits.detach().argmax(1) == y).sum()
        self.delta[:n] = delta
        return {"loss": torch.stack(losses).mean(), "correct": correct / self.p.m, "n": torch.tensor(n)}

    def state_dict(self):
        return {"delta": self.delta} if self.delta is not None else {}

    def load_state_dict(self, state):
        self.delta = state.get("delta")
        if self.delta is not None:
            self.delta = self.delta.to(self.ctx.device)
