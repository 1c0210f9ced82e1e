"""``orch report``: results.parquet -> the thesis-style table (:mod:`orchestrator.table`: mean ± std over seeds,
Markdown, CSV, differences from a baseline row) and the figures (:mod:`orchestrator.figures`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator import table
from orchestrator.results import read_rows


def make_report(sweep_dir: str | Path, console: Console | None = None, plots: bool = True, out_dir: str | Path | None = None,
                threshold: float | None = None, threshold_frac: float = 0.9, baseline: str | None = None) -> dict[str, Any]:
    """Print the table and write table.md, table.csv and the plots into ``out_dir`` (default ``<sweep_dir>/report``).

    ``threshold`` (a fraction, e.g. 0.55) is the validation PGD accuracy of ``time_to_threshold.png``; without it,
    ``threshold_frac`` x the best validation PGD accuracy of the sweep. The returned dict holds the threshold used.
    ``baseline`` names a row (orchestrator/compare.py): the differences from it, with 95% intervals over seeds, go
    to the terminal, table.md and table.csv; a name that matches no single row raises BaselineError before
    anything is written."""
    results = Path(sweep_dir) / "results.parquet"
    rows, meta = read_rows(results)
    if not rows:
        raise FileNotFoundError(f"no results in {results} (has a trial finished?)")
    gs = table.groups(rows, table.swept_keys(meta))
    diffs = table.baseline_diffs(gs, rows, meta, baseline, str(results)) if baseline is not None else None
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=out_dir is not None, exist_ok=True)
    rich, md, header, body = table.render(rows, meta)
    if diffs:
        md += "\n" + table.markdown(diffs["header"], diffs["body"], diffs["caption"])
    (out / "table.md").write_text(md)
    table.write_csv(out / "table.csv", gs, rows, diffs)
    written, used = [out / "table.md", out / "table.csv"], threshold
    if plots:
        from orchestrator.figures import write_figures

        figs, used = write_figures(gs, rows, meta, out, threshold, threshold_frac)
        written += figs
    if console is not None:
        console.print(rich)
        if diffs:
            console.print(table.rich_table(diffs["header"], diffs["body"], diffs["caption"]))
    return {"table": rich, "markdown": md, "header": header, "body": body, "files": written, "rows": rows, "meta": meta,
            "threshold": used, "diffs": diffs}
