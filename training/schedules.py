"""Learning-rate schedules, stepped once per optimiser step (per iteration, as every FGSM-SDI baseline does).

- ``multistep``: lr, times ``gamma`` at each milestone (fractions of training: 100/110 and 105/110 reproduce
  FGSM-SDI's x0.1 at epochs 100 and 105 of 110).
- ``cyclic``: one triangle, ``lr_min`` -> ``lr`` at ``peak`` of training -> ``lr_min`` (Wong et al.'s schedule).
- ``constant``.
"""
from __future__ import annotations

import torch

from training.config import OptimConfig, ScheduleConfig


def lr_at(step: int, total: int, optim: OptimConfig, sched: ScheduleConfig) -> float:
    """The lr of optimiser step ``step`` (0-based) of ``total``."""
    if sched.name == "constant" or total <= 0:
        return optim.lr
    t = step / total
    if sched.name == "multistep":
        return optim.lr * sched.gamma ** sum(t >= m for m in sched.milestones)
    if sched.name == "cyclic":
        lo, hi, p = sched.lr_min, optim.lr, sched.peak
        return lo + (hi - lo) * (t / p if t < p else max(0.0, (1 - t) / (1 - p)))
    raise ValueError(f"schedule.name: unknown schedule {sched.name!r}")


class Schedule:
    """Sets the optimiser's lr before each step; its whole state is the step counter (saved in checkpoints)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, optim: OptimConfig, sched: ScheduleConfig):
        self.optimizer, self.total, self.optim, self.sched = optimizer, total_steps, optim, sched
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        lr = lr_at(self.step_count, self.total, self.optim, self.sched)
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
