"""How long the final robustness evaluation will take: a small measured probe, scaled the way each attack scales.

An attack's cost is not fixed per image. PGD, C&W and every AutoAttack stage stop working on a point once it is
fooled (or never start on one the model gets wrong), and AutoAttack's later stages (APGD-T, FAB-T, Square: 90% of
its cost) run only on the points every earlier stage left robust. A probe on a barely trained model (every point
fooled at once) is therefore 10-20x too cheap.

:func:`probe_eval_cost` measures the *full* cost per point: every stage of every column runs on ``PROBE_POINTS``
test images (and on a quarter of them, to tell the per-call overhead from the per-point cost) labelled with the
model's own predictions, at ε = 0, so no point is ever fooled and every iteration
runs, with the iteration counts cut to a few (``PROBE_ITERS``; cost is linear in them) and scaled back up.
:func:`predict_eval_seconds` then multiplies by the points each stage will see: the clean-correct fraction for a
column's attack (and AutoAttack's first stage), the robust fraction for AutoAttack's later stages. Inside a run
these fractions come from the checkpoint's own validation numbers (PGD and C&W drop a point once fooled: robust
fraction; APGD attacks every correctly classified point for all its iterations: clean fraction) (``val/clean_acc``, ``val/pgd_acc``); a dry run
has no trained model and uses 1 (every point survives: an upper bound).

The probe costs about 1% of the evaluation it predicts (30 points, a few iterations per attack).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from training.attacks import ATTACKS, EVAL_PRESETS
from training.attacks.autoattack import STAGES
from training.metrics import column_key

__all__ = ["EvalCost", "probe_eval_cost", "predict_eval_seconds", "PROBE_POINTS"]

PROBE_POINTS = 24
PROBE_ITERS = 2  # iterations (PGD steps, APGD/FAB iterations) per probe run
PROBE_QUERIES = 10  # Square queries per probe run


@dataclass
class EvalCost:
    """Cost at full iteration counts per evaluation entry (``pgd10_eps8``) and stage: ``stages[key]`` is a list of
    ``(stage, fraction, seconds_per_call, seconds_per_point)`` (an attack call on a batch of B points takes
    ``seconds_per_call + B x seconds_per_point``: small batches are dominated by the per-iteration overhead);
    fraction is ``"all"``, ``"clean"`` or ``"robust"``: which share of a batch that stage works on."""

    stages: dict[str, list[tuple[str, str, float, float]]] = field(default_factory=dict)


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def _plan(col: str, kwargs: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], float]]:
    """``(stage, fraction, attack, probe kwargs, scale)`` for one column: the probe runs ``attack`` with the probe
    kwargs; its time x scale is the full column's cost on the same points."""
    attack, _ = EVAL_PRESETS[col]
    kw = {k: v for k, v in kwargs.items() if k != "alpha_rel"}
    if attack is None:
        return [("clean", "all", "", {}, 1.0)]
    if attack == "fgsm":
        return [(col, "all", "fgsm", kw, 1.0)]
    if attack in ("pgd", "cw"):
        steps = int(kw.get("steps", 10))
        p = min(steps, PROBE_ITERS)
        # early stop: a point is dropped once fooled, so the steps go to the points that stay robust
        return [(col, "robust", attack, {**kw, "steps": p, "alpha": 0.0}, steps / max(p, 1))]
    if attack in ("apgd_ce", "apgd_t", "fab_t", "square"):
        key, full, cut = ("n_queries", 5000, PROBE_QUERIES) if attack == "square" else ("n_iter", 100, PROBE_ITERS)
        n = int(kw.get(key, full))
        p = min(n, cut)
        return [(col, "clean", attack, {**kw, key: p}, n / max(p, 1))]
    if attack == "autoattack":
        n_iter, nq = int(kw.get("n_iter", 100)), int(kw.get("n_queries", 5000))
        tc = int(kw.get("n_target_classes", 9))
        pi, pq = min(n_iter, PROBE_ITERS), min(nq, PROBE_QUERIES)
        stage_kw = {
            "apgd_ce": ({"n_iter": pi}, n_iter / pi),
            "apgd_t": ({"n_iter": pi, "n_target_classes": tc}, n_iter / pi),
            "fab_t": ({"n_iter": pi, "n_target_classes": tc}, n_iter / pi),
            "square": ({"n_queries": pq}, nq / pq),
        }
        stages = tuple(kw.get("stages", STAGES))
        return [(s, "clean" if i == 0 else "robust", s, stage_kw[s][0], stage_kw[s][1]) for i, s in enumerate(stages)]
    raise ValueError(f"no cost model for attack {attack!r} (column {col})")


