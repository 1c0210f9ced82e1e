"""The live view of a running sweep: one row per trial (status, epoch, key metrics, time left), and a header
with the sweep's progress and estimated time left.

On a terminal it is a ``rich.live.Live`` table redrawn twice a second. Elsewhere (CI logs, a pipe, tests) it
prints one plain line per trial event instead, so a long job still shows progress without control codes.
Ray's own progress output is switched off (``RAY_AIR_NEW_OUTPUT=0`` + ``verbose=0``, stack.md Q7): its reporter
prints hundreds of lines and knows nothing of epochs, seeds or robust accuracy.

Time left: a trial's remaining epochs times its mean epoch time (training + per-epoch evaluation); the sweep's
is the remaining trial-epochs (pending trials count the mean trial's epochs) divided by the concurrency. The
final robustness evaluation is not in the estimate until one trial has finished; then its mean is added.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class TrialView:
    name: str
    epochs: int
    status: str = "pending"
    epoch: int = 0
    epoch_s: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""
    attempt: int = 1


def _fmt_s(s: float | None) -> str:
    if s is None or s != s:
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class LiveView:
    COLUMNS = (("val/clean_acc", "val clean"), ("val/pgd_acc", "val PGD"), ("train/loss", "loss"))

    def __init__(self, title: str, console: Console, concurrency: int, metric: str | None, total: int) -> None:
        self.title, self.console, self.concurrency, self.metric = title, console, max(1, concurrency), metric
        self.total = total
        self.trials: dict[str, TrialView] = {}
        self.eval_s: list[float] = []
        self.t0 = time.time()
        self._live: Live | None = None
        self.interactive = console.is_terminal

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LiveView":
        if self.interactive:
            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        else:
            self.console.print(f"[bold]{self.title}[/]: {self.total} trials, up to {self.concurrency} at a time")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def _line(self, msg: str) -> None:
        if not self.interactive:
            self.console.print(f"[{_fmt_s(time.time() - self.t0)}] {msg}", highlight=False)

    # ------------------------------------------------------------------ events
    def trial(self, key: str, name: str, epochs: int) -> TrialView:
        if key not in self.trials:
            self.trials[key] = TrialView(name, epochs)
        return self.trials[key]

    def started(self, key: str, name: str, epochs: int) -> None:
        t = self.trial(key, name, epochs)
        if t.status not in ("pending", "running"):
            t.attempt += 1
        t.status = "running"
        self._line(f"start  {name}" + (f" (attempt {t.attempt})" if t.attempt > 1 else ""))
        self.refresh()

    def result(self, key: str, name: str, epochs: int, r: dict[str, Any]) -> None:
        t = self.trial(key, name, epochs)
        t.status = "running"
        if r.get("final"):
            t.outcome = r.get("outcome", "")
            if r.get("time/eval_s") is not None:
                self.eval_s.append(float(r["time/eval_s"]))
            for k, v in r.items():
                if k.startswith(("best/", "last/")):
                    t.metrics[k] = v
        else:
            t.epoch = int(r.get("epoch", t.epoch))
            if not r.get("orch/replayed"):
                t.epoch_s.append(float(r.get("time/epoch_s", 0.0)) + float(r.get("time/epoch_eval_s", 0.0)))
            t.metrics.update({k: v for k, v in r.items() if isinstance(v, (int, float))})
            kind = "replay" if r.get("orch/replayed") else "epoch "  # replay: re-reported from its folder, not retrained
            self._line(
                f"{kind} {name} {t.epoch}/{t.epochs} "
                + " ".join(f"{lab} {_fmt(t.metrics.get(k))}" for k, lab in self.COLUMNS)
                + (" CO!" if r.get("co/detected") else "")
            )
        self.refresh()

    def finished(self, key: str, name: str, status: str, error: str | None = None) -> None:
        t = self.trial(key, name, 0)
        t.status = status
        msg = f"{status:6s} {name}"
        if t.outcome and t.outcome not in ("finished", status):
            msg += f" ({t.outcome})"
        if self.metric and self.metric in t.metrics:
            msg += f" {self.metric} {_fmt(t.metrics[self.metric])}"
        self._line(msg + (":" if error else ""))
        self._error(error)
        self.refresh()

    def error(self, key: str, name: str, error: str, will_retry: bool) -> None:
        t = self.trial(key, name, 0)
        t.status = "retrying" if will_retry else "failed"
        self._line(f"{'retry ' if will_retry else 'failed'} {name}" + (":" if error else ""))
        self._error(error)
        self.refresh()

    def _error(self, error: str | None) -> None:
        """The error's message (the last line of a traceback) in full, on its own line: never cut before the
        fix it ends with. Above the live table on a terminal."""
        lines = [x for x in (error or "").strip().splitlines() if x.strip()]
        if lines:
            self.console.print(f"    {lines[-1].strip()}", highlight=False, markup=False, soft_wrap=True)

    # ------------------------------------------------------------------ estimates
    def _mean_epoch_s(self) -> float | None:
        xs = [x for t in self.trials.values() for x in t.epoch_s]
        return sum(xs) / len(xs) if xs else None

    def trial_left(self, t: TrialView) -> float | None:
        per = (sum(t.epoch_s) / len(t.epoch_s)) if t.epoch_s else self._mean_epoch_s()
        if per is None:
            return None
        left = (t.epochs - t.epoch) * per
        if t.outcome == "" and self.eval_s:
            left += sum(self.eval_s) / len(self.eval_s)
        return left

    def sweep_left(self) -> float | None:
        per = self._mean_epoch_s()
        if per is None:
            return None
        known = [t for t in self.trials.values()]
        mean_epochs = sum(t.epochs for t in known) / len(known) if known else 0
        remaining = sum(max(t.epochs - t.epoch, 0) for t in known if t.status in ("running", "pending", "retrying"))
        remaining += max(self.total - len(known), 0) * mean_epochs
        ev = (sum(self.eval_s) / len(self.eval_s)) if self.eval_s else 0.0
        unfinished = sum(1 for t in known if t.status in ("running", "pending", "retrying")) + max(self.total - len(known), 0)
        return (remaining * per + unfinished * ev) / self.concurrency

    # ------------------------------------------------------------------ rendering
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def render(self) -> Table:
        c = self.counts()
        done = sum(v for k, v in c.items() if k in ("done", "failed", "stopped"))
        caption = (
            f"{done}/{self.total} done · {c.get('running', 0)} running · {c.get('failed', 0)} failed · "
            f"elapsed {_fmt_s(time.time() - self.t0)} · left ~{_fmt_s(self.sweep_left())}"
        )
        table = Table(title=self.title, caption=caption, expand=False)
        table.add_column("trial", no_wrap=True)
        table.add_column("status")
        table.add_column("epoch", justify="right")
        for _, lab in self.COLUMNS:
            table.add_column(lab, justify="right")
        if self.metric:
            table.add_column(self.metric, justify="right")
        table.add_column("left", justify="right")
        style = {"running": "cyan", "done": "green", "failed": "red", "retrying": "yellow", "stopped": "magenta"}
        for t in self.trials.values():
            status = t.status + (f" ({t.outcome})" if t.outcome and t.outcome != "finished" else "")
            row = [t.name, f"[{style.get(t.status, '')}]{status}[/]", f"{t.epoch}/{t.epochs}"]
            row += [_fmt(t.metrics.get(k)) for k, _ in self.COLUMNS]
            if self.metric:
                row.append(_fmt(t.metrics.get(self.metric)))
            row.append(_fmt_s(self.trial_left(t)) if t.status in ("running", "retrying") else "")
            table.add_row(*row)
        return table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
