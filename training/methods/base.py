"""What every training method shares: the step context and the helpers a step is written with.

A method is a class registered in ``METHODS`` with a ``Params`` model (its typed knobs in training/schema.py: the
run config's ``method`` section) and a ``step(x, y, it)`` that does one minibatch: builds the training examples
and updates the weights through ``ctx.train_on``. Helpers keep each method's step function-sized and the gradient hygiene in one
place:

- ``ctx.input_grad``: the gradient of the loss with respect to the *input only* (``torch.autograd.grad``), so
  attack steps never fill weight gradients (the reference repositories call ``loss.backward()`` there, which
  costs a full weight backward per attack step for nothing).
- ``ctx.train_on``: forward, loss, backward, optimiser step and schedule step (per iteration).
- Gradient phases (``training.activations.grad_phase``): attack forwards run in the "attack" phase and the
  weight update in the "train" phase, which is what lets ``relu_softplus_grad`` smooth the attacker's and the
  optimiser's gradients separately (SAT, thesis Table X).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.activations import grad_phase
from training.attacks._util import project as project_point
from training.schema import Params


@dataclass
class StepContext:
    model: nn.Module  # the (possibly compiled) model used for training passes
    optimizer: torch.optim.Optimizer
    schedule: Any  # training.schedules.Schedule
    eps: float
    num_classes: int
    device: torch.device
    precision: str = "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(x).float()

    def input_grad(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable = F.cross_entropy,
                   create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇ₓ loss(f(x), y), logits), in the attack phase, with respect to the input only."""
        x = x.detach().requires_grad_(True)
        with grad_phase("attack"):
            logits = self.forward(x)
            loss = loss_fn(logits, y)
            (g,) = torch.autograd.grad(loss, x, create_graph=create_graph)
        return g, logits.detach()

    def train_on(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable = F.cross_entropy,
                 extra: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One weight update on (x, y): forward, loss (+ ``extra(logits)``), backward, step, schedule step."""
        with grad_phase("train"):
            logits = self.forward(x)
            loss = loss_fn(logits, y)
            if extra is not None:
                loss = loss + extra()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach(), logits.detach()


class Method:
    """Base class. Subclasses set ``Params`` and implement ``step``."""

    Params: ClassVar[type[Params]]
    # passes per iteration, for the benchmark (spec §9): forward, full backward, input-only backward (target net)
    passes: ClassVar[dict[str, float]] = {}
    attacks: ClassVar[bool] = True  # trains on adversarial examples (False: standard; no CO check)
    replays: int = 1  # optimiser steps per minibatch (Free-AT: m)

    @classmethod
    def data_epochs(cls, epochs: int, params: Params) -> int:
        """Passes over the training data that a budget of ``epochs`` means for this method (Free-AT may divide it
        by m: ``free.divide_epochs``). The loop, the tuner and the estimate all count epochs through this (the
        rule itself is the torch-free ``Params.data_epochs``, training/schema.py)."""
        return params.data_epochs(epochs)

    def __init__(self, params: Params, ctx: StepContext) -> None:
        self.p = params
        self.ctx = ctx

    @property
    def eps(self) -> float:
        return self.ctx.eps

    def alpha(self, default_255_or_rel: float, relative: bool = False) -> float:
        """The step size: ``alpha_255`` from the params if set, else the default (absolute /255 or × ε)."""
        a = getattr(self.p, "alpha_255", None)
        if a is not None:
            return a / 255.0
        return default_255_or_rel * self.eps if relative else default_255_or_rel / 255.0

    def step(self, x: torch.Tensor, y: torch.Tensor, it: int) -> dict[str, torch.Tensor]:
        """One minibatch. Returns tensors (no host sync): ``loss`` (mean), ``correct`` (count on the training
        examples), ``n`` (batch size)."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Running counts the loop records every epoch as ``method/<name>`` (FGSM-SDI: ``gen_steps``)."""
        return {}

    # method state that must survive a resume (generator, persistent δ, ...)
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # helpers -----------------------------------------------------------------------------------------------
    def stats(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": loss, "correct": (logits.argmax(1) == y).sum(), "n": torch.tensor(len(y))}


def clip_eps(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return delta.clamp(-eps, eps)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """δ clipped to the ε-ball and so that x+δ stays in [0,1] (the attacks' projection, expressed on δ)."""
    return project_point(x + delta, x, eps) - x


def uniform_delta(x: torch.Tensor, eps: float) -> torch.Tensor:
    """δ ~ U[-ε, ε], clamped so that x+δ ∈ [0,1] (the random start of FGSM-RS and PGD)."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    return (x + delta).clamp(0, 1) - x


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    """FGSM-SDI's label-smoothed CE (spec §2.4): q_y = factor, q_j = (1-factor)/(C-1) for j != y; batch mean."""
    c = logits.shape[1]
    q = torch.full_like(logits, (1.0 - factor) / (c - 1))
    q.scatter_(1, y[:, None], factor)
    return -(q * F.log_softmax(logits, dim=1)).sum(1).mean()
