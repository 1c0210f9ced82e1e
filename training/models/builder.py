"""What every model builder is given: ``MODELS.get(name)(spec: NetSpec) -> nn.Module`` (the bare network).

One object instead of the same seven keywords written out in every builder; ``create_model`` fills it in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from training.activations import make_activation

ActFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class NetSpec:
    num_classes: int
    in_channels: int = 3
    image_size: int = 32
    activation: str = "relu"
    act_alpha: float | None = None  # the activation's shape parameter (None: its default)
    smooth_grad_for: str = "both"  # relu_softplus_grad only
    width: int | None = None  # the model's width knob (None: its default; the torchvision models have none)

    def check(self) -> None:
        if self.num_classes < 1 or self.in_channels < 1 or self.image_size < 1:
            raise ValueError(f"num_classes={self.num_classes}, in_channels={self.in_channels}, image_size={self.image_size} must be ≥ 1")

    def act(self) -> ActFactory:
        """A factory of the activation, one module per call (tried once here: a bad name or alpha fails before a
        large network is built)."""
        factory = functools.partial(make_activation, self.activation, alpha=self.act_alpha, smooth_grad_for=self.smooth_grad_for)
        factory()
        return factory
