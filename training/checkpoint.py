"""Checkpoints: one file per kind (``last.pt``, ``best.pt``) holding everything a resume needs.

Contents: model, optimiser, schedule, method state (FGSM-SDI's generator and its optimiser, Free-AT's δ), the
RNG states (torch CPU and CUDA, numpy, python), the epoch, the loop's bookkeeping (best metric, CO tracker,
curves so far) and the resolved config (nanoGPT's habit: a checkpoint says what produced it).
Written atomically (temporary file, then rename), so a kill mid-write never leaves a torn checkpoint.
Loaded with ``weights_only=True``: a checkpoint can't run code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
