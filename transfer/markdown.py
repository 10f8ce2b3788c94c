"""Markdown tables for reports and benchmarks: one cell format for numbers, "-" for what is missing, and
p-values that never print as 0."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd


def fmt_cell(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "-" for None or NaN, anything else as text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


#: columns holding p-values: printed so that a small p never reads as 0 ("<0.0001", not "0.0000")
P_COLUMNS = ("p_value", "p_holm", "min_p")


def fmt_p(p: Any) -> str:
    """A p-value for a table: 4 decimals, "<0.0001" below that (a p-value here is never exactly 0), "-" for none."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def md_table(df: pd.DataFrame, digits: int = 3) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt_p(r[c]) if c in P_COLUMNS else fmt_cell(r[c], digits) for c in cols) + " |")
    return "\n".join(lines)
