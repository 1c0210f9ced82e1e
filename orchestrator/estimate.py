"""Compute estimate for ``orch sweep --dry-run``, measured on this machine rather than guessed.

For each distinct config (seeds don't change the cost), a *probe* runs the real ``training.run`` on a copy of
the config cut down to ``PROBE_BATCHES`` training batches, one epoch, and a ``PROBE_TEST`` image evaluation
with the same attack list, in a temporary folder. From its records:

- training seconds per image   = 1 / ``time/images_per_s`` (method, model, batch size and device included);
- per-epoch evaluation seconds  = ``time/epoch_eval_s`` (PGD on the fixed training batch and the validation
  split: the same size in the probe as in the trial);
- final evaluation seconds      = ``time/eval_s`` x (test images / ``PROBE_TEST``), for each evaluated checkpoint.

trial seconds = epochs x (train images x s/image + per-epoch eval) + final evaluation; sweep wall time =
sum over trials / concurrency (the start-up of Ray and MLflow, ~10 s, is not included). The probe runs where
the command runs: for a sweep meant for a GPU cluster, estimate there or read it as a CPU upper bound. A
dataset that is not available here (e.g. CIFAR-10 without internet) gives no estimate, with the reason.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

PROBE_BATCHES = 4
PROBE_TEST = 32
MAX_PROBES = 8


@dataclass
class Estimate:
    label: str
    epochs: int
    n_train: int
    n_test: int
    train_s_per_image: float
    epoch_eval_s: float
    final_eval_s: float
    probe_s: float

    @property
    def trial_s(self) -> float:
        return self.epochs * (self.n_train * self.train_s_per_image + self.epoch_eval_s) + self.final_eval_s


def probe(run_dict: dict[str, Any], label: str) -> Estimate:
    """Measure one config (see the module docstring). Raises on a config that cannot run here."""
    import torch

    from training import run
    from training.config import RunConfig
    from training.data import load as load_data

    cfg = RunConfig.from_dict(run_dict)
    torch.set_num_threads(1)
    data = load_data(cfg.data)
    n_train = len(data.train_y) if data.train_y is not None else len(data.train_dataset)
    n_test_full = len(data.test_y)
    n_test = n_test_full if cfg.eval.subset is None else min(cfg.eval.subset, n_test_full)
    with tempfile.TemporaryDirectory(prefix="orch-probe-") as tmp:
        d = json.loads(json.dumps(run_dict))
        d.update(epochs=1, out_dir=tmp, name="probe")
        d.setdefault("data", {})["train_limit"] = min(n_train, PROBE_BATCHES * cfg.batch_size)
        d.setdefault("eval", {})["subset"] = min(PROBE_TEST, n_test)
        d.setdefault("co", {})["detect"] = False
        pcfg = RunConfig.from_dict(d)
        t0 = time.perf_counter()
        recs = list(run(pcfg))
        probe_s = time.perf_counter() - t0
    epoch, final = recs[0], recs[-1]
    return Estimate(
        label=label, epochs=cfg.data_epochs, n_train=n_train, n_test=n_test,
        train_s_per_image=1.0 / max(epoch["time/images_per_s"], 1e-9),
        epoch_eval_s=float(epoch.get("time/epoch_eval_s", 0.0)),
        final_eval_s=float(final.get("time/eval_s", 0.0)) * n_test / max(min(PROBE_TEST, n_test), 1),
        probe_s=probe_s,
    )


def estimate_sweep(spec: Any) -> tuple[list[Estimate], float | None, str | None]:
    """Probe up to MAX_PROBES distinct configs; returns (estimates, total trial seconds, why not if impossible)."""
    from orchestrator.space import probe_points, trial_name

    if spec.trials:
        points, seen = [], set()
        for t in spec.trials:
            k = json.dumps(t.swept, sort_keys=True, default=str)
            if k not in seen:
                seen.add(k)
                points.append(t.swept)
        per_point_trials = len(spec.seeds)
        total_points = len(points)
    else:
        points = probe_points(spec.axes)
        per_point_trials = spec.num_trials / max(len(points), 1)
        total_points = len(points)
    if len(points) > MAX_PROBES:  # spread the probes over the plan
        step = len(points) / MAX_PROBES
        points = [points[int(i * step)] for i in range(MAX_PROBES)]
    ests = []
    for p in points:
        try:
            ests.append(probe(spec.run_dict(p, spec.seeds[0], name="probe", out_dir="/unused"), trial_name(p, spec.seeds[0]).rsplit(",seed=", 1)[0] or "base"))
        except Exception as e:  # noqa: BLE001 - dataset not available here, out of memory, ...
            return ests, None, f"{type(e).__name__}: {e}"
    mean_trial = sum(e.trial_s for e in ests) / len(ests)
    if spec.trials:
        total = mean_trial * spec.num_trials
    else:
        total = mean_trial * per_point_trials * total_points
    return ests, total, None


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"
