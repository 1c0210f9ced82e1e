"""``orch report --baseline ROW``: every other row's difference from a baseline row, with a 95% interval over seeds.

How the baseline is named and what is compared: ``sweeps/README.md``. For each other row, checkpoint and headline
column (:func:`headline_columns`), the difference other − baseline in percentage points with a Student-t interval
over seeds:

- **paired** when both rows have finished trials for the same seeds, one each: the per-seed differences
  d_s, mean ± t(0.975, n−1) · sd(d) / √n;
- **Welch** otherwise (different seeds, a failed trial in one row): mean₁ − mean₂ ± t(0.975, ν) ·
  √(s₁²/n₁ + s₂²/n₂), ν by Welch–Satterthwaite.

A row with fewer than 2 seeds (2 pairs) gets the difference without an interval.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from training.numbers import is_finite

LEVEL = 0.95


class BaselineError(ValueError):
    """The --baseline name matches no row, or more than one."""


@dataclass(frozen=True)
class Diff:
    mean: float  # other − baseline (fractions, like the results)
    lo: float | None  # the interval; None with fewer than 2 seeds
    hi: float | None
    test: str  # "paired" | "Welch"
    n: tuple[int, int]  # seeds of (other, baseline); paired: (pairs, pairs)
    df: float | None

    def describe(self) -> str:
        if self.test == "paired":
            return f"paired t, n={self.n[0]}"
        text = f"Welch t, n={self.n[0]} vs {self.n[1]}"
        return text + (f", df={self.df:.1f}" if self.df is not None else "")


def _t(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df))


def _mean_var(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.variance(xs) if len(xs) > 1 else 0.0


def difference(other: list[tuple[Any, float]], base: list[tuple[Any, float]]) -> Diff | None:
    """other − base from (seed, value) pairs; see the module docstring for the interval."""
    if not other or not base:
        return None
    so, sb = [s for s, _ in other], [s for s, _ in base]
    if len(set(so)) == len(so) and len(set(sb)) == len(sb) and set(so) == set(sb):
        b = dict(base)
        d = [v - b[s] for s, v in other]
        m, var = _mean_var(d)
        n = len(d)
        if n < 2:
            return Diff(m, None, None, "paired", (n, n), None)
        half = _t(n - 1) * math.sqrt(var / n)
        return Diff(m, m - half, m + half, "paired", (n, n), float(n - 1))
    (m1, v1), (m2, v2) = _mean_var([v for _, v in other]), _mean_var([v for _, v in base])
    n1, n2 = len(other), len(base)
    m = m1 - m2
    if n1 < 2 or n2 < 2:
        return Diff(m, None, None, "Welch", (n1, n2), None)
    a, b = v1 / n1, v2 / n2
    if a + b == 0:  # no spread in either row: the interval is the point
        return Diff(m, m, m, "Welch", (n1, n2), None)
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    half = _t(df) * math.sqrt(a + b)
    return Diff(m, m - half, m + half, "Welch", (n1, n2), df)


def _split(label: str) -> list[str]:
    """``a=1,b=pgd_at(steps=10)`` -> ['a=1', 'b=pgd_at(steps=10)']: commas inside brackets belong to the value."""
    parts, depth, cur = [], 0, ""
    for ch in label:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def find_baseline(gs: list[Any], name: str, where: str = "") -> Any:
    """The group whose label is ``name``, or the only one whose label has all of ``name``'s key=value parts.
    ``where`` (the results file) starts the error message."""
    exact = [g for g in gs if g.label == name.strip()]
    if len(exact) == 1:
        return exact[0]
    want = set(_split(name))
    hits = [g for g in gs if want and want <= set(_split(g.label))]
    if len(hits) == 1:
        return hits[0]
    rows = "\n".join(f"  {g.label}" for g in gs)
    why = "matches no row" if not hits else f"matches {len(hits)} rows ({'; '.join(g.label for g in hits)}); name one"
    raise BaselineError(f"{where + ': ' if where else ''}--baseline {name!r} {why}. "
                        f"The rows (the table's Config column):\n{rows}")


def headline_columns(rows: list[dict[str, Any]], meta: dict[str, str], cols: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, column without checkpoint): Clean, PGD-10 and AA where evaluated, and the sweep's metric when it is
    another final column."""
    eps = next((c.rsplit("_eps", 1)[1] for _, c in cols if "_eps" in c), None)
    out = [(lab, c) for lab, c in cols if c == "clean" or (eps and c in (f"pgd10_eps{eps}", f"aa_eps{eps}"))]
    metric = meta.get("orch.metric") or ""
    ck, _, col = metric.partition("/")
    if ck in ("best", "last") and col and col not in [c for _, c in out] and any(f"{k}/{col}" in r for r in rows for k in ("best", "last")):
        out.append((next((lab for lab, c in cols if c == col), col), col))
    return out


def _values(g: Any, col: str) -> list[tuple[Any, float]]:
    return [(r.get("seed"), float(r[col])) for r in g.good() if is_finite(r.get(col))]


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def cell(d: Diff | None) -> str:
    if d is None:
        return "–"
    if d.lo is None:
        return f"{_pp(d.mean)} (n<2: no interval)"
    return f"{_pp(d.mean)} [{_pp(d.lo)}, {_pp(d.hi)}]"


def compare(gs: list[Any], base: Any, heads: list[tuple[str, str]]) -> dict[str, Any]:
    """Header, body (one row per other group and checkpoint) and per-group CSV columns of the differences."""
    header = ["Config", "Ckpt", *[f"Δ {lab}" for lab, _ in heads], "Test"]
    body: list[list[str]] = []
    csv: dict[int, dict[str, Any]] = {}
    for g in gs:
        if g is base:
            continue
        csv[id(g)] = {}
        for ck in ("best", "last"):
            diffs = [difference(_values(g, f"{ck}/{c}"), _values(base, f"{ck}/{c}")) for _, c in heads]
            if all(d is None for d in diffs):
                continue
            tests = list(dict.fromkeys(d.describe() for d in diffs if d is not None))
            body.append([g.label if ck == "best" or not body or body[-1][0] != g.label else "", ck.capitalize(),
                         *[cell(d) for d in diffs], "; ".join(tests)])
            for (_, c), d in zip(heads, diffs):
                if d is not None:
                    csv[id(g)].update({f"{ck}/{c}_diff": d.mean, f"{ck}/{c}_diff_lo": d.lo, f"{ck}/{c}_diff_hi": d.hi,
                                       f"{ck}/{c}_diff_test": d.describe()})
    caption = (f"difference from the baseline {base.label} in percentage points (other − baseline) "
               f"[{100 * LEVEL:.0f}% interval over seeds, Student t: paired by seed where both rows have the same "
               "seeds, Welch otherwise; the Test column says which]")
    return {"header": header, "body": body, "csv": csv, "caption": caption, "baseline": base.label}
