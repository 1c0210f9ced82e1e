"""Search spaces: the sweep file's ``axes`` as typed :class:`Axis` objects, and what each search algorithm needs.

- grid: the cartesian product of discrete axes (:func:`grid_points`);
- random: ``num_samples`` points drawn *by us* with a seeded NumPy generator (:func:`random_points`), so the dry
  run can list every trial, the same point is run with every seed (paired seeds, mean ± std per point), and a
  resumed sweep regenerates exactly the same points;
- optuna: a dict of Optuna distributions (:func:`optuna_space`; measured faster than a Tune space in stack.md
  Q2) sampled by TPE inside the searcher.

Ranges are inclusive on both ends, ``randint`` included (Tune's ``randint`` excludes the upper end; a sweep
file should read like the paper's table, so ``randint: [1, 40]`` can give 40).

Nothing here imports Ray or Optuna at module level: validation and ``orch validate`` stay fast.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # numpy only where a random search draws points (orch validate stays fast)
    import numpy as np

KINDS = ("values", "choice", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Axis:
    """One swept key of the run config (dotted, e.g. ``method.k``)."""

    key: str
    kind: str  # values | choice | uniform | loguniform | randint
    values: tuple[Any, ...] = ()  # values / choice
    low: float | int | None = None  # uniform / loguniform / randint
    high: float | int | None = None

    @property
    def discrete(self) -> bool:
        return self.kind in ("values", "choice")

    @property
    def short(self) -> str:
        """The name used in trial names: the last part of the dotted key (``method.k`` -> ``k``)."""
        return self.key.rsplit(".", 1)[-1]

    def sample(self, rng: np.random.Generator) -> Any:
        if self.discrete:
            return self.values[int(rng.integers(len(self.values)))]
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return int(rng.integers(self.low, self.high + 1))  # randint: inclusive

    def probe_values(self) -> list[Any]:
        """Values that validation builds a RunConfig for: every discrete value, or both ends of a range."""
        return list(self.values) if self.discrete else [self.low, self.high]

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}" if self.discrete else f"{self.kind} [{self.low}, {self.high}]"


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in file order (the last axis varies fastest)."""
    if not axes:
        return [{}]
    return [dict(zip([a.key for a in axes], combo)) for combo in itertools.product(*(a.values for a in axes))]


def random_points(axes: list[Axis], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points drawn from the axes with ``np.random.default_rng(seed)`` (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{a.key: a.sample(rng) for a in axes} for _ in range(n)]


def probe_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Configs that validation checks for a sampled space: one axis at a time at each probe value (the others at
    their first probe value), plus all-low and all-high. Linear in the number of axes, unlike the full corners."""
    if not axes:
        return [{}]
    first = {a.key: a.probe_values()[0] for a in axes}
    return [dict(first), {a.key: a.probe_values()[-1] for a in axes}, *({**first, a.key: v} for a in axes for v in a.probe_values()[1:])]


def distinct_points(trials: Iterable[Any], axes: list[Axis]) -> list[dict[str, Any]]:
    """The distinct swept points of a planned trial list (each trial's ``swept``; seeds don't change a config), in
    order; without a list (a search), the :func:`probe_points` of ``axes``."""
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        out.setdefault(json.dumps(t.swept, sort_keys=True, default=str), t.swept)
    return list(out.values()) or probe_points(axes)


def optuna_space(axes: Iterable[Axis]) -> dict[str, Any]:
    """Axes as Optuna distributions (a plain dict: Tune pickles the searcher, so no closures)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for a in axes:
        if a.discrete:
            space[a.key] = CategoricalDistribution(list(a.values))
        elif a.kind == "uniform":
            space[a.key] = FloatDistribution(float(a.low), float(a.high))
        elif a.kind == "loguniform":
            space[a.key] = FloatDistribution(float(a.low), float(a.high), log=True)
        else:
            space[a.key] = IntDistribution(int(a.low), int(a.high))
    return space


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):  # a section-valued axis: {name: pgd_at, steps: 10} -> pgd_at(steps=10)
        rest = ",".join(f"{k}={format_value(x)}" for k, x in v.items() if k != "name")
        if "name" in v:
            return f"{format_value(v['name'])}({rest})" if rest else format_value(v["name"])
        return rest
    return str(v)


def short_names(keys: list[str]) -> dict[str, str]:
    """Short display names for dotted keys: the last part, or the full key where two would collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def trial_name(swept: dict[str, Any], seed: int, prefix: str = "") -> str:
    """``k=20,seed=0`` — the name of a trial in MLflow, the live view and the trial folder."""
    names = short_names(list(swept))
    parts = [f"{names[k]}={format_value(v)}" for k, v in swept.items()] + [f"seed={seed}"]
    return prefix + ",".join(parts)
