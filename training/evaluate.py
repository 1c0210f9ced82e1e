"""Clean and robust accuracy: ``accuracy``, ``attack_accuracy`` and the ``robustness_matrix`` of the evaluation protocol
(spec ``at_methods.md`` §8: eval mode, inputs in [0,1], batch 500, the columns of ``training.attacks.EVAL_PRESETS``).

Every function puts the model in eval mode for its duration and then restores the exact mode each submodule had
(not just the top-level flag, so a frozen-BN submodule stays frozen). Everything runs on the device of ``x`` (the
model must live there too); nothing assumes CUDA.

Reproducibility: each (column, ε) gets its own ``torch.Generator`` seeded with ``seed``, so a number does not depend
on which other columns ran or in which order.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from training.attacks import ATTACKS, EVAL_PRESETS
from training.attacks.autoattack import STAGES, autoattack_stages
from training.metrics import column_key

__all__ = ["eval_mode", "accuracy", "attack_accuracy", "robustness_matrix", "DEFAULT_COLUMNS"]

DEFAULT_COLUMNS = ("clean", "fgsm", "pgd10", "pgd20", "pgd50", "cw", "apgd_ce", "aa")
_BALL_TOL = 1e-5  # an attack returning points further than this outside the ε-ball or [0,1] is a bug: refuse it


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode inside the block; afterwards every submodule's ``training`` flag is what it was before."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag  # set the flag directly: an overridden train() must not re-run its side effects


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    y = y.to(x.device)
    for i in range(0, x.shape[0], batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


@torch.no_grad()
def _n_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum().item())


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Clean accuracy in [0,1] (eval mode, no grad; the model's modes are restored)."""
    if x.shape[0] == 0:
        return float("nan")
    with eval_mode(model):
        correct = sum(_n_correct(model, xb, yb) for xb, yb in _batches(x, y, batch_size))
    return correct / x.shape[0]


def _check_adv(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    dist = (x_adv - x).abs().max().item() if x.numel() else 0.0
    if dist > eps + _BALL_TOL or x_adv.min().item() < -_BALL_TOL or x_adv.max().item() > 1 + _BALL_TOL:
        raise RuntimeError(f"attack {name} left the threat model: max |x_adv - x| = {dist:.6g} (eps {eps:.6g}), "
                           f"range [{x_adv.min().item():.4g}, {x_adv.max().item():.4g}]")


def attack_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str | Callable[..., torch.Tensor], *,
                    eps: float, batch_size: int = 500, seed: int = 0, on_batch: Callable[[int], None] | None = None,
                    **params: Any) -> float:
    """Accuracy in [0,1] on ``attack(model, x, y, eps=eps, generator=g, **params)``, batched, in eval mode.

    ``attack`` is a registered name or the function itself; ``eps`` is in pixel units. One generator, seeded with
    ``seed`` on ``x``'s device, runs through all batches. The model's modes are restored afterwards.
    ``on_batch(points_done)`` is called after each batch.
    """
    fn = ATTACKS.get(attack)
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", repr(attack))
    if x.shape[0] == 0:
        return float("nan")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    correct = done = 0
    with eval_mode(model):
        for xb, yb in _batches(x, y, batch_size):
            x_adv = fn(model, xb, yb, eps=eps, generator=gen, **params)
            _check_adv(name, x_adv, xb, eps)
            correct += _n_correct(model, x_adv, yb)
            done += xb.shape[0]
            if on_batch is not None:
                on_batch(done)
    return correct / x.shape[0]


