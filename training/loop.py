"""run(config): the one training loop. Trains, evaluates, writes checkpoints and yields metrics.

Knows nothing of Ray or MLflow. Yields one flat dict per epoch, then a final dict (``"final": True``) with the
outcome and the robustness matrix of the best and the last checkpoint. Everything it writes goes to
``cfg.out_dir``:

    config.json     the resolved config
    metrics.jsonl   one line per epoch (written before the epoch's checkpoint, trimmed on resume: never twice)
    last.pt         everything a resume needs (see training/checkpoint.py)
    best.pt         the epoch with the highest ``eval.best_metric`` on the validation split (never the test set)
    results.json    config + final record + per-epoch records

A run resumed from ``last.pt`` ends with the same numbers as one never interrupted: the data order and
augmentation of an epoch depend only on (seed, epoch), and every RNG state is in the checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from training import checkpoint as ckpt, metrics
from training.activations import SmoothReLU
from training.config import RunConfig
from training.data import Data, load as load_data, make_train_loader
from training.evalcost import predict_eval_seconds, probe_eval_cost
from training.evaluate import accuracy, attack_accuracy, robustness_matrix
from training.methods import StepContext
from training.models import create_model
from training.numbers import fmt_duration
from training.registry import METHODS
from training.schedules import Schedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available on this machine (use device: auto or cpu)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Progress:
    """A one-line progress bar on stderr (no dependency; rate-limited)."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self.enabled, self.total_epochs, self.last = enabled, total_epochs, 0.0

    def due(self) -> bool:
        """True at most twice a second, so the caller only syncs with the device to build a message then."""
        return self.enabled and time.time() - self.last >= 0.5

    def update(self, epoch: int, i: int, n: int, msg: str = "") -> None:
        self.last = time.time()
        w = 24
        done = int(w * i / max(n, 1))
        sys.stderr.write(f"\repoch {epoch}/{self.total_epochs} [{'=' * done}{' ' * (w - done)}] {i}/{n} {msg}   ")
        sys.stderr.flush()

    def line(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write("\r" + msg + " " * 20 + "\n")
            sys.stderr.flush()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models hold identical parameters and buffers (e.g. the best checkpoint is the last epoch)."""
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _EvalMeter:
    """Progress of the final evaluation: the measured estimate before it starts, then per batch the entry, the
    points done and the time left (the estimate of what remains, rescaled by how the finished entries compared
    with their estimates), to ``on_eval`` and, with ``progress``, to the bar."""

    def __init__(self, on_eval: Callable[[dict[str, Any]], None] | None, bar: "_Progress") -> None:
        self.on_eval, self.bar = on_eval, bar
        self.plan: dict[tuple[str, str], float] = {}
        self.done: dict[tuple[str, str], float] = {}  # entry -> measured seconds
        self.t0 = time.perf_counter()
        self.entry_t0 = self.t0
        self.estimate = 0.0

    def start(self, plan: dict[str, dict[str, float]], text: str) -> None:
        self.plan = {(w, k): s for w, p in plan.items() for k, s in p.items()}
        self.estimate = sum(self.plan.values())
        self.t0 = time.perf_counter()
        msg = f"{text}: ~{fmt_duration(self.estimate)} (measured estimate)"
        self.bar.line(msg)
        if self.on_eval is not None:
            self.on_eval({"event": "eval_start", "estimate_s": self.estimate, "text": msg})

    def left(self, which: str, key: str) -> float:
        pred_done = sum(self.plan.get(e, 0.0) for e in self.done)
        # rescaled once a few seconds of it were measured (a sub-second entry such as clean is all noise)
        scale = min(max(sum(self.done.values()) / pred_done, 0.25), 4.0) if pred_done >= 2.0 else 1.0
        rest = sum(s for e, s in self.plan.items() if e not in self.done and e != (which, key))
        current = max(self.plan.get((which, key), 0.0) * scale - (time.perf_counter() - self.entry_t0), 0.0)
        return scale * rest + current

    def batch(self, which: str, key: str, done: int, total: int) -> None:
        if done == 0:
            self.entry_t0 = time.perf_counter()
        if not self.plan:
            return
        ev = {"event": "eval", "checkpoint": which, "entry": key, "done": done, "total": total,
              "elapsed_s": time.perf_counter() - self.t0, "left_s": self.left(which, key), "estimate_s": self.estimate}
        if self.on_eval is not None:
            self.on_eval(ev)
        if self.bar.enabled:
            self.bar.last = time.time()
            sys.stderr.write(f"\revaluating {which}: {key} {done}/{total} images | {fmt_duration(ev['elapsed_s'])} elapsed, "
                             f"~{fmt_duration(ev['left_s'])} left   ")
            sys.stderr.flush()

    def entry_done(self, which: str, key: str, seconds: float) -> None:
        self.done[(which, key)] = seconds


def co_signature(
    best_pgd: float, prev_acc: float | None, pgd: float, acc: float, drop: float, gap: float = 1.0
) -> bool:
    """Catastrophic overfitting's signature (Wong et al. 2020; Kim et al. 2021): the accuracy on the method's
    own training examples does not fall (single-step examples get easier as multi-step ones get harder) while
    PGD accuracy on the fixed training batch falls more than ``drop`` below its best so far, or lies more than
    ``gap`` below that accuracy (CO that sets in before any robustness was gained)."""
    rising = prev_acc is None or acc >= prev_acc
    return rising and (pgd < best_pgd - drop or acc - pgd > gap)


def _fixed_train_batch(data: Data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training images, unaugmented: the batch the CO check and Figure 26's curve are read on."""
    if data.train_x is not None:
        return data.train_x[:n], data.train_y[:n]
    ds = data.train_dataset
    xs, ys = zip(*(ds[i] for i in range(min(n, len(ds)))))
    return torch.stack(xs), torch.tensor(ys)


def _finite_model(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def run(cfg: RunConfig, *, resume: str | os.PathLike | None = None, progress: bool = False,
        on_eval: Callable[[dict[str, Any]], None] | None = None) -> Iterator[dict[str, Any]]:
    """Train ``cfg``; yield a metrics dict per epoch and a final result dict.

    Args:
        cfg: the validated run config.
        resume: a checkpoint file (``last.pt``) or a run folder holding one; training continues after its epoch.
        progress: print a progress bar to stderr (and the final evaluation's estimate and progress).
        on_eval: called with the final evaluation's progress events (see :class:`_EvalMeter`): one
            ``{"event": "eval_start", "estimate_s", "text"}`` with the measured estimate before it starts, then
            ``{"event": "eval", "checkpoint", "entry", "done", "total", "elapsed_s", "left_s", "estimate_s"}`` when
            each entry starts and after each batch.
    """
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)

    # ------------------------------------------------------------------ data, model, optimiser, method
    data = load_data(cfg.data).to(device)
    model = create_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.channels,
        image_size=data.image_size,
        activation=cfg.model.activation,
        act_alpha=cfg.model.act_alpha,
        smooth_grad_for=cfg.model.smooth_grad_for,
        width=cfg.model.width,
        mean=data.mean,
        std=data.std,
    ).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if cfg.compile else model
    # activation shape parameters (smooth_relu's r) are not weight-decayed: decay would pull α = r² towards 0,
    # i.e. away from ReLU, for no regularisation benefit (the SAT code decays only conv/fc kernels)
    act_params = {id(p) for m in model.modules() if isinstance(m, SmoothReLU) for p in m.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in act_params]},
        {"params": [p for p in model.parameters() if id(p) in act_params], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(
        [g for g in groups if g["params"]],
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        nesterov=cfg.optim.nesterov,
    )
    method_cls = METHODS.get(cfg.method.name)
    loader = make_train_loader(data, cfg.data, cfg.batch_size, cfg.seed, device)
    # the method object is built before the schedule so its replay count (Free-AT's m) is known
    ctx = StepContext(train_model, optimizer, None, cfg.eps, data.num_classes, device, cfg.precision)
    method = method_cls(cfg.method, ctx)  # cfg.method is this method's Params, validated by RunConfig
    data_epochs = cfg.data_epochs  # Free-AT: epochs, or ceil(epochs / m) with divide_epochs (training/methods/free.py)
    schedule = Schedule(optimizer, data_epochs * len(loader) * method.replays, cfg.optim, cfg.schedule)
    ctx.schedule = schedule

    fixed_x, fixed_y = _fixed_train_batch(data, cfg.eval.train_batch_size)
    fixed_x, fixed_y = fixed_x.to(device), fixed_y.to(device)
    pgd_kw = dict(eps=cfg.eps, steps=cfg.eval.epoch_pgd_steps, alpha=(cfg.eval.epoch_pgd_alpha_255 / 255.0) if cfg.eval.epoch_pgd_alpha_255 else cfg.eps / 4)

    # ------------------------------------------------------------------ loop state, resume
    state: dict[str, Any] = {
        "best_value": -math.inf,
        "best_epoch": None,
        "best_train_pgd": -math.inf,
        "prev_train_acc": None,
        "co_epoch": None,
        "train_s": 0.0,
    }
    start_epoch = 1
    if resume is not None:
        ck = ckpt.load(resume, map_location=device)
        saved = RunConfig.from_dict(ck["config"])
        if saved.hash() != cfg.hash():
            now = cfg.to_dict_flat()
            diff = {
                k: (v, now.get(k))
                for k, v in saved.to_dict_flat().items()
                if now.get(k) != v and k not in ("name", "out_dir")
            }
            raise ValueError(f"resume={resume}: the checkpoint was written by a different config: {diff}")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["schedule"])
        method.load_state_dict(ck["method"])
        state = ck["loop"]
        ckpt.set_rng_state(ck["rng"])
        start_epoch = ck["epoch"] + 1
    history = _trim_metrics(out / metrics.METRICS_FILE, start_epoch - 1)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def payload(epoch: int) -> dict[str, Any]:
        return {
            "config": cfg.to_dict(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "method": method.state_dict(),
            "loop": dict(state),
            "rng": ckpt.rng_state(),
        }

    bar = _Progress(progress, data_epochs)
    outcome, diverged_epoch, prev_weights = "finished", None, None

    # ------------------------------------------------------------------ epochs
    for epoch in range(start_epoch, data_epochs + 1):
        if cfg.co.rollback:
            prev_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, n_batches = 0, len(loader)
        _sync(device)
        t0 = time.perf_counter()
        for it, (x, y) in enumerate(loader.epoch(epoch)):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            st = method.step(x, y, it)
            loss_sum += st["loss"].float()
            correct += st["correct"].float()
            seen += len(y)
            if bar.due():
                bar.update(epoch, it + 1, n_batches, f"loss {loss_sum.item() / (it + 1):.3f}")
        _sync(device)
        epoch_s = time.perf_counter() - t0
        state["train_s"] += epoch_s
        train_loss = loss_sum.item() / max(n_batches, 1)
        train_acc = correct.item() / max(seen, 1)

        if not math.isfinite(train_loss) or not _finite_model(model):
            outcome, diverged_epoch = "diverged", epoch
            bar.line(f"epoch {epoch}: loss is {train_loss} -> diverged; stopping this run")
            break

        # ---------------------------------------------------------- per-epoch evaluation (eval mode)
        t1 = time.perf_counter()
        seed = cfg.eval.seed + epoch
        train_pgd = attack_accuracy(model, fixed_x, fixed_y, "pgd", seed=seed, batch_size=cfg.eval.batch_size, **pgd_kw)
        if len(data.val_y):
            val_clean = accuracy(model, data.val_x, data.val_y, batch_size=cfg.eval.batch_size)
            val_pgd = attack_accuracy(model, data.val_x, data.val_y, "pgd", seed=seed, batch_size=cfg.eval.batch_size, **pgd_kw)
        else:
            val_clean = val_pgd = float("nan")
        eval_s = time.perf_counter() - t1

        # ---------------------------------------------------------- catastrophic overfitting (rule in COConfig)
        check = method.attacks and cfg.co.detect and epoch >= cfg.co.min_epoch and state["co_epoch"] is None
        co = check and co_signature(
            state["best_train_pgd"], state["prev_train_acc"], train_pgd, train_acc, cfg.co.drop, cfg.co.gap
        )
        if co:
            state["co_epoch"] = epoch
        state["best_train_pgd"] = max(state["best_train_pgd"], train_pgd)
        state["prev_train_acc"] = train_acc

        record = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "train/adv_success": 1.0 - train_acc,
            "train/pgd_acc": train_pgd,
            "val/clean_acc": val_clean,
            "val/pgd_acc": val_pgd,
            "lr": schedule.lr,
            "time/epoch_s": epoch_s,
            "time/epoch_eval_s": eval_s,
            "time/images_per_s": seen / epoch_s if epoch_s > 0 else float("nan"),
            "time/train_s": state["train_s"],
            "co/detected": int(co),
            **{f"method/{k}": v for k, v in method.counters().items()},
        }
        rollback = co and cfg.co.rollback
        if rollback:
            model.load_state_dict(prev_weights)
            outcome = "catastrophic_overfitting"
        value = record[cfg.eval.best_metric]
        if not rollback and value >= state["best_value"]:  # ties: the later epoch wins, as the references do
            state["best_value"], state["best_epoch"] = value, epoch
            ckpt.save(out / "best.pt", payload(epoch))
        with open(out / metrics.METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if rollback or epoch % cfg.checkpoint_every == 0 or epoch == data_epochs:
            ckpt.save(out / "last.pt", payload(epoch))
        history.append(record)
        bar.line(
            f"epoch {epoch}/{data_epochs} loss {train_loss:.3f} acc {train_acc:.3f} "
            f"val clean {val_clean:.3f} pgd {val_pgd:.3f} | {record['time/images_per_s']:.0f} img/s"
            + (" | CATASTROPHIC OVERFITTING" if co else "")
        )
        yield record
        if rollback:
            bar.line(f"catastrophic overfitting at epoch {epoch}: stopped, weights rolled back to epoch {epoch - 1}")
            break

    if outcome == "finished" and state["co_epoch"] is not None:
        outcome = "catastrophic_overfitting"

    # ------------------------------------------------------------------ final robustness matrix
    final: dict[str, Any] = {
        "final": True,
        "outcome": outcome,
        "co_epoch": state["co_epoch"],
        "diverged_epoch": diverged_epoch,
        "best_epoch": state["best_epoch"],
        "epochs_run": len(history),
        "time/train_s": state["train_s"],
    }
    n_test = len(data.test_y) if cfg.eval.subset is None else min(cfg.eval.subset, len(data.test_y))
    tx, ty = data.test_x[:n_test], data.test_y[:n_test]
    eps_list = metrics.eval_eps(cfg.threat.eps_255, cfg.eval.eps_255)
    aa_kwargs = {"n_iter": cfg.eval.aa_n_iter, "n_queries": cfg.eval.aa_n_queries}
    t2 = time.perf_counter()
    models: list[tuple[str, torch.nn.Module, dict[str, Any]]] = []  # (checkpoint, weights, its epoch's record)
    for which in cfg.eval.checkpoints:
        if which == "best":
            if state["best_epoch"] is None:
                continue
            eval_model = copy.deepcopy(model)
            eval_model.load_state_dict(ckpt.load(out / "best.pt", map_location=device)["model"])
            rec = next((r for r in history if r["epoch"] == state["best_epoch"]), {})
        else:
            if outcome == "diverged":
                continue  # the last weights are not finite
            eval_model = model
            rec = history[-2] if (outcome == "catastrophic_overfitting" and cfg.co.rollback and len(history) > 1) else (history[-1] if history else {})
        models.append((which, eval_model, rec))
    # a checkpoint with the same weights as one attacked before (best = last) is not attacked again
    same_as = {w: next((w2 for w2, m2, _ in models[:i] if _same_weights(m, m2)), None) for i, (w, m, _) in enumerate(models)}
    attacked = [(w, m, r) for w, m, r in models if same_as[w] is None]
    meter = _EvalMeter(on_eval, bar)
    if attacked and (on_eval is not None or progress):
        cost = probe_eval_cost(attacked[0][1], tx, columns=cfg.eval.attacks, eps_255=eps_list, aa_kwargs=aa_kwargs)
        plan = {w: predict_eval_seconds(cost, n_test, r.get("val/clean_acc"), r.get("val/pgd_acc"), cfg.eval.batch_size)
                for w, _, r in attacked}
        shared = ", ".join(f"{w} = {same_as[w]}" for w, _, _ in models if same_as[w])
        meter.start(plan, f"final evaluation: {len(cfg.eval.attacks)} attacks x {len(eps_list)} eps on {n_test} test images, "
                          f"checkpoint{'s' if len(attacked) > 1 else ''} {', '.join(w for w, _, _ in attacked)}"
                          + (f" ({shared}: the same weights, attacked once)" if shared else ""))
    matrices: dict[str, dict[str, float]] = {}
    for which, eval_model, _ in models:
        if same_as[which] is not None:
            matrix = matrices[same_as[which]]
        else:
            matrix = robustness_matrix(
                eval_model,
                tx,
                ty,
                columns=cfg.eval.attacks,
                eps_255=eps_list,
                batch_size=cfg.eval.batch_size,
                seed=cfg.eval.seed,
                aa_kwargs=aa_kwargs,
                progress=lambda key, acc, s, which=which: meter.entry_done(which, key, s),
                on_batch=lambda key, done, n, which=which: meter.batch(which, key, done, n),
            )
            matrices[which] = matrix
        for k, v in matrix.items():
            if k.startswith("seconds/"):
                final[f"seconds/{which}/{k[len('seconds/'):]}"] = v
            else:
                final[f"{which}/{k}"] = v
        bar.line(f"{which}: " + ", ".join(f"{k} {v:.3f}" for k, v in matrix.items() if not k.startswith("seconds/"))
                 + (f" (= {same_as[which]})" if same_as[which] else ""))
    final["time/eval_s"] = time.perf_counter() - t2
    final["n_test"] = n_test
    results = {"config": cfg.to_dict(), "final": final, "epochs": history}
    tmp = out / (metrics.RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, out / metrics.RESULTS_FILE)
    yield final


def _trim_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """Keep only the epochs a resume starts after (a kill between the metrics line and the checkpoint);
    returns the kept records."""
    rows = [r for r in metrics.read_epochs(path.parent) if r["epoch"] <= upto_epoch]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def train(cfg: RunConfig, **kw: Any) -> dict[str, Any]:
    """Run to the end and return the final record."""
    final: dict[str, Any] = {}
    for rec in run(cfg, **kw):
        final = rec
    return final
