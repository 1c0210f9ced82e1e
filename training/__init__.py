"""orch's PyTorch adversarial-training core: ``run(RunConfig)`` trains, evaluates, checkpoints, yields metrics.

Knows nothing of Ray or MLflow (``import training`` pulls in neither); runs alone with ``orch train``.
"""
from training.config import ConfigError, RunConfig
from training.loop import run, train

__all__ = ["ConfigError", "RunConfig", "run", "train"]
