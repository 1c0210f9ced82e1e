"""orch's PyTorch adversarial-training core: ``run(RunConfig)`` trains, evaluates, checkpoints, yields metrics.

Knows nothing of Ray or MLflow (``import training`` pulls in neither). ``import training`` and the config
(``training.config``, ``training.schema``) don't import torch either: ``run`` and ``train`` load the loop (and
torch) on first use, so a sweep file is validated in about a second. Runs alone with ``orch train``.
"""
from typing import Any

from training.config import ConfigError, RunConfig

__all__ = ["ConfigError", "RunConfig", "run", "train"]


def __getattr__(name: str) -> Any:
    if name in ("run", "train"):
        from training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
