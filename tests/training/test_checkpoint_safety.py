"""A checkpoint cannot run code: ``training.checkpoint.load`` uses ``weights_only=True``, so a file whose pickle
would call a function on load (the classic ``__reduce__`` payload) is refused and the function never runs."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from training.checkpoint import load


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load(evil)
    assert not marker.exists(), "loading the checkpoint ran code"
    # the same file loaded the unsafe way does run it: the test would catch a switch away from weights_only
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_plain_checkpoint_loads(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "last.pt")
    assert load(tmp_path)["epoch"] == 3
