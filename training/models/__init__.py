"""Model factory: ``create_model(name, ...)`` -> ``Normalized(net, mean, std)``, a classifier of [0,1] pixel images.

Every entry of ``MODELS`` (registered by the modules imported below) is a builder
``builder(spec: NetSpec) -> nn.Module`` (training/models/builder.py: classes, channels, image size, activation,
width) returning the bare network; :func:`create_model` wraps it in :class:`Normalized`, so the per-channel
normalisation is the first operation *inside* the model and every attack works in pixel space (spec
``at_methods.md`` section 1).
All models are randomly initialised (no pretrained weights).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from training.registry import MODELS
from training.models.builder import NetSpec
from training.models.normalize import Normalized
from training.models import cifar as _cifar  # noqa: F401  (registers small_cnn, preact_resnet18, resnet18, wrn34_10)
from training.models import scaling as _scaling  # noqa: F401  (registers the torchvision ResNets / EfficientNets)

__all__ = ["MODELS", "NetSpec", "Normalized", "create_model"]


def create_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32, activation: str = "relu",
                 act_alpha: float | None = None, smooth_grad_for: str = "both", width: int | None = None,
                 mean: Sequence[float] | torch.Tensor | None = None, std: Sequence[float] | torch.Tensor | None = None) -> nn.Module:
    """Build a randomly initialised classifier with the normalisation inside it.

    Args:
        name: a registered model (``MODELS.names()``).
        num_classes: size of the output (logits).
        in_channels: channels of the input images (1 for grey, 3 for RGB).
        image_size: input side length in pixels; the CIFAR-style nets and the torchvision nets pool adaptively,
            so any size the downsampling leaves ≥ 1 pixel works.
        activation: a registered activation (``ACTIVATIONS.names()``), placed at every activation site.
        act_alpha: its shape parameter (None: the activation's default).
        smooth_grad_for: for ``relu_softplus_grad`` only: ``"attacker"``, ``"optimizer"``, ``"both"``, ``"none"``.
        width: model-specific width knob (``small_cnn``: first-stage channels, default 32; ``resnet18`` /
            ``preact_resnet18``: first-stage channels, default 64; ``wrn34_10``: widen factor, default 10);
            the torchvision models refuse it.
        mean, std: per-channel statistics (length ``in_channels``, or one value for all); default 0 and 1.

    Returns ``Normalized(net, mean, std)``: ``forward(x)`` computes ``net((x - mean) / std)`` on [0,1] inputs.
    """
    builder = MODELS.get(name)
    net = builder(NetSpec(num_classes, in_channels, image_size, activation, act_alpha, smooth_grad_for, width))
    return Normalized(net, mean=mean, std=std, in_channels=in_channels)
