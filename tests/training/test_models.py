"""Contract tests for every registered model (``MODELS.names()``) and every activation (``ACTIVATIONS.names()``).

CPU only, batch 2 at 32×32 for the big networks: building all 18 models and one forward/backward each takes ~10 s on
2 cores, so nothing needs a slow marker. Each model is built once (module-scoped fixture) with activation "celu",
which is neither an nn.ReLU nor an nn.SiLU, so a site that escaped the swap shows up.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.activations import grad_phase, make_activation
from training.models import Normalized, create_model
from training.registry import ACTIVATIONS, MODELS

NUM_CLASSES = 7
SWAP = "celu"
SWAP_ALPHA = 1.3

# (activation modules, activation calls per forward) where known; torchvision's ResNet blocks reuse one module for
# 3 sites (stem: 1 module, 1 call). Models not listed must call each activation module exactly once.
_RESNET_BLOCKS = {"resnet50": 16, "resnext50_32x4d": 16, "resnext50_32x8d": 16, "resnet101": 33, "resnet152": 50,
                  "resnext152_32x8d": 50}
EXPECTED_SITES = {
    "small_cnn": (2, 2),
    "resnet18": (17, 17),
    "preact_resnet18": (17, 17),
    "wrn34_10": (31, 31),
    **{name: (1 + b, 1 + 3 * b) for name, b in _RESNET_BLOCKS.items()},
}


def _x(n: int = 2, c: int = 3, size: int = 32, *, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g).requires_grad_(requires_grad)


@pytest.fixture(scope="module", params=MODELS.names())
def swapped(request):
    torch.manual_seed(0)
    model = create_model(request.param, num_classes=NUM_CLASSES, activation=SWAP, act_alpha=SWAP_ALPHA)
    yield request.param, model
    del model


# ----------------------------------------------------------------------------------------------------------------
# every model


def test_forward_shape_finite_and_input_gradient(swapped):
    name, model = swapped
    assert isinstance(model, Normalized)
    model.train()  # batch 2 is enough for BatchNorm at the 1×1 final maps of the ImageNet-stem models
    x = _x(requires_grad=True)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out[:, 0].sum() - out[:, 1].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(_x(1))
    assert out.shape == (1, NUM_CLASSES) and torch.isfinite(out).all()


def test_every_activation_site_swapped(swapped, monkeypatch):
    name, model = swapped
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU)) for m in model.modules())
    acts = [m for m in model.modules() if isinstance(m, nn.CELU)]
    assert len(acts) > 0 and all(m.alpha == SWAP_ALPHA for m in acts)

    calls = {id(m): 0 for m in acts}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1)) for m in acts]
    functional = {"relu": 0}

    def counting(fn):
        def wrapped(*a, **k):
            functional["relu"] += 1
            return fn(*a, **k)

        return wrapped

    # A hard-coded ReLU / SiLU anywhere in the forward would go through one of these.
    for owner, attr in [(F, "relu"), (F, "relu_"), (F, "silu"), (torch, "relu"), (torch, "relu_"),
                        (torch.Tensor, "relu"), (torch.Tensor, "relu_")]:
        monkeypatch.setattr(owner, attr, counting(getattr(owner, attr)))
    model.eval()
    try:
        with torch.no_grad():
            model(_x(1))
    finally:
        for h in hooks:
            h.remove()
    monkeypatch.undo()
    assert functional["relu"] == 0, "a ReLU/SiLU is called outside the activation modules"
    assert all(c >= 1 for c in calls.values()), "an activation module is never used"
    n_modules, n_calls = len(acts), sum(calls.values())
    if name in EXPECTED_SITES:
        assert (n_modules, n_calls) == EXPECTED_SITES[name]
    else:  # EfficientNet: one module per site (the SE gate stays a Sigmoid)
        assert n_calls == n_modules
        assert any(isinstance(m, nn.Sigmoid) for m in model.modules())


def test_normalisation_is_the_first_operation(swapped):
    name, model = swapped
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    old = model.mean.clone(), model.std.clone()
    seen = []
    hook = model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        model.mean.copy_(mean)
        model.std.copy_(std)
        model.eval()
        x = _x(1)
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
        model.mean.copy_(old[0])
        model.std.copy_(old[1])
    assert len(seen) == 1  # the wrapped network sees exactly the normalised input, so nothing runs before it
    torch.testing.assert_close(seen[0], (x - mean) / std, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# every activation, on cheap models


@pytest.mark.parametrize("model_name", ["small_cnn", "preact_resnet18"])
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_activation_in_a_model(model_name, activation):
    torch.manual_seed(0)
    kw = {"width": 8} if model_name == "preact_resnet18" else {}  # same sites, 64× fewer FLOPs
    model = create_model(model_name, num_classes=NUM_CLASSES, activation=activation, image_size=16, **kw)
    act_type = type(make_activation(activation))
    acts = [m for m in model.modules() if isinstance(m, act_type)]
    assert len(acts) == EXPECTED_SITES[model_name][0]
    assert len({id(m) for m in acts}) == len(acts)  # one module per site
    if activation != "relu":
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())

    model.train()
    x = _x(4, size=16, requires_grad=True)
    out = model(x)
    assert out.shape == (4, NUM_CLASSES) and torch.isfinite(out).all()
    loss = F.cross_entropy(out, torch.arange(4) % NUM_CLASSES)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if activation == "smooth_relu":  # one learnable α per site, each receiving a gradient
        rs = [m.r for m in acts]
        assert len({id(r) for r in rs}) == len(rs)
        assert all(r.grad is not None and r.grad.item() != 0 for r in rs)


def test_act_alpha_and_smooth_grad_for_reach_every_site():
    model = create_model("small_cnn", num_classes=3, activation="softplus", act_alpha=3.0)
    assert [m.beta for m in model.modules() if isinstance(m, nn.Softplus)] == [3.0, 3.0]
    model = create_model("resnet50", num_classes=3, activation="relu_softplus_grad", act_alpha=4.0,
                         smooth_grad_for="attacker")
    acts = [m for m in model.modules() if type(m).__name__ == "ReLUSoftplusGrad"]
    assert len(acts) == 17 and all(m.alpha == 4.0 and m.smooth_grad_for == "attacker" for m in acts)


def test_relu_softplus_grad_model_gradient_depends_on_phase():
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=NUM_CLASSES, activation="relu_softplus_grad",
                         smooth_grad_for="attacker", image_size=8).eval()
    relu_twin = create_model("small_cnn", num_classes=NUM_CLASSES, activation="relu", image_size=8).eval()
    relu_twin.load_state_dict(model.state_dict())

    def input_grad(m):
        x = _x(4, size=8, requires_grad=True)
        (g,) = torch.autograd.grad(m(x).sum(), x)
        return g

    with torch.no_grad():
        assert torch.equal(model(_x(4, size=8)), relu_twin(_x(4, size=8)))  # forward is exactly ReLU
    true_grad = input_grad(relu_twin)
    torch.testing.assert_close(input_grad(model), true_grad, rtol=0, atol=0)  # "eval": true gradient
    with grad_phase("train"):  # attacker-only: the optimiser phase keeps the true gradient
        torch.testing.assert_close(input_grad(model), true_grad, rtol=0, atol=0)
    with grad_phase("attack"):
        assert not torch.allclose(input_grad(model), true_grad)


# ----------------------------------------------------------------------------------------------------------------
# sizes, channels, width, normalisation arguments


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("image_size", [8, 12, 16, 28, 32])
def test_small_cnn_sizes_and_channels(image_size, in_channels):
    model = create_model("small_cnn", num_classes=10, in_channels=in_channels, image_size=image_size)
    x = _x(3, in_channels, image_size, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_small_cnn_stays_small():
    # A proxy for speed (a wall-clock bound would be flaky on shared CPUs): ~21k weights at 1 channel, ~45 MFLOP
    # forward for 128 8×8 images; fwd+bwd measured at a few ms on 2 cores.
    model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8).train()
    assert sum(p.numel() for p in model.parameters()) < 30_000
    x, y = torch.rand(128, 1, 8, 8), torch.randint(0, 10, (128,))
    F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn34_10", "resnet50", "efficientnet_b0"])
def test_grey_inputs(name):
    kw = {"width": 1} if name == "wrn34_10" else {}
    model = create_model(name, num_classes=4, in_channels=1, image_size=28, **kw).eval()
    with torch.no_grad():
        out = model(_x(2, 1, 28))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert model.mean.shape == (1, 1, 1, 1)


def test_width_knob():
    assert create_model("small_cnn", num_classes=3, width=8).net.features[0].out_channels == 8
    assert create_model("resnet18", num_classes=3, width=16).net.linear.in_features == 128
    assert create_model("preact_resnet18", num_classes=3, width=16).net.linear.in_features == 128
    wrn = create_model("wrn34_10", num_classes=3, width=2)
    assert wrn.net.fc.in_features == 128
    assert create_model("wrn34_10", num_classes=3, width=1).net.fc.in_features == 64
    with pytest.raises(ValueError, match="resnet50.*width"):
        create_model("resnet50", num_classes=3, width=2)


def test_create_model_mean_std_arguments():
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    model = create_model("small_cnn", num_classes=5, mean=mean, std=std).eval()
    assert model.mean.flatten().tolist() == pytest.approx(mean) and model.std.flatten().tolist() == pytest.approx(std)
    assert {"mean", "std"} <= set(model.state_dict())
    plain = Normalized(model.net).eval()  # same weights, identity normalisation
    x = _x()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - m) / s))
        assert not torch.allclose(model(x), plain(x))
    assert create_model("small_cnn", num_classes=5, mean=0.5, std=0.25).std.flatten().tolist() == [0.25] * 3
    with pytest.raises(ValueError, match="mean"):
        create_model("small_cnn", num_classes=5, mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="std"):
        create_model("small_cnn", num_classes=5, std=[0.2, 0.0, 0.2])


def test_bad_names_refused():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet19", num_classes=10)
    with pytest.raises(KeyError, match="unknown activation"):
        create_model("small_cnn", num_classes=10, activation="swishy")
    with pytest.raises(ValueError, match="relu"):
        create_model("resnet152", num_classes=10, act_alpha=2.0)  # refused before building the big network


# ----------------------------------------------------------------------------------------------------------------
# channels-last and bf16 autocast (CPU here; the same code paths run on CUDA)


@pytest.mark.parametrize(
    "name, activation",
    [("small_cnn", "smooth_relu"), ("resnet18", "smooth_relu"), ("preact_resnet18", "relu_softplus_grad"),
     ("wrn34_10", "relu_softplus_grad"), ("efficientnet_b0", "smooth_relu"), ("resnet50", "relu_softplus_grad")],
)
def test_channels_last_bf16_autocast(name, activation):
    torch.manual_seed(0)
    kw = {"resnet18": {"width": 16}, "preact_resnet18": {"width": 16}, "wrn34_10": {"width": 1}}.get(name, {})
    model = create_model(name, num_classes=NUM_CLASSES, activation=activation, **kw).train()
    model = model.to(memory_format=torch.channels_last)
    x = _x().to(memory_format=torch.channels_last).requires_grad_(True)
    with grad_phase("attack"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.float().sum(), x)
    assert g.dtype == torch.float32 and torch.isfinite(g).all() and g.abs().sum() > 0
