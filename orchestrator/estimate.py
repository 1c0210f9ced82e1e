"""Compute estimate for ``orch sweep --dry-run``, measured on this machine rather than guessed.

For each distinct config (seeds don't change the cost), a *probe* runs the real ``training.run`` on a copy of
the config cut down to ``PROBE_BATCHES`` training batches, one epoch and a clean-only final evaluation, in a
temporary folder. From its records:

- training seconds per image   = 1 / ``time/images_per_s`` (method, model, batch size and device included);
- per-epoch evaluation seconds  = ``time/epoch_eval_s`` (PGD on the fixed training batch and the validation
  split: the same size in the probe as in the trial);
- final evaluation seconds      = ``training.evalcost`` for each evaluated checkpoint, assuming every point stays
  robust: an upper bound, since a barely trained probe model cannot tell how many will (the run itself prints a
  tighter estimate before it evaluates). Configs that differ only in training (``method.k``) share one probe.

Bounded: the probes stop after ``BUDGET_S`` seconds (the configs not probed by then are estimated from the mean
of those that were), and ``progress(text)`` is called before each probe.

trial seconds = epochs x (train images x s/image + per-epoch eval) + final evaluation; sweep wall time =
sum over trials / concurrency (the start-up of Ray and MLflow, ~10 s, is not included). The probe runs where
the command runs: for a sweep meant for a GPU cluster, estimate there or read it as a CPU upper bound. A
dataset that is not available here (e.g. CIFAR-10 without internet) gives no estimate, with the reason.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from training.config import RunConfig
from training.metrics import eval_eps
from orchestrator.space import distinct_points, trial_name

PROBE_BATCHES = 4
MAX_PROBES = 8
BUDGET_S = 20.0  # probing stops after this many seconds (the dry run's --help says so)


@dataclass
class Estimate:
    label: str
    epochs: int
    n_train: int
    train_s_per_image: float
    epoch_eval_s: float
    final_eval_s: float

    @property
    def trial_s(self) -> float:
        return self.epochs * (self.n_train * self.train_s_per_image + self.epoch_eval_s) + self.final_eval_s


def _eval_key(d: dict[str, Any]) -> str:
    """What the final evaluation's cost depends on (not the training method)."""
    return json.dumps({k: d.get(k) for k in ("model", "data", "eval", "threat", "device", "precision", "channels_last")},
                      sort_keys=True, default=str)


def probe(run_dict: dict[str, Any], label: str, eval_cache: dict[str, Any] | None = None) -> Estimate:
    """Measure one config (see the module docstring). Raises on a config that cannot run here."""
    import torch

    from training import run
    from training.checkpoint import load as load_ckpt
    from training.data import load as load_data
    from training.evalcost import predict_eval_seconds, probe_eval_cost
    from training.loop import resolve_device
    from training.models import create_model

    cfg = RunConfig.from_dict(run_dict)
    torch.set_num_threads(1)
    data = load_data(cfg.data)
    n_train = data.n_train
    n_test = len(data.test_y) if cfg.eval.subset is None else min(cfg.eval.subset, len(data.test_y))
    with tempfile.TemporaryDirectory(prefix="orch-probe-") as tmp:
        d = json.loads(json.dumps(run_dict))
        d.update(epochs=1, out_dir=tmp, name="probe")
        d.setdefault("data", {})["train_limit"] = min(n_train, PROBE_BATCHES * cfg.batch_size)
        d.setdefault("eval", {}).update(attacks=["clean"], checkpoints=["last"], subset=8)
        d.setdefault("co", {})["detect"] = False
        recs = list(run(RunConfig.from_dict(d)))
        key = _eval_key(cfg.to_dict())
        cost = (eval_cache or {}).get(key)
        if cost is None:
            device = resolve_device(cfg.device)
            data = data.to(device)
            model = create_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.channels,
                                 image_size=data.image_size, activation=cfg.model.activation, act_alpha=cfg.model.act_alpha,
                                 smooth_grad_for=cfg.model.smooth_grad_for, width=cfg.model.width, mean=data.mean,
                                 std=data.std).to(device)
            model.load_state_dict(load_ckpt(f"{tmp}/last.pt", map_location=device)["model"])
            cost = probe_eval_cost(model, data.test_x, columns=cfg.eval.attacks, eps_255=eval_eps(cfg.threat.eps_255, cfg.eval.eps_255),
                                   aa_kwargs={"n_iter": cfg.eval.aa_n_iter, "n_queries": cfg.eval.aa_n_queries})
            if eval_cache is not None:
                eval_cache[key] = cost
    epoch = recs[0]
    per_ckpt = sum(predict_eval_seconds(cost, n_test, 1.0, 1.0, cfg.eval.batch_size).values())
    return Estimate(label=label, epochs=cfg.data_epochs, n_train=n_train, train_s_per_image=1.0 / max(epoch["time/images_per_s"], 1e-9),
                    epoch_eval_s=float(epoch.get("time/epoch_eval_s", 0.0)), final_eval_s=per_ckpt * len(set(cfg.eval.checkpoints)))


def estimate_sweep(spec: Any, progress: Any = None, budget_s: float = BUDGET_S) -> tuple[list[Estimate], float | None, str | None]:
    """Probe up to MAX_PROBES distinct configs within ``budget_s`` seconds; returns (estimates, total trial
    seconds, why not if impossible). ``progress(text)`` is called before each probe."""
    points = distinct_points(spec.trials, spec.axes)
    per_point_trials = len(spec.seeds) if spec.trials else spec.num_trials / max(len(points), 1)
    total_points = len(points)
    if len(points) > MAX_PROBES:  # spread the probes over the plan
        step = len(points) / MAX_PROBES
        points = [points[int(i * step)] for i in range(MAX_PROBES)]
    ests: list[Estimate] = []
    cache: dict[str, Any] = {}
    t0 = time.perf_counter()
    for i, p in enumerate(points):
        spent = time.perf_counter() - t0
        if ests and spent + spent / len(ests) > budget_s:
            break  # the next probe would overrun the budget: the rest get the mean of those probed
        label = re.sub(r"(^|,)seed=[^,]*$", "", trial_name(p, spec.seeds[0])) or "base"
        if progress is not None:
            progress(f"probe {i + 1}/{len(points)} ({label}), {time.perf_counter() - t0:.0f} s of at most ~{budget_s:.0f} s")
        try:
            ests.append(probe(spec.run_dict(p, spec.seeds[0], name="probe", out_dir="/unused"), label, cache))
        except Exception as e:  # noqa: BLE001 - dataset not available here, out of memory, ...
            return ests, None, f"{type(e).__name__}: {e}"
    mean_trial = sum(e.trial_s for e in ests) / len(ests)
    return ests, mean_trial * spec.num_trials if spec.trials else mean_trial * per_point_trials * total_points, None
