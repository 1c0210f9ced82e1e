"""results.parquet is rewritten in bounded batches, not after every trial (quadratic at thousands of trials),
and nothing upserted is lost: a flush (every Tune step, the end of the sweep, an interrupt) writes the rest."""
from __future__ import annotations

import time
from pathlib import Path

from orchestrator.results import ResultsFile, read_rows, trial_row


def _row(i: int) -> dict:
    return trial_row(key=f"k{i:04d}", name=f"lr={i},seed=0", index=i, seed=0, status="finished",
                     last_result={"final": True, "best/clean": 0.5, "time/trial_s": 1.0}, config={"optim": {"lr": i}})


def test_upserts_are_written_in_bounded_batches_and_flushed(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    rf = ResultsFile(path, {"orch.sweep": "s"})
    rf.upsert(_row(0))
    assert len(read_rows(path)[0]) == 1  # the first row is written at once (tests and users wait for the file)
    for i in range(1, 200):
        rf.upsert(_row(i))
    assert len(read_rows(path)[0]) == 1 and rf.dirty  # within the interval: kept for the next write
    assert rf.flush(force=False) is False
    assert rf.flush() is True and not rf.dirty
    rows, meta = read_rows(path)
    assert [r["trial_key"] for r in rows] == [f"k{i:04d}" for i in range(200)] and meta["orch.sweep"] == "s"
    rf.upsert(_row(200))
    time.sleep(ResultsFile.WRITE_EVERY_S + 0.1)
    assert rf.flush(force=False) is True  # once the interval has passed, the next step writes
    assert len(read_rows(path)[0]) == 201
    assert ResultsFile(path, {}).rows.keys() == rf.rows.keys()  # a resumed sweep reads every row back
