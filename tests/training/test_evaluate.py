"""``training.evaluate``: accuracy, attack_accuracy and robustness_matrix (keys, ordering, eval mode, timing,
errors)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.attacks import EVAL_PRESETS
from training.evaluate import accuracy, attack_accuracy, eval_mode, robustness_matrix

CHEAP_AA = {"n_iter": 10, "n_queries": 50}


class ModeRecorder(nn.Module):
    """Identity that records the mode of every forward pass it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.recorder = ModeRecorder()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Dropout(0.5), nn.Linear(8 * 4 * 4, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.recorder(x))


@pytest.fixture(scope="module")
def trained() -> tuple[Net, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained for 150 Adam steps on 1,200 digits; returns (model, 200 test x, y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        i = torch.randint(0, 1200, (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model, x[1200:1400].clone(), y[1200:1400].clone()


@pytest.fixture(scope="module")
def matrix(trained) -> dict[str, float]:
    model, x, y = trained
    model.recorder.seen.clear()
    return robustness_matrix(
        model, x, y, columns=("clean", "fgsm", "pgd10", "pgd50", "cw", "apgd_ce", "aa"), eps_255=(16, 24),
        batch_size=128, aa_kwargs=CHEAP_AA,
    )


def test_matrix_keys_in_column_order(matrix):
    acc_keys = [k for k in matrix if not k.startswith("seconds/")]
    expected = ["clean"]
    for col in ("fgsm", "pgd10", "pgd50", "cw", "apgd_ce", "aa"):
        for e in ("16", "24"):
            expected.append(f"{col}_eps{e}")
            if col == "aa":
                expected += [f"aa/{s}_eps{e}" for s in ("apgd_ce", "apgd_t", "fab_t", "square")]
    assert acc_keys == expected
    timed = [k for k in expected if not k.startswith("aa/")]
    assert sorted(k for k in matrix if k.startswith("seconds/")) == sorted(f"seconds/{k}" for k in timed)
    assert all(matrix[f"seconds/{k}"] > 0 for k in timed)
    assert all(0.0 <= matrix[k] <= 1.0 for k in acc_keys)


def test_matrix_ordering(matrix):
    m = matrix
    assert m["clean"] > 0.8
    for e in ("16", "24"):
        for col in ("fgsm", "pgd10", "pgd50", "cw", "apgd_ce", "aa"):
            assert m[f"{col}_eps{e}"] <= m["clean"]
        assert m[f"pgd50_eps{e}"] <= m[f"pgd10_eps{e}"] + 0.02
        assert m[f"aa_eps{e}"] <= m[f"apgd_ce_eps{e}"] + 1e-9
        stages = [m[f"aa/{s}_eps{e}"] for s in ("apgd_ce", "apgd_t", "fab_t", "square")]
        assert stages == sorted(stages, reverse=True) and stages[-1] == m[f"aa_eps{e}"]
    assert m["pgd10_eps24"] <= m["pgd10_eps16"] + 0.02  # a larger ball is not harder to attack
    assert m["pgd10_eps16"] < m["clean"]  # the attacks do bite at this ε


def test_matrix_runs_in_eval_mode_and_restores_modes(trained):
    model, x, y = trained
    model.train()
    model.body[1].eval()  # a frozen-BN submodule must stay frozen
    before = [m.training for m in model.modules()]
    model.recorder.seen.clear()
    try:
        robustness_matrix(model, x[:64], y[:64], columns=("clean", "pgd10", "aa"), aa_kwargs=CHEAP_AA)
        assert model.recorder.seen and not any(model.recorder.seen), "a forward pass ran in train mode"
        assert [m.training for m in model.modules()] == before
        model.recorder.seen.clear()
        accuracy(model, x[:64], y[:64])
        attack_accuracy(model, x[:64], y[:64], "pgd", eps=8 / 255, steps=2)
        assert model.recorder.seen and not any(model.recorder.seen)
        assert [m.training for m in model.modules()] == before
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_restores_on_error(trained):
    model = trained[0]
    model.train()
    try:
        with pytest.raises(RuntimeError):
            with eval_mode(model):
                raise RuntimeError("boom")
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_unknown_column_is_refused(trained):
    model, x, y = trained
    with pytest.raises(ValueError) as err:
        robustness_matrix(model, x, y, columns=("clean", "pgd7"))
    msg = str(err.value)
    assert "pgd7" in msg and all(name in msg for name in EVAL_PRESETS)


def test_accuracy_and_attack_accuracy(trained):
    model, x, y = trained
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    a = attack_accuracy(model, x, y, "pgd", eps=16 / 255, batch_size=64, seed=1, steps=5)
    assert a == attack_accuracy(model, x, y, "pgd", eps=16 / 255, batch_size=64, seed=1, steps=5)
    assert a < expected
    # a callable works as well as a registered name
    from training.attacks import pgd

    assert attack_accuracy(model, x, y, pgd, eps=16 / 255, batch_size=64, seed=1, steps=5) == a


def test_attack_accuracy_refuses_an_attack_that_leaves_the_ball(trained):
    model, x, y = trained

    def cheat(model, x, y, *, eps, generator=None):
        return (x + 2 * eps).clamp(0, 1)

    with pytest.raises(RuntimeError, match="threat model"):
        attack_accuracy(model, x[:16], y[:16], cheat, eps=8 / 255)


def test_progress_and_eps_keys(trained):
    model, x, y = trained
    calls = []
    out = robustness_matrix(
        model, x[:32], y[:32], columns=("clean", "fgsm"), eps_255=(8.0, 0.5),
        progress=lambda key, acc, sec: calls.append(key),
    )
    assert calls == ["clean", "fgsm_eps8", "fgsm_eps0.5"]
    assert set(out) == {"clean", "fgsm_eps8", "fgsm_eps0.5", "seconds/clean", "seconds/fgsm_eps8", "seconds/fgsm_eps0.5"}


def test_matrix_is_reproducible_and_column_independent(trained):
    model, x, y = trained
    a = robustness_matrix(model, x[:64], y[:64], columns=("pgd10",), eps_255=(16,), seed=5)
    b = robustness_matrix(model, x[:64], y[:64], columns=("fgsm", "pgd10"), eps_255=(16,), seed=5)
    assert a["pgd10_eps16"] == b["pgd10_eps16"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matrix_on_cuda(trained):
    import copy

    model, x, y = trained
    model = copy.deepcopy(model).cuda().eval()
    out = robustness_matrix(model, x[:64].cuda(), y[:64].cuda(), columns=("clean", "pgd10", "aa"),
                            aa_kwargs=CHEAP_AA)
    assert 0.0 <= out["aa_eps8"] <= out["clean"]
