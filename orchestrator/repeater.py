"""Seed repetition for a suggesting search: every config runs once per seed, the searcher learns the mean.

Imports Ray (a searcher is a ``ray.tune.search.Searcher``): only the sweep driver loads it (``search.py``).
"""
from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune.search import Searcher

from orchestrator.search import NUMBER
from orchestrator.space import trial_name
from orchestrator.spec import trial_key

log = logging.getLogger("orch.search")


class SeedRepeater(Searcher):
    """Runs every config an inner searcher suggests once per seed; tells it the mean over the seeds.

    - Seeds: each suggested config is handed out ``len(seeds)`` times (one Tune trial per seed); the inner searcher
      is told the mean once all of them completed (as Tune's own ``Repeater`` does; a seed that failed is left out
      of the mean). The groups are saved with the experiment (``get_state``).
    - Intermediate values go to the inner searcher at epoch steps, from the config's first seed. Metrics that only
      the final record has (``best/pgd10_eps8``) are not intermediate values. An epoch metric (``val/pgd_acc``,
      the one ASHA needs) is not in the final record: a trial that finished is scored with its last epoch's value.
    - A config a scheduler stopped early (ASHA) is told PRUNED (a completion without the metric), not COMPLETE:
      TPE then ranks it by its last intermediate value, instead of taking a 3-epoch accuracy for a finished one.
    - Restores: a result for a config that is already told (a stale snapshot replays it) is ignored instead of
      crashing ``fit()`` with ``UpdateFinishedTrialError`` (stack.md Q4).
    """

    def __init__(self, searcher: Any, *, sweep_name: str, seeds: list[int]) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.sweep_name = sweep_name
        self.seeds = list(seeds)
        self.groups: dict[str, dict[str, Any]] = {}  # primary tune trial id -> group
        self.member: dict[str, str] = {}  # tune trial id -> primary id
        self.open: str | None = None
        self.last: dict[str, float] = {}  # tune trial id -> last epoch value of the metric

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        g = self.groups.get(self.open) if self.open else None
        if g is None or len(g["members"]) >= len(self.seeds):
            params = self.searcher.suggest(trial_id)
            if params is None or params == Searcher.FINISHED:
                return params
            params = dict(params)
            g = {"params": params, "number": params.pop(NUMBER, None), "members": {}, "scores": {}, "told": False}
            self.groups[trial_id] = g
            self.open = trial_id
        primary = self.open
        seed = self.seeds[len(g["members"])]
        g["members"][trial_id] = seed
        self.member[trial_id] = primary
        swept = dict(g["params"])
        return {"trial": {
            "swept": swept, "seed": seed, "name": trial_name(swept, seed, prefix=f"t{g['number']}:"),
            "key": trial_key(self.sweep_name, swept, seed, extra=("optuna", g["number"])),
        }}

    def _report(self, primary: str, value: float, epoch: int) -> None:
        try:
            self.searcher.on_trial_result(primary, {self.searcher.metric: value, "training_iteration": epoch})
        except Exception as e:  # noqa: BLE001 - a config already told (restored from a stale snapshot), or a step reported twice
            log.debug("ignored intermediate value for %s: %s", primary, e)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result and not result.get("final") and isinstance(result[self.metric], (int, float)):
            self.last[trial_id] = float(result[self.metric])
        primary = self.member.get(trial_id)
        if primary != trial_id or self.metric not in result or "epoch" not in result or self.groups[primary]["told"]:
            return  # intermediate values: the first seed's, at epoch steps
        self._report(primary, float(result[self.metric]), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        primary = self.member.get(trial_id)
        if primary is None:
            return
        g = self.groups[primary]
        v = None if (error or not result) else result.get(self.metric)
        if v is None and not error:
            v = self.last.get(trial_id)  # an epoch metric: the last epoch's value
        g["scores"][trial_id] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        if not error and result and not result.get("final"):
            g["stopped"] = True  # ended by the scheduler before its final record
            # Tune hands the result that made ASHA stop the trial to on_trial_complete only, never to
            # on_trial_result: report it, or the searcher keeps the previous epoch's value for the pruned config
            if primary == trial_id and isinstance(v, (int, float)) and "epoch" in result and not g["told"]:
                self._report(primary, float(v), int(result["epoch"]))
        if len(g["scores"]) < len(self.seeds) or g["told"]:
            return
        good = [s for s in g["scores"].values() if s is not None]
        if good and g.get("stopped"):
            self.searcher.on_trial_complete(primary, result={}, error=False)  # no value: PRUNED
        elif good:
            self.searcher.on_trial_complete(primary, result={self.metric: sum(good) / len(good)})
        else:
            self.searcher.on_trial_complete(primary, result=None, error=True)  # FAIL
        g["told"] = True

    # ------------------------------------------------------------------ state
    # Tune's SearchGenerator saves a wrapper (a searcher with a `.searcher`) through get_state/set_state and the
    # inner searcher through its own save_to_dir: the seed groups are saved with the experiment and restored.
    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
