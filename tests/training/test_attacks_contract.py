"""The contract every registered attack must meet, parametrized over ``ATTACKS.names()``: a new attack is covered the
moment its module registers it, and must be given cheap test settings in ``TEST_KWARGS`` (and a strength knob in
``STRENGTH``) or these tests fail.

Contract: x_adv has x's shape, lies in the L∞ ε-ball around x and in [0,1]; robust accuracy never exceeds clean
accuracy (a point the model already gets wrong is never returned classified correctly); more iterations are not weaker
on average; the model's train/eval modes are untouched and no parameter ``.grad`` is filled; inputs are neither
modified nor given a ``.grad``; a generator seed reproduces the result. FGSM is also checked against its closed form
on a binary linear model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.attacks import ATTACKS

EPS = 0.1  # digits pixels move in steps of 1/16; 0.1 leaves the tiny model partly robust, so attacks can differ

# cheap settings per registered attack; a registered attack missing here fails test_every_attack_has_test_settings
TEST_KWARGS: dict[str, dict] = {
    "fgsm": {"random_start": True},
    "pgd": {"steps": 5, "alpha": EPS / 4, "restarts": 2},
    "cw": {"steps": 5, "alpha": EPS / 4},
    "apgd_ce": {"n_iter": 10},
    "apgd_t": {"n_iter": 5, "n_target_classes": 3},
    "fab_t": {"n_iter": 5, "n_target_classes": 3},
    "square": {"n_queries": 40},
    "autoattack": {"n_iter": 4, "n_target_classes": 2, "n_queries": 20},
}
# (parameter, weak value, strong value) for iterative attacks; None for single-step ones
STRENGTH: dict[str, tuple[str, int, int] | None] = {
    "fgsm": None,
    "pgd": ("steps", 2, 20),
    "cw": ("steps", 2, 20),
    "apgd_ce": ("n_iter", 2, 20),
    "apgd_t": ("n_iter", 2, 20),
    "fab_t": ("n_iter", 2, 20),
    "square": ("n_queries", 5, 300),
    "autoattack": ("n_iter", 1, 10),
}
NAMES = ATTACKS.names()


class TinyNet(nn.Module):
    """Conv + BatchNorm + Dropout, so that a change of train/eval mode would be visible."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


@pytest.fixture(scope="module")
def trained(digits) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained for 150 Adam steps on 1,200 digits; returns (model in eval mode, 96 test x, y)."""
    x, y = digits
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        i = torch.randint(0, 1200, (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model, x[1200:1296].clone(), y[1200:1296].clone()


def _run(name, model, x, y, seed=0, **override):
    kwargs = {**TEST_KWARGS[name], **override}
    return ATTACKS.get(name)(model, x, y, eps=EPS, generator=torch.Generator().manual_seed(seed), **kwargs)


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def test_every_attack_has_test_settings():
    missing = sorted(set(NAMES) - set(TEST_KWARGS))
    assert not missing, f"registered attacks without cheap test settings in TEST_KWARGS: {missing}"
    missing = sorted(set(NAMES) - set(STRENGTH))
    assert not missing, f"registered attacks without an entry in STRENGTH: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_stays_in_threat_model_and_never_beats_clean(name, trained):
    model, x, y = trained
    x_adv = _run(name, model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    clean_ok, adv_ok = _pred(model, x) == y, _pred(model, x_adv) == y
    assert adv_ok.float().mean() <= clean_ok.float().mean()
    assert not (adv_ok & ~clean_ok).any(), "a point misclassified clean was returned classified correctly"
    assert adv_ok.float().mean() < clean_ok.float().mean(), "the attack fooled nothing (test model too robust?)"


@pytest.mark.parametrize("name", NAMES)
def test_more_iterations_not_weaker(name, trained):
    if STRENGTH[name] is None:
        pytest.skip(f"{name} has no iteration count")
    model, x, y = trained
    param, weak, strong = STRENGTH[name]

    def mean_acc(value):
        return sum((_pred(model, _run(name, model, x, y, seed=s, **{param: value})) == y).float().mean().item()
                   for s in (0, 1)) / 2

    assert mean_acc(strong) <= mean_acc(weak) + 1e-9


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_mode_and_gradients_untouched(name, train_mode, trained):
    model, x, y = trained
    model.train(train_mode)
    model.features[1].eval()  # a submodule in another mode than its parent must stay so
    before = [m.training for m in model.modules()]
    x_in = x.clone().requires_grad_(True)  # inputs that track gradients must not confuse the attack
    try:
        x_adv = _run(name, model, x_in, y)
        after = [m.training for m in model.modules()]
    finally:
        model.eval()
    assert after == before
    assert all(p.grad is None for p in model.parameters()), "the attack filled a parameter .grad"
    assert x_in.grad is None and torch.equal(x_in.detach(), x), "the input was given a .grad or modified"
    assert not x_adv.requires_grad and x_adv.grad_fn is None


@pytest.mark.parametrize("name", NAMES)
def test_works_under_no_grad(name, trained):
    model, x, y = trained
    with torch.no_grad():
        x_adv = _run(name, model, x[:32], y[:32])
    assert (x_adv - x[:32]).abs().max().item() <= EPS + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_with_the_same_seed(name, trained):
    model, x, y = trained
    assert torch.equal(_run(name, model, x, y, seed=3), _run(name, model, x, y, seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_handles_a_single_point_and_an_all_wrong_batch(name, trained):
    model, x, y = trained
    x_adv = _run(name, model, x[:1], y[:1])
    assert x_adv.shape == x[:1].shape
    wrong = (_pred(model, x) + 1) % 10  # labels the model never predicts: nothing to attack
    x_adv = _run(name, model, x[:8], wrong[:8])
    assert (x_adv - x[:8]).abs().max().item() <= EPS + 1e-6
    assert (_pred(model, x_adv) != wrong[:8]).all()


def test_fgsm_matches_the_closed_form_on_a_binary_linear_model():
    """For z = Wx + b with two classes, CE(x) = log(1 + exp(z_o − z_y)), so ∇_x CE = σ(z_o − z_y)(w_o − w_y) and
    sign(∇) = sign(w_o − w_y) (o: the other class). The objective (w_o − w_y)·x' is linear and separable, so its
    maximum over the ε-ball ∩ [0,1]ⁿ is x'_i = clip(x_i + ε·sign(w_o − w_y)_i, 0, 1): exactly one FGSM step."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(64, 1, 4, 4, generator=g)
    x[:, :, 0, :] = torch.tensor([0.0, 1.0, 0.05, 0.97])  # pixels at or near the box edges, so clipping matters
    y = torch.randint(0, 2, (64,), generator=g)
    w = model[1].weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    expected = (x + EPS * direction).clamp(0, 1)
    x_adv = ATTACKS.get("fgsm")(model, x, y, eps=EPS)
    assert torch.allclose(x_adv, expected, atol=1e-6)

    # and it is the optimum: no random feasible point has a larger margin z_o − z_y
    margin = lambda z: (z.gather(1, (1 - y)[:, None]) - z.gather(1, y[:, None])).squeeze(1)  # noqa: E731
    with torch.no_grad():
        best = margin(model(x_adv))
        for _ in range(20):
            cand = (x + EPS * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
            assert (margin(model(cand)) <= best + 1e-5).all()
