"""Activation formulas and derivatives against closed forms (float64), and the gradient-phase switch of
``relu_softplus_grad`` (spec at_methods.md section 10.1; SAT arXiv 2006.14536; CELU arXiv 1704.07483)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from training.activations import (
    ACTIVATION_DEFAULT_ALPHA,
    ReLUSoftplusGrad,
    SmoothReLU,
    current_phase,
    grad_phase,
    make_activation,
)
from training.registry import ACTIVATIONS

X = torch.arange(-400, 401, dtype=torch.float64) / 100  # [-4, 4] step 0.01, includes 0 exactly
TOL = dict(rtol=1e-10, atol=1e-12)


def value_and_grad(act: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = act(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g


# ----------------------------------------------------------------------------------------------------------------
# registry and factory


def test_registry_and_defaults_cover_the_same_names():
    expected = {"relu", "softplus", "silu", "gelu", "elu", "celu", "smooth_relu", "relu_softplus_grad"}
    assert expected <= set(ACTIVATIONS.names())
    assert set(ACTIVATION_DEFAULT_ALPHA) <= set(ACTIVATIONS.names())


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_activation_builds_a_fresh_module(name):
    a, b = make_activation(name), make_activation(name)
    assert isinstance(a, nn.Module) and a is not b
    y = a(torch.linspace(-3, 3, 7))
    assert y.shape == (7,) and torch.isfinite(y).all()
    if name != "relu":
        assert not isinstance(a, nn.ReLU)


@pytest.mark.parametrize("name", ["relu", "silu", "gelu"])
def test_alpha_refused_for_parameter_free_activation(name):
    with pytest.raises(ValueError, match=rf"{name}.*2\.5|2\.5.*{name}"):
        make_activation(name, alpha=2.5)


@pytest.mark.parametrize("name", [n for n, a in ACTIVATION_DEFAULT_ALPHA.items() if a is not None])
@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf])
def test_bad_alpha_refused(name, alpha):
    with pytest.raises(ValueError, match=name):
        make_activation(name, alpha=alpha)


def test_unknown_name_and_bad_smooth_grad_for_refused():
    with pytest.raises(KeyError, match="unknown activation 'swishy'"):
        make_activation("swishy")
    with pytest.raises(ValueError, match="smooth_grad_for"):
        make_activation("relu_softplus_grad", smooth_grad_for="attack")
    with pytest.raises(ValueError, match="smooth_grad_for"):
        make_activation("relu", smooth_grad_for="sometimes")  # validated everywhere: config typos fail early


# ----------------------------------------------------------------------------------------------------------------
# closed forms


def test_relu():
    y, g = value_and_grad(make_activation("relu"), X)
    torch.testing.assert_close(y, X.clamp_min(0), **TOL)
    torch.testing.assert_close(g, (X > 0).double(), **TOL)


@pytest.mark.parametrize("alpha", [None, 1.0, 2.5, 10.0])
def test_softplus_value_and_gradient_is_sigmoid(alpha):
    a = 10.0 if alpha is None else alpha
    y, g = value_and_grad(make_activation("softplus", alpha=alpha), X)
    expected = torch.log1p(torch.exp(a * X)) / a
    # nn.Softplus returns x itself where αx > 20; the error there is log1p(exp(-20))/α ≈ 2e-9/α.
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=2.1e-9 / a)
    torch.testing.assert_close(g, torch.sigmoid(a * X), rtol=0, atol=2.1e-9)
    exact = a * X <= 20
    torch.testing.assert_close(y[exact], expected[exact], **TOL)


def test_silu():
    y, g = value_and_grad(make_activation("silu"), X)
    s = torch.sigmoid(X)
    torch.testing.assert_close(y, X * s, **TOL)
    torch.testing.assert_close(g, s * (1 + X * (1 - s)), **TOL)


def test_gelu_is_the_tanh_approximation():
    y, g = value_and_grad(make_activation("gelu"), X)
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (X + 0.044715 * X**3))
    torch.testing.assert_close(y, 0.5 * X * (1 + t), **TOL)
    torch.testing.assert_close(g, 0.5 * (1 + t) + 0.5 * X * (1 - t**2) * c * (1 + 3 * 0.044715 * X**2), **TOL)
    exact_erf = 0.5 * X * (1 + torch.erf(X / math.sqrt(2)))
    assert (y - exact_erf).abs().max() > 1e-5  # really the approximation, not nn.GELU's default


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.4, 2.0])
def test_elu_value_derivative_and_kink(alpha):
    y, g = value_and_grad(make_activation("elu", alpha=alpha), X)
    neg = X < 0
    torch.testing.assert_close(y, torch.where(neg, alpha * (torch.exp(X) - 1), X), **TOL)
    torch.testing.assert_close(g[X != 0], torch.where(neg, alpha * torch.exp(X), torch.ones_like(X))[X != 0], **TOL)
    # One-sided derivatives at 0: α on the left, 1 on the right (a kink unless α = 1).
    _, g_lr = value_and_grad(make_activation("elu", alpha=alpha), torch.tensor([-1e-12, 1e-12], dtype=torch.float64))
    torch.testing.assert_close(g_lr, torch.tensor([alpha, 1.0], dtype=torch.float64), rtol=1e-9, atol=0)
    f = make_activation("elu", alpha=alpha)
    h = torch.tensor(1e-7, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    left, right = (f(zero) - f(-h)) / h, (f(h) - f(zero)) / h
    assert left.item() == pytest.approx(alpha, rel=1e-6) and right.item() == pytest.approx(1.0, rel=1e-12)
    assert (abs(left.item() - right.item()) < 1e-6) == (alpha == 1.0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.4, 2.0])
def test_celu_barron_definition_and_c1(alpha):
    y, g = value_and_grad(make_activation("celu", alpha=alpha), X)
    expected = X.clamp_min(0) + (alpha * (torch.exp(X / alpha) - 1)).clamp_max(0)
    torch.testing.assert_close(y, expected, **TOL)
    neg = X < 0
    # rtol 1e-7: PyTorch's CELU backward rounds 1/α to float32 even for float64 inputs (the forward is exact).
    torch.testing.assert_close(g[neg], torch.exp(X[neg] / alpha), rtol=1e-7, atol=0)
    torch.testing.assert_close(g[X > 0], torch.ones_like(X[X > 0]), **TOL)
    # Continuous derivative at 0 for every α (Barron's point): both sides → 1.
    _, g_lr = value_and_grad(make_activation("celu", alpha=alpha), torch.tensor([-1e-12, 1e-12], dtype=torch.float64))
    torch.testing.assert_close(g_lr, torch.ones(2, dtype=torch.float64), rtol=1e-7, atol=0)


def test_celu_alpha_1_equals_elu_alpha_1():
    celu, elu = make_activation("celu", alpha=1.0), make_activation("elu", alpha=1.0)
    torch.testing.assert_close(celu(X), elu(X), rtol=0, atol=0)
    torch.testing.assert_close(make_activation("celu")(X), make_activation("elu")(X), rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [None, 4.0, 37.0])
def test_smooth_relu_value_derivative_and_learnable_alpha(alpha):
    act = make_activation("smooth_relu", alpha=alpha).double()
    assert isinstance(act, SmoothReLU)
    params = list(act.parameters())
    assert len(params) == 1 and params[0].numel() == 1 and params[0].requires_grad
    a = 400.0 if alpha is None else alpha
    assert act.r.item() == pytest.approx(math.sqrt(a)) and act.alpha.item() == pytest.approx(a)
    if alpha is None:
        assert act.r.item() == 20.0
    a = act.alpha.item()  # r is stored in float32, so α = r² is the requested value up to float32 rounding

    x = X.clone().requires_grad_(True)
    y = act(x)
    gx, gr = torch.autograd.grad(y.sum(), [x, act.r])
    pos = X >= 0
    expected = torch.where(pos, X - torch.log(a * X.clamp_min(0) + 1) / a, torch.zeros_like(X))
    torch.testing.assert_close(y.detach(), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gx, torch.where(pos, a * X / (a * X + 1), torch.zeros_like(X)), rtol=1e-9, atol=1e-12)
    assert y.detach()[~pos].eq(0).all() and gx[~pos].eq(0).all()
    assert gx[X == 0].item() == 0.0  # C¹: derivative 0 at 0 from both sides
    # df/dr = df/dα · 2r with df/dα = log(1 + αx)/α² − x/(α(1 + αx)) for x ≥ 0.
    xp = X[pos]
    dfda = torch.log1p(a * xp) / a**2 - xp / (a * (1 + a * xp))
    assert gr.item() == pytest.approx((dfda * 2 * math.sqrt(a)).sum().item(), rel=1e-8)
    assert gr.item() != 0.0


def test_smooth_relu_one_parameter_per_instance_and_stable():
    a, b = make_activation("smooth_relu"), make_activation("smooth_relu")
    assert a.r is not b.r
    x = torch.tensor([-1e30, -1e6, -1.0, 0.0, 1e-30, 1e-6, 1.0, 1e6, 1e30], requires_grad=True)
    y = a(x)
    gx, gr = torch.autograd.grad(y.sum(), [x, a.r])
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gr).all()
    assert y[:4].eq(0).all() and gx[:4].eq(0).all()


# ----------------------------------------------------------------------------------------------------------------
# relu_softplus_grad and the gradient phase


def _smooth_expected(smooth_grad_for: str, phase: str) -> bool:
    return (phase == "attack" and smooth_grad_for in ("attacker", "both")) or (
        phase == "train" and smooth_grad_for in ("optimizer", "both")
    )


def test_phase_default_nesting_and_restore():
    assert current_phase() == "eval"
    with grad_phase("attack"):
        assert current_phase() == "attack"
        with grad_phase("train"):
            assert current_phase() == "train"
        assert current_phase() == "attack"
    assert current_phase() == "eval"
    with pytest.raises(RuntimeError):
        with grad_phase("train"):
            raise RuntimeError("boom")
    assert current_phase() == "eval"
    with pytest.raises(ValueError, match="phase"):
        with grad_phase("optimizer"):
            pass


@pytest.mark.parametrize("phase", ["attack", "train", "eval"])
@pytest.mark.parametrize("smooth_grad_for", ["attacker", "optimizer", "both", "none"])
@pytest.mark.parametrize("alpha", [None, 3.0])
def test_relu_softplus_grad_switch(smooth_grad_for, phase, alpha):
    a = 10.0 if alpha is None else alpha
    act = make_activation("relu_softplus_grad", alpha=alpha, smooth_grad_for=smooth_grad_for)
    assert isinstance(act, ReLUSoftplusGrad)
    x = X.clone().requires_grad_(True)
    grad_out = torch.linspace(0.5, 2.0, X.numel(), dtype=torch.float64)
    with grad_phase(phase):
        y = act(x)
        (g,) = torch.autograd.grad(y, x, grad_out)
    assert torch.equal(y.detach(), torch.relu(X))  # forward is exactly ReLU in every phase
    if _smooth_expected(smooth_grad_for, phase):
        torch.testing.assert_close(g, grad_out * torch.sigmoid(a * X), **TOL)
    else:
        assert torch.equal(g, grad_out * (X > 0).double())


def test_relu_softplus_grad_forward_exact_in_float32_and_no_grad():
    x = torch.randn(1000) * 5
    act = make_activation("relu_softplus_grad")
    for phase in ("attack", "train", "eval"):
        with grad_phase(phase):
            assert torch.equal(act(x.clone().requires_grad_(True)).detach(), torch.relu(x))
            with torch.no_grad():
                assert torch.equal(act(x), torch.relu(x))


@pytest.mark.parametrize("smooth_grad_for", ["attacker", "optimizer"])
def test_phase_is_captured_at_forward_time(smooth_grad_for):
    enabled = "attack" if smooth_grad_for == "attacker" else "train"
    act = make_activation("relu_softplus_grad", smooth_grad_for=smooth_grad_for)
    smooth, hard = torch.sigmoid(10 * X), (X > 0).double()

    x = X.clone().requires_grad_(True)
    with grad_phase(enabled):
        y = act(x)
    (g,) = torch.autograd.grad(y.sum(), x)  # backward outside the phase: still the smooth gradient
    torch.testing.assert_close(g, smooth, **TOL)

    x = X.clone().requires_grad_(True)
    y = act(x)  # forward in "eval"
    with grad_phase(enabled):
        (g,) = torch.autograd.grad(y.sum(), x)  # backward inside the phase: still the true ReLU gradient
    assert torch.equal(g, hard)


def test_relu_softplus_grad_reaches_weights_and_supports_double_backprop():
    # y = act(w·x); dy/dx = w·s(αwx) with s the sigmoid; d/dw of that = s + w·x·α·s(1 − s) (GradAlign-style).
    act = make_activation("relu_softplus_grad")
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([-0.3, 0.1, 0.5], dtype=torch.float64, requires_grad=True)
    with grad_phase("train"):
        y = act(w * x)
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.sum(), w)
    s = torch.sigmoid(10 * w.detach() * x.detach())
    torch.testing.assert_close(gx.detach(), w.detach() * s, **TOL)
    torch.testing.assert_close(gw, (s + w.detach() * x.detach() * 10 * s * (1 - s)).sum(), **TOL)


def test_relu_softplus_grad_under_torch_compile_follows_the_phase():
    # The phase is a module global: dynamo guards on it and recompiles per phase (no stale specialisation).
    torch._dynamo.reset()
    act = make_activation("relu_softplus_grad", smooth_grad_for="attacker")
    net = nn.Sequential(nn.Linear(4, 4), act)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 4)
    for phase in ("attack", "train", "eval", "attack"):
        with grad_phase(phase):
            xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            (ge,) = torch.autograd.grad(net(xe).sum(), xe)
            yc = compiled(xc)
            (gc,) = torch.autograd.grad(yc.sum(), xc)
        assert torch.equal(yc.detach(), net(x).detach())
        torch.testing.assert_close(gc, ge)
    torch._dynamo.reset()
