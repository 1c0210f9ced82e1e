"""Small torch-free helpers for numbers, shared by the training core and the orchestrator (which may import
``training``, never the other way round): a duration as a user reads it, and "is this a finite number"."""
from __future__ import annotations

import math
from typing import Any


def is_number(v: Any) -> bool:
    """A real number (int or float, not bool); NaN and infinities count."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    """A real number (int or float, not bool) that is neither NaN nor infinite."""
    return is_number(v) and math.isfinite(v)


def fmt_duration(s: float | None) -> str:
    """Seconds as ``42s``, ``3m07s``, ``2h05m`` or ``1d03h`` (rounded to the second, negatives as 0s); ``?`` for
    None, NaN or infinity."""
    if s is None or not math.isfinite(s):
        return "?"
    d, rem = divmod(int(round(max(s, 0.0))), 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"
