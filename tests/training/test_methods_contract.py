"""Contract of every registered method (parametrized over METHODS: a new method is covered on registration)."""
import pytest
import torch
import torch.nn as nn

from training.activations import current_phase
from training.config import OptimConfig, ScheduleConfig
from training.methods import StepContext
from training.methods.fgsm_sdi import Generator
from training.models import create_model
from training.registry import METHODS
from training.schedules import Schedule

# cheap parameters per method; a registered method missing here fails test_every_method_has_test_params
TEST_PARAMS = {
    "standard": {},
    "fgsm": {},
    "fgsm_rs": {},
    "fgsm_ga": {},
    "fgsm_ckpt": {},
    "free": {"m": 2},
    "pgd_at": {"steps": 3},
    "fgsm_sdi": {"k": 2, "gen_width": 8},
}
EPS = 8 / 255


def test_every_method_has_test_params():
    assert sorted(TEST_PARAMS) == METHODS.names()


def _setup(name, seed=0):
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=4, in_channels=3, image_size=8, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = StepContext(model, opt, None, EPS, 4, torch.device("cpu"))
    cls = METHODS.get(name)
    method = cls(cls.Params(**TEST_PARAMS[name]), ctx)
    ctx.schedule = Schedule(opt, 100, OptimConfig(lr=0.05), ScheduleConfig(name="constant"))
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 4, (16,))
    return model, method, x, y


@pytest.mark.parametrize("name", METHODS.names())
def test_step_gives_finite_loss_and_changes_weights(name):
    model, method, x, y = _setup(name)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out = method.step(x, y, 0)
    assert torch.isfinite(out["loss"]), name
    assert 0 <= float(out["correct"]) <= len(y) and int(out["n"]) == len(y)
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert changed > 0, f"{name} did not change the weights"
    assert model.training, f"{name} left the model in eval mode"
    assert current_phase() == "eval", f"{name} leaked a gradient phase"
    # the schedule stepped once per optimiser step
    assert method.ctx.schedule.step_count == method.replays


@pytest.mark.parametrize("name", METHODS.names())
def test_method_state_roundtrips(name):
    model, method, x, y = _setup(name)
    method.step(x, y, 0)
    state = method.state_dict()
    _, fresh, _, _ = _setup(name)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k])


def test_sdi_generator_output_within_eps():
    g = Generator(3, 16, EPS)
    x = torch.rand(32, 3, 16, 16)
    s = torch.randn_like(x).sign() * 100  # large inputs saturate tanh
    for mode in (True, False):
        g.train(mode)
        eta = g(x, s)
        assert eta.shape == x.shape and eta.abs().max() <= EPS + 1e-7


def test_sdi_generator_updates_every_k_and_target_step_touches_no_generator_grad():
    model, method, x, y = _setup("fgsm_sdi")
    method.step(x, y, 0)  # it=0: generator step
    assert method.gen_steps == 1
    w = [p.detach().clone() for p in method.gen.parameters()]
    method.step(x, y, 1)  # it=1, k=2: target step only
    assert method.gen_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(w, method.gen.parameters()))
    assert all(p.grad is None for p in method.gen.parameters()), "wasted backward through the generator"
    method.step(x, y, 2)
    assert method.gen_steps == 2


def test_sdi_generator_maximises_the_target_loss():
    """Many generator steps on a fixed target and batch: the loss at x+δ must go up."""
    model, method, x, y = _setup("fgsm_sdi")
    method._ensure_generator(3)
    from training.methods.base import smoothed_ce

    def loss_now():
        method.gen.eval()
        g0, _ = method.ctx.input_grad(x, y)
        with torch.no_grad():
            eta = method.gen(x, g0.sign())
        d = method._delta(x, y, eta)
        with torch.no_grad():
            return smoothed_ce(model(x + d), y, 0.9).item()

    model.eval()  # freeze BN statistics so only the generator changes
    start = loss_now()
    for _ in range(30):
        g0, _ = method.ctx.input_grad(x, y)
        method.gen.train()
        d = method._delta(x, y, method.gen(x, g0.sign()))
        loss = -smoothed_ce(model(x + d), y, 0.9)
        grads = torch.autograd.grad(loss, list(method.gen.parameters()))
        for p, g in zip(method.gen.parameters(), grads):
            p.grad = g
        method.gen_opt.step()
    assert loss_now() > start


