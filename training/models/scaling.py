"""Scaling-study models from torchvision's constructors, with the activation swapped (registered in ``MODELS``).

Each builder returns a randomly initialised torchvision network (``weights=None``) with ``num_classes`` outputs, every
activation layer (``nn.ReLU`` in the ResNets / ResNeXts, ``nn.SiLU`` in the EfficientNets, including the SiLU inside
squeeze-excitation but not its Sigmoid gate) replaced by ``make_activation(...)``, and, when ``in_channels != 3``, a
new stem convolution. They keep ImageNet stems (ResNet: 7×7 stride-2 conv + max-pool; EfficientNet: 3×3 stride-2)
and pool adaptively, so they run at any ``image_size`` (32×32 leaves a 1×1 final map).

- ResNet: He et al., arXiv 1512.03385. ResNeXt: Xie et al., arXiv 1611.05431. EfficientNet: Tan & Le,
  arXiv 1905.11946.
- ``resnext50_32x8d`` and ``resnext152_32x8d`` are not torchvision builders; they are built from its ``ResNet`` class
  with ``Bottleneck``, groups 32, width_per_group 8 and layers [3, 4, 6, 3] / [3, 8, 36, 3].
- EfficientNet keeps torchvision's regularisation defaults: stochastic depth with probability 0.2 (scaled linearly
  with block index; active in train mode only) and classifier dropout 0.2 (b0, b1), 0.3 (b2, b3), 0.4 (b4, b5),
  0.5 (b6, b7); b5–b7 use BatchNorm eps 1e-3, momentum 0.01.

Sharing caveat: torchvision's ResNet ``BasicBlock`` / ``Bottleneck`` call one ``self.relu`` module at two / three
sites; swapping that module keeps the sharing, so a learnable activation (``smooth_relu``) gets one α per *block*
there, not one per site. EfficientNet builds one activation module per site, so there it is one α per site.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
from torchvision import models as tvm
from torchvision.models.resnet import Bottleneck, ResNet

from training.models.builder import NetSpec
from training.registry import MODELS

__all__ = ["replace_activations"]


def replace_activations(module: nn.Module, targets: tuple[type[nn.Module], ...], factory: Callable[[], nn.Module]) -> int:
    """Replace, in place, every submodule that is an instance of ``targets`` by ``factory()``; returns the count.

    Module-level replacement only: it cannot see functional calls (torchvision's ResNets and EfficientNets make none
    for their activations). One new module per replaced module, so sharing in the original is preserved.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, targets):
                setattr(parent, name, factory())
                count += 1
    return count


def _replace_stem(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
                    bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own conv init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _make_builder(name: str, construct: Callable[[int], nn.Module], family: str):
    def builder(s: NetSpec) -> nn.Module:
        if s.width is not None:
            raise ValueError(f"model {name!r} has no width knob (got width={s.width}); choose a bigger variant instead")
        s.check()
        factory = s.act()  # fails early on a bad name / alpha, before building a large network
        net = construct(s.num_classes)
        if family == "resnet":
            n = replace_activations(net, (nn.ReLU,), factory)
            if s.in_channels != 3:
                net.conv1 = _replace_stem(net.conv1, s.in_channels)
        else:
            # Only nn.SiLU: the squeeze-excitation gate is an nn.Sigmoid and stays.
            n = replace_activations(net, (nn.SiLU,), factory)
            if s.in_channels != 3:
                net.features[0][0] = _replace_stem(net.features[0][0], s.in_channels)
        if n == 0:
            raise RuntimeError(f"{name}: no activation layer found to replace (did torchvision change?)")
        return net

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} (random init) with every activation layer swapped; see module docstring."
    return builder


def _tv(constructor: Callable[..., nn.Module]) -> Callable[[int], nn.Module]:
    return lambda k: constructor(weights=None, num_classes=k)


_TORCHVISION_RESNETS: dict[str, Callable[[int], nn.Module]] = {
    "resnet50": _tv(tvm.resnet50),
    "resnet101": _tv(tvm.resnet101),
    "resnet152": _tv(tvm.resnet152),
    "resnext50_32x4d": _tv(tvm.resnext50_32x4d),
    "resnext50_32x8d": lambda k: ResNet(Bottleneck, [3, 4, 6, 3], num_classes=k, groups=32, width_per_group=8),
    "resnext152_32x8d": lambda k: ResNet(Bottleneck, [3, 8, 36, 3], num_classes=k, groups=32, width_per_group=8),
}

for _name, _construct in _TORCHVISION_RESNETS.items():
    MODELS.register(_name, _make_builder(_name, _construct, "resnet"))

for _b in range(8):
    _name = f"efficientnet_b{_b}"
    MODELS.register(_name, _make_builder(_name, _tv(getattr(tvm, _name)), "efficientnet"))
