"""A tiny Ray Tune sweep against an existing cluster (run as a subprocess by the cluster tests).

    python tests/cluster/tiny_tune_driver.py ADDRESS STORAGE_DIR [--trials 4] [--gpu 1] [--cpu 1] [--steps 3]

Each trial asks for ``{"cpu": CPU, "gpu": GPU}``, reports ``steps`` times (0.5 s apart) and records where and
when it ran (node id, ``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``, wall-clock start and last report). Prints one JSON line at the end: ``{"errors": n, "trials": [...], "fit_s": s}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def trainable(config):
    import ray
    from ray import tune

    ctx = ray.get_runtime_context()
    t_start = time.time()
    for step in range(config["steps"]):
        time.sleep(0.5)
        tune.report({"step": step + 1, "score": config["x"] * (step + 1), "node_id": ctx.get_node_id(),
                     "t_start": t_start, "t_now": time.time(),
                     "gpu_ids": json.dumps([str(g) for g in ray.get_gpu_ids()]),
                     "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES", "")})


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("storage")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--cpu", type=float, default=1)
    p.add_argument("--gpu", type=float, default=1)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune

    t0 = time.monotonic()
    ray.init(address=a.address, log_to_driver=False)
    t_init = time.monotonic() - t0
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": a.cpu, "gpu": a.gpu}),
        param_space={"x": tune.grid_search(list(range(a.trials))), "steps": a.steps},
        tune_config=tune.TuneConfig(reuse_actors=False),  # a new actor per trial: pending trials show up as demand
        run_config=tune.RunConfig(name="tiny", storage_path=os.path.abspath(a.storage), verbose=0),
    )
    grid = tuner.fit()
    fit_s = time.monotonic() - t0
    trials = []
    for r in grid:
        m = r.metrics or {}
        trials.append({"x": r.config["x"], "step": m.get("step"), "node_id": m.get("node_id"),
                       "gpu_ids": json.loads(m.get("gpu_ids") or "[]"), "cuda_visible": m.get("cuda_visible"),
                       "t_start": m.get("t_start"), "t_end": m.get("t_now"),
                       "error": str(r.error)[:500] if r.error else None})
    print(json.dumps({"errors": grid.num_errors, "trials": trials, "init_s": round(t_init, 2), "fit_s": round(fit_s, 2)}), flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
