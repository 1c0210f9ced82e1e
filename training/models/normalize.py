"""``Normalized(net, mean, std)``: a wrapper whose first operation is (x − mean)/std per channel, then ``net``.

Putting the normalisation inside the model (spec ``at_methods.md`` section 1, the Rice et al. / CKPT convention) keeps
inputs in [0,1] pixel space, so ε, step sizes and the [0,1] clamp of every attack (AutoAttack included) need no
per-channel rescaling.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["Normalized"]


def _channel_stat(value, in_channels: int, default: float, what: str) -> torch.Tensor:
    if value is None:
        t = torch.full((in_channels,), default, dtype=torch.float32)
    else:
        t = torch.as_tensor(value, dtype=torch.float32).detach().clone().flatten()
        if t.numel() == 1:
            t = t.expand(in_channels).clone()
        if t.numel() != in_channels:
            raise ValueError(f"{what} has {t.numel()} values, expected {in_channels} (one per input channel)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} must be finite, got {t.tolist()}")
    return t.view(1, in_channels, 1, 1)


class Normalized(nn.Module):
    """``forward(x) = net((x − mean) / std)`` with ``mean`` and ``std`` stored as (1, C, 1, 1) buffers.

    The buffers travel with ``.to()`` and the state dict (``mean``, ``std``, ``net.*``). Defaults: mean 0, std 1
    (the identity, as the FGSM-SDI code in effect uses).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | torch.Tensor | None = None,
                 std: Sequence[float] | torch.Tensor | None = None, *, in_channels: int = 3) -> None:
        super().__init__()
        std_t = _channel_stat(std, in_channels, 1.0, "std")
        if not (std_t > 0).all():
            raise ValueError(f"std must be > 0, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", _channel_stat(mean, in_channels, 0.0, "mean"))
        self.register_buffer("std", std_t)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        def fmt(t: torch.Tensor) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"

        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"

