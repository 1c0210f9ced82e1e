"""The torch-free schema (training/schema.py) names exactly what the plug-ins register, so a config checked
without torch (orch validate) is checked exactly as one checked with it."""
from __future__ import annotations

import subprocess
import sys

import pytest

import training.activations  # noqa: F401  (fill the registries)
import training.attacks  # noqa: F401
import training.data  # noqa: F401
import training.methods  # noqa: F401
import training.models  # noqa: F401
from training import registry, schema
from training.attacks.presets import EVAL_PRESETS
from training.config import ConfigError, RunConfig


@pytest.mark.parametrize("table,reg", [(schema.DATASETS, registry.DATASETS), (schema.MODELS, registry.MODELS),
                                       (schema.ACTIVATIONS, registry.ACTIVATIONS), (schema.METHODS, registry.METHODS)],
                         ids=["datasets", "models", "activations", "methods"])
def test_name_tables_match_the_registries(table, reg) -> None:
    assert tuple(table) == tuple(reg.names()), f"training/schema.py lists other {reg.kind}s than are registered"


def test_every_method_uses_its_schema_params() -> None:
    for name in registry.METHODS:
        assert registry.METHODS.get(name).Params is schema.METHOD_PARAMS[name], name


def test_eval_columns_match_the_presets() -> None:
    assert schema.EVAL_COLUMNS == tuple(EVAL_PRESETS)


def test_config_is_checked_without_torch() -> None:
    """Building and validating a RunConfig (and a bad one's error) imports neither torch nor numpy."""
    code = (
        "import sys; from training.config import RunConfig, ConfigError\n"
        "RunConfig.from_dict({'method': {'name': 'fgsm_sdi', 'k': 3}, 'model': {'name': 'wrn34_10'}})\n"
        "try:\n    RunConfig.from_dict({'method': {'name': 'pgd_at', 'steps': 0}})\nexcept ConfigError as e:\n    print(e)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["method.steps: must be >= 1 (got 0)", "[]"], r.stdout


def test_unknown_names_keep_their_messages() -> None:
    with pytest.raises(ConfigError, match=r"unknown activation; known: celu, elu, gelu, relu, relu_softplus_grad"):
        RunConfig.from_dict({"model": {"activation": "swish"}})
    with pytest.raises(ConfigError, match=r"unknown method; known: fgsm, fgsm_ckpt, .*standard"):
        RunConfig.from_dict({"method": {"name": "trades"}})
