"""The live view of a running sweep: one row per trial (status, epoch, key metrics, time left), and a header
with the sweep's progress and estimated time left.

On a terminal it is a ``rich.live.Live`` table redrawn twice a second. Elsewhere (CI logs, a pipe, tests) it
prints one plain line per trial event instead, so a long job still shows progress without control codes.
Ray's own progress output is switched off (``RAY_AIR_NEW_OUTPUT=0`` + ``verbose=0``, stack.md Q7): its reporter
prints hundreds of lines and knows nothing of epochs, seeds or robust accuracy.

Time left, from measured times only: a running trial's remaining epochs times its mean epoch time (training +
per-epoch evaluation), plus its final evaluation (the time left its progress events report once it evaluates; before
that the estimate the first evaluating trial measured, or the mean measured evaluation of the finished trials). A
pending trial counts the mean measured ``time/trial_s`` of the finished trials (evaluation included), or, before any
finished, the mean epoch time x its epochs + the evaluation estimate. The sweep's time left is their sum divided by
the concurrency; while no evaluation has been measured or estimated yet it is shown as ``≥`` (training only).

The table is re-rendered at every refresh (``Live(get_renderable=...)``), so "elapsed" ticks without events.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from training.numbers import fmt_duration


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
    eval: dict[str, Any] = field(default_factory=dict)  # the last final-evaluation progress event
    trial_s: float | None = None  # measured, once finished
    eval_line_at: float = 0.0  # when its last evaluation line was printed (plain output)


class LiveView:
    COLUMNS = (("val/clean_acc", "val clean"), ("val/pgd_acc", "val PGD"), ("train/loss", "loss"))
    EVAL_LINE_EVERY_S = 10.0  # plain output: at most one final-evaluation progress line per trial this often

    def __init__(self, title: str, console: Console, concurrency: int, metric: str | None, total: int) -> None:
        self.title, self.console, self.concurrency, self.metric = title, console, max(1, concurrency), metric
        self.total = total
        self.trials: dict[str, TrialView] = {}
        self.eval_s: list[float] = []
        self.eval_estimate: float | None = None
        self.trial_s: list[float] = []
        self.t0 = time.time()
        self._live: Live | None = None
        self.interactive = console.is_terminal

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LiveView":
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False, get_renderable=self.render)
            self._live.__enter__()
        else:
            self.console.print(f"[bold]{self.title}[/]: {self.total} trials, up to {self.concurrency} at a time")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def _line(self, msg: str) -> None:
        if not self.interactive:
            self.console.print(f"[{fmt_duration(time.time() - self.t0)}] {msg}", highlight=False)

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
        if r.get("orch/progress"):
            self._eval_progress(t, r)
        elif r.get("final"):
            t.outcome = r.get("outcome", "")
            if r.get("time/eval_s") is not None:
                self.eval_s.append(float(r["time/eval_s"]))
            if r.get("time/trial_s") is not None and t.outcome != "failed":  # a failed trial's time says nothing
                t.trial_s = float(r["time/trial_s"])
                self.trial_s.append(t.trial_s)
            t.eval = {}
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

    def _eval_progress(self, t: TrialView, r: dict[str, Any]) -> None:
        ev = {k[len("orch/eval_"):]: v for k, v in r.items() if k.startswith("orch/eval_")}
        if ev.get("estimate_s") is not None:
            self.eval_estimate = float(ev["estimate_s"])
        first = not t.eval
        ev["at"] = time.time()
        t.eval = ev
        if ev.get("event") == "eval_start" or first:
            t.eval_line_at = time.time()
            self._line(f"eval   {t.name}: final evaluation ~{fmt_duration(ev.get('estimate_s'))} (measured estimate)")
        elif ev.get("event") == "eval" and time.time() - t.eval_line_at >= self.EVAL_LINE_EVERY_S:
            t.eval_line_at = time.time()
            self._line(f"eval   {t.name} {ev.get('checkpoint')} {ev.get('entry')} {ev.get('done')}/{ev.get('total')} images, "
                       f"~{fmt_duration(ev.get('left_s'))} left")

    def finished(self, key: str, name: str, status: str, error: str | None = None) -> None:
        t = self.trial(key, name, 0)
        t.status, t.eval = status, {}
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
        t.status, t.eval = ("retrying" if will_retry else "failed"), {}
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

    def _eval_s(self) -> float | None:
        """A final evaluation's duration: measured (mean over finished trials), else the latest measured estimate."""
        if self.eval_s:
            return sum(self.eval_s) / len(self.eval_s)
        return self.eval_estimate

    def trial_left(self, t: TrialView) -> float | None:
        if t.eval:  # evaluating: its own progress says how much is left (minus the time since it said so)
            left = t.eval.get("left_s", t.eval.get("estimate_s"))
            return max(float(left) - (time.time() - t.eval["at"]), 0.0) if left is not None else None
        per = (sum(t.epoch_s) / len(t.epoch_s)) if t.epoch_s else self._mean_epoch_s()
        if per is None:
            return None
        left = max(t.epochs - t.epoch, 0) * per
        ev = self._eval_s()
        if t.outcome == "" and ev is not None:
            left += ev
        return left

    def sweep_left(self) -> float | None:
        per, ev = self._mean_epoch_s(), self._eval_s()
        known = list(self.trials.values())
        active = [t for t in known if t.status in ("running", "retrying")]
        pending = sum(1 for t in known if t.status == "pending") + max(self.total - len(known), 0)
        if self.trial_s:
            per_trial = sum(self.trial_s) / len(self.trial_s)
        elif per is not None:
            mean_epochs = sum(t.epochs for t in known) / len(known) if known else 0
            per_trial = mean_epochs * per + (ev or 0.0)
        else:
            return None
        left = pending * per_trial + sum(self.trial_left(t) or 0.0 for t in active)
        return left / self.concurrency

    def _left_text(self) -> str:
        left = self.sweep_left()
        unknown_eval = self._eval_s() is None and not self.trial_s
        return ("≥" if unknown_eval and left is not None else "~") + fmt_duration(left)

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
            f"elapsed {fmt_duration(time.time() - self.t0)} · left {self._left_text()}"
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
            if t.eval and t.status == "running":
                status = (f"eval {t.eval.get('checkpoint', '')} {t.eval.get('entry', '')} {t.eval.get('done', 0)}/{t.eval.get('total', '?')}"
                          if t.eval.get("event") == "eval" else "eval starting")
            row = [t.name, f"[{style.get(t.status, '')}]{status}[/]", f"{t.epoch}/{t.epochs}"]
            row += [_fmt(t.metrics.get(k)) for k, _ in self.COLUMNS]
            if self.metric:
                row.append(_fmt(t.metrics.get(self.metric)))
            row.append(fmt_duration(self.trial_left(t)) if t.status in ("running", "retrying") else "")
            table.add_row(*row)
        return table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
