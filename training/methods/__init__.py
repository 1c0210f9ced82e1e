"""Training methods, one registry (``METHODS``); importing this package registers them all."""
from training.methods import fgsm, fgsm_sdi, free, pgd_at, standard  # noqa: F401
from training.methods.base import Method, StepContext

__all__ = ["Method", "StepContext"]
