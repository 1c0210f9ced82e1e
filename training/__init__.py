"""orch's PyTorch adversarial-training core: ``run(RunConfig)`` trains, evaluates, checkpoints, yields metrics.

Knows nothing of Ray or MLflow (``import training`` pulls in neither). ``import training`` imports nothing else: the
names below load on first use, and the config (``training.config``, ``training.schema``) never imports torch, so a
sweep file is validated in about a second. Runs alone with ``orch train``.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it, imported when the name is first used
_LAZY = {"ConfigError": "training.config", "RunConfig": "training.config", "run": "training.loop", "train": "training.loop"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
