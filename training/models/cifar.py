"""CIFAR-style networks written with a pluggable activation: ``small_cnn``, ``preact_resnet18``, ``resnet18``,
``wrn34_10`` (registered in ``MODELS``; each builder returns the bare network, logits of shape (N, num_classes)).

Every activation site is its own module built by ``make_activation`` (so a learnable activation such as SmoothReLU
has one α per site); no ReLU is hard-coded. The only deliberate change from the reference code is the final pooling:
``F.avg_pool2d(out, 4)`` / ``(out, 8)`` became an adaptive average pool to 1×1, which is identical at 32×32 inputs
and lets other input sizes work.

- ``preact_resnet18``: Wong, Rice & Kolter, "Fast is better than free" (arXiv 2001.03994),
  locuslab/fast_adversarial ``CIFAR10/preact_resnet.py``.
- ``resnet18``: the CIFAR ResNet of the FGSM-SDI repository ``models/resnet.py`` (Jia et al., arXiv 2110.05007),
  i.e. the kuangliu/pytorch-cifar ResNet (He et al., arXiv 1512.03385) with a 3×3 stride-1 stem and no max-pool.
- ``wrn34_10``: WideResNet-34-10 (Zagoruyko & Komodakis, arXiv 1605.07146) as in the TRADES / robust-overfitting code.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models.builder import ActFactory, NetSpec
from training.registry import MODELS

__all__ = ["PreActResNet", "ResNetCifar", "SmallCNN", "WideResNet"]


def _stage(block: type[nn.Module], in_planes: int, planes: int, n: int, stride: int, act: ActFactory) -> nn.Sequential:
    """``n`` blocks of ``planes`` channels: the first from ``in_planes`` with ``stride``, the others with stride 1."""
    return nn.Sequential(*[block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, act) for i in range(n)])


class SmallCNN(nn.Module):
    """conv3×3-BN-act (w) → max-pool 2 → conv3×3-BN-act (2w) → adaptive avg-pool 2×2 → linear.

    A fast model for 8×8 digits and other small inputs (any image_size ≥ 2, any number of channels).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, act: ActFactory) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            act(),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1, bias=False),
            nn.BatchNorm2d(w2),
            act(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(w2 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


@MODELS.register("small_cnn")
def small_cnn(s: NetSpec) -> nn.Module:
    s.check()
    if s.image_size < 2:
        raise ValueError(f"small_cnn needs image_size ≥ 2, got {s.image_size}")
    return SmallCNN(s.in_channels, s.num_classes, 32 if s.width is None else s.width, s.act())


class PreActBlock(nn.Module):
    """Pre-activation basic block, as Wong's code: note the projection shortcut takes the *raw* input x (not
    act(bn1(x)) as in He et al.'s pre-activation paper and kuangliu's copy)."""

    def __init__(self, in_planes: int, planes: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = act()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut  # not in-place (Wong's `out += shortcut`): same value, safer under autograd/compile


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], in_channels: int, num_classes: int, width: int, act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = _stage(PreActBlock, width, width, num_blocks[0], 1, act)
        self.layer2 = _stage(PreActBlock, width, 2 * width, num_blocks[1], 2, act)
        self.layer3 = _stage(PreActBlock, 2 * width, 4 * width, num_blocks[2], 2, act)
        self.layer4 = _stage(PreActBlock, 4 * width, 8 * width, num_blocks[3], 2, act)
        self.bn = nn.BatchNorm2d(8 * width)
        self.act = act()
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.act(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)  # Wong: F.avg_pool2d(out, 4), the same at 32×32
        return self.linear(torch.flatten(out, 1))


@MODELS.register("preact_resnet18")
def preact_resnet18(s: NetSpec) -> nn.Module:
    s.check()
    return PreActResNet([2, 2, 2, 2], s.in_channels, s.num_classes, 64 if s.width is None else s.width, s.act())


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, act: ActFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, num_blocks: list[int], in_channels: int, num_classes: int, width: int, act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = act()
        self.layer1 = _stage(BasicBlock, width, width, num_blocks[0], 1, act)
        self.layer2 = _stage(BasicBlock, width, 2 * width, num_blocks[1], 2, act)
        self.layer3 = _stage(BasicBlock, 2 * width, 4 * width, num_blocks[2], 2, act)
        self.layer4 = _stage(BasicBlock, 4 * width, 8 * width, num_blocks[3], 2, act)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)  # reference: F.avg_pool2d(out, 4), the same at 32×32
        return self.linear(torch.flatten(out, 1))


@MODELS.register("resnet18")
def resnet18(s: NetSpec) -> nn.Module:
    s.check()
    return ResNetCifar([2, 2, 2, 2], s.in_channels, s.num_classes, 64 if s.width is None else s.width, s.act())


class WideBasic(nn.Module):
    """WRN basic block (bn-act-conv ×2). When the channel count changes, the shortcut 1×1 conv is applied to the
    *activated* input act(bn1(x)), as in the reference code."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float, act: ActFactory) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.act2 = act()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        out = self.act2(self.bn2(self.conv1(o)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(o)
        return shortcut + out


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int, drop_rate: float, act: ActFactory) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = self._make_block(n, ch[0], ch[1], 1, drop_rate, act)
        self.block2 = self._make_block(n, ch[1], ch[2], 2, drop_rate, act)
        self.block3 = self._make_block(n, ch[2], ch[3], 2, drop_rate, act)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.act = act()
        self.fc = nn.Linear(ch[3], num_classes)
        # Reference initialisation: He-normal with fan_out for convs, BN (1, 0), zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    @staticmethod
    def _make_block(n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float, act: ActFactory):
        return nn.Sequential(*[WideBasic(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate, act)
                               for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.act(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1)  # reference: F.avg_pool2d(out, 8), the same at 32×32
        return self.fc(torch.flatten(out, 1))


@MODELS.register("wrn34_10")
def wrn34_10(s: NetSpec) -> nn.Module:
    s.check()
    return WideResNet(34, 10 if s.width is None else s.width, s.in_channels, s.num_classes, 0.0, s.act())