def probe_eval_cost(model: torch.nn.Module, x: torch.Tensor, *, columns: Sequence[str], eps_255: Sequence[float],
                    aa_kwargs: Mapping[str, Any] | None = None, attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                    points: int = PROBE_POINTS) -> EvalCost:
    """Measure the per-point cost of every entry of the evaluation (see the module docstring). ``x``: test images
    (the first ``points`` are used) on the model's device. The model's modes are restored afterwards."""
    from training.evaluate import eval_mode

    xs = x[:points].detach()
    cost = EvalCost()
    if xs.shape[0] == 0:
        return cost
    with eval_mode(model):
        with torch.no_grad():
            ys = model(xs).argmax(1)  # the model's own labels: every point starts "correct"
        measured: dict[tuple, float] = {}  # the same probe for every ε (ε = 0 anyway)
        for col in columns:
            preset = {**EVAL_PRESETS[col][1], **(attack_kwargs or {}).get(col, {})}
            if col == "aa":
                preset.update(aa_kwargs or {})
            eps_list = [None] if EVAL_PRESETS[col][0] is None else list(eps_255)
            plan = _plan(col, preset)
            per_point = []
            for stage, frac, attack, kw, scale in plan:
                sig = (attack, tuple(sorted((k, str(v)) for k, v in kw.items())))
                if sig not in measured:
                    measured[sig] = _fit(model, xs, ys, attack, kw)
                a, b = measured[sig]
                per_point.append((stage, frac, a * scale, b * scale))
            for e in eps_list:
                cost.stages[column_key(col, e)] = list(per_point)
    return cost


def _fit(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, attack: str, kw: dict[str, Any]) -> tuple[float, float]:
    """(seconds per call, seconds per point) of one probe call, from timing it on a quarter and on all of ``xs``."""
    def call(n: int) -> float:  # seconds of one call on the first n points (the clean forward when no attack)
        gen = torch.Generator(device=xs.device).manual_seed(0)
        _sync(xs)
        t0 = time.perf_counter()
        if attack:
            ATTACKS.get(attack)(model, xs[:n], ys[:n], eps=0.0, generator=gen, **kw)
        else:
            with torch.no_grad():
                model(xs[:n])
        _sync(xs)
        return time.perf_counter() - t0

    n2 = xs.shape[0]
    n1 = max(1, n2 // 4)
    t1, t2 = call(n1), call(n2)
    if n2 == n1:
        return 0.0, t2 / n2
    b = max((t2 - t1) / (n2 - n1), 0.0)
    return max(t1 - b * n1, 0.0), b


def _frac(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 1.0


def predict_eval_seconds(cost: EvalCost, n: int, clean: float | None = 1.0, robust: float | None = 1.0,
                         batch_size: int = 500) -> dict[str, float]:
    """Predicted seconds of each entry on ``n`` test points attacked in batches of ``batch_size``, given the
    fraction of points classified correctly (``clean``) and still robust to a strong attack (``robust``); None or
    NaN means 1 (an upper bound)."""
    fc = min(max(_frac(clean), 0.0), 1.0)
    fr = min(max(_frac(robust), 0.0), fc)
    share = {"all": 1.0, "clean": fc, "robust": fr}
    batches = [min(batch_size, n - i) for i in range(0, max(n, 0), max(batch_size, 1))]
    return {k: sum(a + b * share[f] * bs for bs in batches for _, f, a, b in st if share[f] * bs >= 0.5)
            for k, st in cost.stages.items()}
