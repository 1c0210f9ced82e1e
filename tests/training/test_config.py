"""RunConfig: resolved defaults, dotted updates, and every refusal names the key and the value."""
import json

import pytest

from training.config import ConfigError, RunConfig, describe


def test_defaults_resolve_and_roundtrip():
    cfg = RunConfig.from_dict({})
    d = cfg.to_dict()
    assert RunConfig.from_dict(d) == cfg
    json.dumps(d)  # storable as JSON with every checkpoint and result
    assert cfg.eps == pytest.approx(8 / 255)
    assert "method.name" in describe()


def test_method_params_are_flat_and_typed():
    cfg = RunConfig.from_dict({"method": {"name": "fgsm_sdi", "k": 10, "label_smoothing": 0.5}})
    assert cfg.method.name == "fgsm_sdi" and cfg.method.k == 10
    assert cfg.to_dict()["method"]["k"] == 10
    # defaults of the method are filled in and stored
    assert cfg.to_dict()["method"]["gen_lr"] == pytest.approx(1e-3)
    assert cfg.replace({"method.k": 40}).method.k == 40
    assert cfg.hash() != cfg.replace({"method.k": 40}).hash()
    assert cfg.hash() == cfg.replace({"out_dir": "elsewhere"}).hash()


def test_int_widens_to_float_but_not_the_reverse():
    assert RunConfig.from_dict({"threat": {"eps_255": 8}}).threat.eps_255 == 8.0
    with pytest.raises(ConfigError, match="epochs"):
        RunConfig.from_dict({"epochs": 2.5})


@pytest.mark.parametrize(
    "d, key, value",
    [
        ({"epoch": 3}, "epoch", 3),  # unknown top-level key (typo)
        ({"optim": {"learning_rate": 0.1}}, "optim.learning_rate", 0.1),
        ({"epochs": "ten"}, "epochs", "ten"),
        ({"epochs": 0}, "epochs", 0),
        ({"batch_size": -1}, "batch_size", -1),
        ({"threat": {"eps_255": -1}}, "threat.eps_255", -1),
        ({"threat": {"norm": "l2"}}, "threat.norm", "l2"),
        ({"data": {"name": "imagenet21k"}}, "data.name", "imagenet21k"),
        ({"data": {"channels": 2}}, "data.channels", 2),
        ({"model": {"name": "vgg99"}}, "model.name", "vgg99"),
        ({"model": {"activation": "swishy"}}, "model.activation", "swishy"),
        ({"model": {"act_alpha": 0}}, "model.act_alpha", 0),
        ({"method": {"name": "trades"}}, "method.name", "trades"),
        ({"method": {"name": "fgsm_sdi", "k": 0}}, "method.k", 0),
        ({"method": {"name": "fgsm_sdi", "kk": 3}}, "method.kk", 3),
        ({"method": {"name": "pgd_at", "steps": 1.5}}, "method.steps", 1.5),
        ({"method": {"name": "free", "m": 0}}, "method.m", 0),
        ({"method": {"name": "fgsm_ckpt", "c": 0}}, "method.c", 0),
        ({"method": {"name": "standard", "k": 3}}, "method.k", 3),
        ({"optim": {"momentum": 1.5}}, "optim.momentum", 1.5),
        ({"schedule": {"name": "cosine"}}, "schedule.name", "cosine"),
        ({"schedule": {"milestones": [0.9, 0.5]}}, "schedule.milestones", [0.9, 0.5]),
        ({"eval": {"attacks": ["clean", "pgd7"]}}, "eval.attacks[1]", "pgd7"),
        ({"eval": {"best_metric": "test/pgd_acc"}}, "eval.best_metric", "test/pgd_acc"),
        ({"eval": {"checkpoints": ["first"]}}, "eval.checkpoints[0]", "first"),
        ({"device": "tpu"}, "device", "tpu"),
        ({"precision": "fp16"}, "precision", "fp16"),
        ({"compile": "yes"}, "compile", "yes"),
        ({"data": 5}, "data", 5),
    ],
)
def test_refused_with_key_and_value(d, key, value):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    assert e.value.key == key
    assert e.value.value == value
    assert key in str(e.value) and repr(value) in str(e.value)


def test_config_is_immutable():
    cfg = RunConfig.from_dict({})
    with pytest.raises(ValueError, match="frozen"):  # pydantic: "Instance is frozen"
        cfg.epochs = 3  # type: ignore[misc]


def test_fgsm_ga_lambda_rule_is_refused_beyond_its_table():
    """GradAlign's default λ = 0.02·10^(ε·255/8) is tabulated for ε <= 16/255; at MNIST's 0.3 it would be ~7e7, so
    the config asks for λ there instead of training with it silently."""
    assert RunConfig.from_dict({"method": {"name": "fgsm_ga"}, "threat": {"eps_255": 16}}).method.name == "fgsm_ga"
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"method": {"name": "fgsm_ga"}, "threat": {"eps_255": 76.5}})
    assert e.value.key == "method.grad_align_lambda" and "7.3e+07" in str(e.value) and "76.5" in str(e.value)
    cfg = RunConfig.from_dict({"method": {"name": "fgsm_ga", "grad_align_lambda": 2.0}, "threat": {"eps_255": 76.5}})
    assert cfg.method.grad_align_lambda == 2.0


def test_method_section_is_the_methods_own_model():
    """``method`` is a discriminated union on ``method.name``: the config holds the method's Params model (the one the
    method class trains with), a bare name is accepted, and one pass reports every problem of the section."""
    from training import schema

    cfg = RunConfig.from_dict({"method": "free"})
    assert type(cfg.method) is schema.FreeParams and cfg.method.m == 8 and cfg.data_epochs == cfg.epochs
    assert RunConfig.from_dict({"method": {"name": "free", "m": 3, "divide_epochs": True}}).data_epochs == 4
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"method": {"name": "free", "m": 0, "k": 3}, "epochs": 0})
    assert [(x.key, x.value, x.problem) for x in e.value.errors] == [
        ("epochs", 0, "must be > 0"),
        ("method.m", 0, "must be >= 1"),
        ("method.k", 3, "unknown parameter of this method; known: alpha_255, divide_epochs, m"),
    ]
