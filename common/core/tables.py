"""Plain-text and markdown tables, written once for every report."""
from __future__ import annotations

from typing import Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """A table with right-aligned numbers; markdown=True gives a GitHub markdown table."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "x".join(str(d) for d in value)
    return str(value)
