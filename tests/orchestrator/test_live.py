"""The sweep's live view (issue 15, item 9): "elapsed" ticks between events, and "left" counts the final
evaluation (measured estimates and measured trial times), not only the remaining epochs."""
from __future__ import annotations

import io
import re
import time

from rich.console import Console

from orchestrator.live import LiveView


def test_elapsed_ticks_without_events() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    with LiveView("orch sweep t", console, 1, None, 2) as live:
        live.started("a", "k=1,seed=0", 2)
        time.sleep(2.6)  # no event: the live display redraws on its own twice a second
    shown = set(re.findall(r"elapsed (\d+)s", buf.getvalue()))
    assert {"0", "1", "2"} <= shown, shown


def test_left_includes_the_final_evaluation_before_any_trial_finished() -> None:
    live = LiveView("orch sweep t", Console(file=io.StringIO()), 1, None, 2)
    live.started("a", "k=1,seed=0", 2)
    for e in (1, 2):
        live.result("a", "k=1,seed=0", 2, {"epoch": e, "time/epoch_s": 5.0, "time/epoch_eval_s": 1.0})
    # its training is over; its evaluation (measured estimate 120 s) begins
    live.result("a", "k=1,seed=0", 2, {"orch/progress": 1, "orch/eval_event": "eval_start", "orch/eval_estimate_s": 120.0})
    left = live.sweep_left()
    # trial a: ~120 s of evaluation; the pending trial: 2 epochs x 6 s + 120 s
    assert left is not None and 240 <= left <= 260, left
    live.result("a", "k=1,seed=0", 2, {"orch/progress": 1, "orch/eval_event": "eval", "orch/eval_checkpoint": "best",
                                      "orch/eval_entry": "aa_eps8", "orch/eval_done": 100, "orch/eval_total": 200,
                                      "orch/eval_left_s": 60.0, "orch/eval_estimate_s": 120.0})
    assert 60 + 132 - 2 <= live.sweep_left() <= 60 + 132, live.sweep_left()
    assert "eval best aa_eps8 100/200" in _text(live)
    assert "left ~" in _text(live)


def test_left_uses_measured_trial_times_once_a_trial_finished() -> None:
    live = LiveView("orch sweep t", Console(file=io.StringIO()), 2, None, 5)
    live.started("a", "k=1,seed=0", 2)
    live.result("a", "k=1,seed=0", 2, {"epoch": 1, "time/epoch_s": 1.0})
    live.result("a", "k=1,seed=0", 2, {"epoch": 2, "time/epoch_s": 1.0})
    live.result("a", "k=1,seed=0", 2, {"final": True, "outcome": "finished", "time/eval_s": 98.0, "time/trial_s": 130.0})
    live.finished("a", "k=1,seed=0", "done")
    assert live.sweep_left() == 4 * 130.0 / 2  # 4 pending trials of 130 s as measured (evaluation, start-up), 2 at a time


def test_left_is_a_lower_bound_while_no_evaluation_was_measured() -> None:
    live = LiveView("orch sweep t", Console(file=io.StringIO()), 1, None, 1)
    live.started("a", "k=1,seed=0", 3)
    live.result("a", "k=1,seed=0", 3, {"epoch": 1, "time/epoch_s": 2.0})
    assert "left ≥4s" in _text(live)


def _text(live: LiveView) -> str:
    buf = io.StringIO()
    Console(file=buf, width=250).print(live.render())
    return buf.getvalue()