def test_free_replays_and_keeps_delta():
    model, method, x, y = _setup("free")
    method.step(x, y, 0)
    d1 = method.delta.clone()
    assert d1.abs().max() <= EPS + 1e-7 and d1.abs().sum() > 0
    method.step(x[:10], y[:10], 1)  # short last batch: the persistent buffer is sliced, not reset
    assert method.delta.shape == d1.shape
    assert torch.equal(method.delta[10:], d1[10:])


def test_ckpt_uses_clean_input_when_random_start_already_fools():
    # a model that misclassifies everything: every sample is trained on its clean x
    model, method, x, y = _setup("fgsm_ckpt")
    seen = {}

    class Spy(nn.Module):
        def forward(self, inp):
            seen.setdefault("inputs", []).append(inp.detach().clone())
            out = torch.zeros(len(inp), 4)
            out[:, 0] = 1.0
            return out + 0 * inp.sum() + 0 * self.w

    yy = torch.ones(16, dtype=torch.long)  # label 1, the spy always says 0
    spy = Spy()
    spy.register_parameter("w", nn.Parameter(torch.zeros(1)))
    method.ctx.model = spy
    method.ctx.optimizer = torch.optim.SGD(spy.parameters(), lr=0.1)
    method.ctx.schedule.optimizer = method.ctx.optimizer
    method.step(x, yy, 0)
    assert torch.equal(seen["inputs"][-1], x)


@pytest.mark.parametrize("alpha_255,eps_255", [(None, 16), (None, 8), (10, 16)])
def test_ckpt_step_is_1_25_eps_unless_set(alpha_255, eps_255):
    """FGSM-CKPT's α defaults to 1.25ε (the official 10/255 at ε = 8/255), not a fixed 10/255 (0.625ε at 16/255).

    A model that never flips its (correct) label trains on the full FGSM-RS point x1 = x + clip_ε(u + α·s) with
    u ~ U[-ε, ε] and s = sign of the gradient, here -1 everywhere: the smallest coordinate of -(x1 - x) is α - ε
    (over 3072 coordinates, within 1% of 2ε of it)."""
    eps = eps_255 / 255
    seen = []

    class Confident(nn.Module):  # logits [a·sum(x), 0, 0, 0]: always class 0; ∂CE/∂x < 0 everywhere
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.full((1,), 1e-3))  # small: softmax not saturated, the gradient not 0

        def forward(self, inp):
            seen.append(inp.detach().clone())
            z = self.a * inp.flatten(1).sum(1, keepdim=True)
            return torch.cat([z, torch.zeros(len(inp), 3)], 1)

    model = Confident()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx = StepContext(model, opt, None, eps, 4, torch.device("cpu"))
    ctx.schedule = Schedule(opt, 10, OptimConfig(lr=0.0), ScheduleConfig(name="constant"))
    cls = METHODS.get("fgsm_ckpt")
    method = cls(cls.Params(**({} if alpha_255 is None else {"alpha_255": alpha_255})), ctx)
    torch.manual_seed(0)
    x = torch.full((16, 3, 8, 8), 0.5)  # no clamping to [0, 1] within 16/255
    method.step(x, torch.zeros(16, dtype=torch.long), 0)
    d = -(seen[-1] - x)  # the training input
    alpha = 1.25 * eps if alpha_255 is None else alpha_255 / 255
    assert float(d.max()) == pytest.approx(eps, abs=1e-6)
    assert float(d.min()) == pytest.approx(alpha - eps, abs=0.02 * eps)
