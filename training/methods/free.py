"""``free``: Free adversarial training (Shafahi et al., arXiv 1904.12843; spec §6).

Each minibatch is replayed m times; one forward and one backward per replay give ∇θ and ∇δ together; δ is one
persistent batch-shaped buffer, never reset between minibatches (a warm start), sliced for a short last batch.
Epochs are counted as the spec says: ``epochs`` is the budget, the loop makes ceil(epochs / m) passes over the
data, so Free-AT gets the same number of optimiser steps as the other methods get in ``epochs`` epochs. The
schedule steps once per replay.

Deviation: before the first replay of a new minibatch the carried-over δ is clamped so that x+δ ∈ [0,1] for the
new images (the reference feeds x+δ unclamped until the first update).
Relu_softplus_grad: one backward serves attacker and optimiser, so the phases can't be separated; it runs in
the "train" phase.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.activations import grad_phase
from training.config import ConfigError, Params
from training.methods.base import Method, project
from training.registry import METHODS


@METHODS.register("free")
class Free(Method):
    @dataclass(frozen=True)
    class Params(Params):
        m: int = 8
        alpha_255: float | None = None  # step size; default ε

        def check(self, prefix: str) -> None:
            if self.m < 1:
                raise ConfigError(f"{prefix}.m", self.m, "must be >= 1")
            if self.alpha_255 is not None and self.alpha_255 <= 0:
                raise ConfigError(f"{prefix}.alpha_255", self.alpha_255, "must be > 0")

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
