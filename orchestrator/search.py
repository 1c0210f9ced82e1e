"""Search algorithms: a registry whose entries plan a sweep's trials and build what Ray Tune runs them with.

Each :class:`Algorithm` says how its trials come to be:

- ``grid`` and ``random`` plan every trial before the run (``plan``: the points, each repeated over the seeds),
  so ``--dry-run`` lists exactly what runs and random points are paired across seeds; Tune runs them as a
  ``grid_search`` over that list.
- ``optuna`` suggests its configs while the sweep runs (TPE, seeded; the study in ``RDBStorage`` in the sweep
  folder, named after the sweep so an interrupted search continues). Each suggested config runs with every seed
  through ``repeater.SeedRepeater``, a searcher that holds Ray's ``OptunaSearch`` (as Ray's own ``Repeater``
  does, public methods only) and saves its seed groups with it.

A new algorithm is one entry of :data:`ALGORITHMS` (its checks, its plan or its searcher); ``spec.py`` and
``tuner.py`` ask the registry. Ray and Optuna are imported only when a searcher is built (``orch validate``
loads neither).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.space import Axis, grid_points, optuna_space, random_points

log = logging.getLogger("orch.search")


@dataclass(frozen=True)
class Algorithm:
    """One search algorithm.

    ``plan(axes, num_samples, seed)`` gives the points of a planned search (None: the algorithm suggests configs
    during the run, through ``searcher``); ``repeats`` says a plan may hold the same point twice (its trials then
    carry their draw number); ``searcher(spec, sweep_dir)`` builds the Tune searcher of a suggesting algorithm.
    """

    name: str
    label: str  # how the dry run names it
    plan: Callable[[list[Axis], int | None, int], list[dict[str, Any]]] | None = None
    repeats: bool = False
    searcher: Callable[[Any, Path], Any] | None = None
    samples: bool = True  # takes `search.num_samples` (configs to try); without: one trial per point and seed
    needs_metric: bool = False  # it optimises `metric:`
    needs_axes: bool = True  # a search over nothing is refused
    ranges: bool = True  # continuous ranges allowed as axes (a grid needs listed values)
    storage: bool = False  # keeps a study storage (`search.storage`)

    @property
    def planned(self) -> bool:
        return self.plan is not None


def _grid(axes: list[Axis], num_samples: int | None, seed: int) -> list[dict[str, Any]]:
    return grid_points(axes)


def _random(axes: list[Axis], num_samples: int | None, seed: int) -> list[dict[str, Any]]:
    return random_points(axes, num_samples, seed)


def _optuna(spec: Any, sweep_dir: Path) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.sweepdir import optuna_url

    inner = OptunaSearch(
        space=_Space(optuna_space(spec.axes)), metric=spec.metric, mode=spec.mode,
        # TPE samples at random until n_startup_trials configs are COMPLETE (default 10): a 12-config search
        # would be a random search. A third of the budget, between 2 and 10, leaves TPE most of it.
        sampler=optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup_trials(spec.search.num_samples)),
        storage=optuna_storage(optuna_url(sweep_dir, spec)), study_name=spec.name,
    )
    from orchestrator.repeater import SeedRepeater

    return SeedRepeater(inner, sweep_name=spec.name, seeds=spec.seeds)


NUMBER = "orch_optuna_number"  # the Optuna trial number (no "/": OptunaSearch unflattens keys at "/"), added to each suggested config by _Space


class _Space:
    """The search space as Optuna's define-by-run function: the axes' distributions suggested in order (the same
    draws as ``study.ask(distributions)``), plus the Optuna trial's number, unique in the study (trial names
    ``t<number>:`` and keys stay unique when several drivers share one study). A class, so Tune can pickle it."""

    def __init__(self, distributions: dict[str, Any]) -> None:
        self.distributions = distributions

    def __call__(self, trial: Any) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(name, d.choices)
            elif isinstance(d, IntDistribution):
                trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
            else:
                trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        return {NUMBER: trial.number}


ALGORITHMS: dict[str, Algorithm] = {
    "grid": Algorithm("grid", "grid", plan=_grid, samples=False, needs_axes=False, ranges=False),
    "random": Algorithm("random", "random points", plan=_random, repeats=True),
    "optuna": Algorithm("optuna", "Optuna TPE", searcher=_optuna, needs_metric=True, storage=True),
}


def startup_trials(num_samples: int | None) -> int:
    """Random configs before TPE models the results: a third of the budget, at least 2, at most Optuna's 10."""
    return max(2, min(10, (num_samples or 0) // 3))


def tune_search(spec: Any, sweep_dir: Path, skip: set[str] = frozenset()) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, param_space, num_samples) for ``tune.Tuner``: a planned search is a ``grid_search`` over its
    trials (less ``skip``, trial keys already finished); a suggesting one is its searcher run ``num_trials`` times."""
    alg = ALGORITHMS[spec.search.algorithm]
    if alg.planned:
        from ray import tune

        return None, {"trial": tune.grid_search([t.tune_config for t in spec.trials if t.key not in skip])}, 1
    return alg.searcher(spec, sweep_dir), {}, spec.num_trials


# ============================================================================================ Optuna storage


def optuna_storage(url: str) -> Any:
    """An RDBStorage for ``url``. SQLite shared by several drivers: a 60 s busy timeout (writers queue instead of
    failing with "database is locked"), and the first connection (which may create the schema while another
    process does the same) retried."""
    import optuna

    from orchestrator.tracking import sqlite_init_lock

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with sqlite_init_lock(url):  # creating the schema: one process at a time
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception:  # noqa: BLE001 - sqlalchemy OperationalError / IntegrityError while another creates the schema
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)


def fail_zombie_optuna_trials(storage_url: str, study_name: str) -> int:
    """Mark Optuna trials still RUNNING after a sweep ended as FAIL (a killed driver leaves them, stack.md Q4)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage_url))
    except KeyError:
        return 0
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n
