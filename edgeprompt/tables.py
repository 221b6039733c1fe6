"""Tables for files a person reads (GitHub markdown) and a machine reads (CSV). Torch-free.

One renderer for every report edgeprompt writes: bench.md, the sweep's results.md and results.csv, the audit's
report.md. (The terminal tables of the CLI are rich's, drawn for a screen, not written to files.)
"""

from __future__ import annotations

import csv as _csv
import io
from collections.abc import Mapping, Sequence
from typing import Any


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                   headers: Mapping[str, str] | None = None, digits: int = 2) -> str:
    """Render rows as a GitHub-flavoured markdown table.

    Args:
        rows: One mapping per row.
        columns: Keys to show, in order (default: keys of the first row, then any new keys of later rows).
        headers: Optional display names for columns.
        digits: Decimals for floats.

    Returns:
        The table, with numeric columns right-aligned; an empty string for no rows.
    """
    if not rows:
        return ""
    cols = list(columns) if columns is not None else _all_keys(rows)
    headers = headers or {}
    cells = [[_fmt(r.get(c), digits).replace("|", "\\|") for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in cols]
    head = [headers.get(c, c) for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric, strict=True)) + " |"

    # a trailing ':' right-aligns numeric columns
    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric, strict=True))
    rule += "|"
    return "\n".join([line(head), rule, *(line(r) for r in cells)])


def csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render rows as CSV text (header line first; floats written in full precision).

    Args:
        rows: One mapping per row.
        columns: Keys to write, in order (default: all keys, first-seen order).

    Returns:
        CSV text with ``\\n`` line endings.
    """
    cols = list(columns) if columns is not None else _all_keys(rows)
    buf = io.StringIO()
    writer = _csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r.get(c) for c in cols})
    return buf.getvalue()


def _all_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return list(keys)
