"""Opt-in timing spans for finding where a short trial's time goes (``benchmarks/sweep_scale.py`` reads them).

Off unless ``ORCH_TIMING=<folder>`` is set: then every process (the driver and each Ray worker, which inherit the
driver's environment) appends one JSON line per span to ``<folder>/<host>-<pid>.jsonl``:
``{"what": "driver/mlflow_start", "s": 0.012, "t": <unix time at the end>, "key": <trial key or null>}``.
When it is off a span costs one environment lookup.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ENV = "ORCH_TIMING"


def emit(what: str, seconds: float, key: str | None = None) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    line = json.dumps({"what": what, "s": seconds, "t": time.time(), "key": key})
    try:
        with open(Path(folder) / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # timing is a diagnostic: it never fails a sweep


def emit_cpu_at_exit(what: str) -> None:
    """At this process's exit, its CPU seconds (user + system, all threads) as a span of that length."""
    if os.environ.get(ENV):
        import atexit
        import resource

        atexit.register(lambda: emit(what, sum(resource.getrusage(resource.RUSAGE_SELF)[:2])))


@contextmanager
def span(what: str, key: str | None = None) -> Iterator[None]:
    if not os.environ.get(ENV):
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        emit(what, time.perf_counter() - t0, key)


def read(folder: str | Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(Path(folder).glob("*.jsonl")):
        out += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return out