def _aa_columns(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int, seed: int,
                kwargs: Mapping[str, Any], on_batch: Callable[[int], None] | None = None) -> tuple[float, dict[str, float]]:
    """AutoAttack batch by batch; returns the final accuracy and the per-stage accuracies over all points."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    stages = tuple(kwargs.get("stages", STAGES))
    correct = dict.fromkeys(stages, 0)
    final = done = 0
    for xb, yb in _batches(x, y, batch_size):
        x_adv, accs = autoattack_stages(model, xb, yb, eps=eps, generator=gen, **kwargs)
        _check_adv("autoattack", x_adv, xb, eps)
        for s in stages:
            correct[s] += round(accs[s] * xb.shape[0])  # back to a count: the fractions are k / batch
        final += _n_correct(model, x_adv, yb)
        done += xb.shape[0]
        if on_batch is not None:
            on_batch(done)
    n = x.shape[0]
    return final / n, {s: c / n for s, c in correct.items()}


def robustness_matrix(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, columns: Sequence[str] = DEFAULT_COLUMNS,
                      eps_255: Sequence[float] = (8,), batch_size: int = 500, seed: int = 0, aa_kwargs: Mapping[str, Any] | None = None,
                      attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                      progress: Callable[[str, float, float], None] | None = None,
                      on_batch: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """The evaluation table for one model: every column of ``columns`` at every ε of ``eps_255``.

    Args:
        columns: names from ``EVAL_PRESETS``; an unknown name raises ``ValueError``.
        eps_255: threat-model radii in 1/255 units (``eps = eps_255 / 255``).
        batch_size: points attacked at once (500 in the protocol).
        seed: seeds a fresh generator for every (column, ε).
        aa_kwargs: overrides for the ``aa`` column, e.g. ``{"n_iter": 10, "n_queries": 100}`` for a cheap run.
        attack_kwargs: overrides of any column's preset kwargs, ``{column: {param: value}}``.
        progress: called as ``progress(key, accuracy, seconds)`` after each entry.
        on_batch: called as ``on_batch(key, points_done, points)`` when an entry starts (``points_done`` = 0) and
            after each of its batches (a long evaluation shows where it is).

    Returns a flat dict, in column order: ``"clean"``, ``"pgd10_eps8"``, ... (accuracy in [0,1]); ``"seconds/<key>"``
    (wall time of that entry); for ``aa`` also the accuracy after each stage, ``"aa/apgd_ce_eps8"``, ``"aa/apgd_t_eps8"``,
    ``"aa/fab_t_eps8"``, ``"aa/square_eps8"`` (names: ``training.metrics.column_key``).
    """
    unknown = [c for c in columns if c not in EVAL_PRESETS]
    if unknown:
        raise ValueError(f"unknown evaluation column(s) {unknown}; known: {', '.join(EVAL_PRESETS)}")
    bad_over = [c for c in (attack_kwargs or {}) if c not in EVAL_PRESETS]
    if bad_over:
        raise ValueError(f"attack_kwargs for unknown column(s) {bad_over}; known: {', '.join(EVAL_PRESETS)}")

    out: dict[str, float] = {}

    def record(key: str, acc: float, seconds: float) -> None:
        out[key] = acc
        out[f"seconds/{key}"] = seconds
        if progress is not None:
            progress(key, acc, seconds)

    with eval_mode(model):
        for col in columns:
            attack, preset = EVAL_PRESETS[col]
            kwargs = {**preset, **(attack_kwargs or {}).get(col, {})}
            if col == "aa":
                kwargs.update(aa_kwargs or {})
            if attack is None:  # clean: one number, no ε
                if on_batch is not None:
                    on_batch(col, 0, x.shape[0])
                t0 = time.perf_counter()
                record(col, accuracy(model, x, y, batch_size), time.perf_counter() - t0)
                continue
            for e255 in eps_255:
                key = column_key(col, e255)
                eps = float(e255) / 255
                kw = dict(kwargs)
                if "alpha_rel" in kw:  # step size relative to ε (presets.py); an explicit alpha wins
                    kw.setdefault("alpha", kw.pop("alpha_rel") * eps)
                hook = None
                if on_batch is not None:
                    on_batch(key, 0, x.shape[0])
                    hook = lambda done, key=key: on_batch(key, done, x.shape[0])  # noqa: E731
                t0 = time.perf_counter()
                stages: dict[str, float] = {}
                if attack == "autoattack":
                    acc, stages = _aa_columns(model, x, y, eps, batch_size, seed, kw, on_batch=hook)
                else:
                    acc = attack_accuracy(model, x, y, attack, eps=eps, batch_size=batch_size, seed=seed, on_batch=hook, **kw)
                record(key, acc, time.perf_counter() - t0)
                for s, a in stages.items():
                    out[column_key(col, e255, s)] = a
    return out
