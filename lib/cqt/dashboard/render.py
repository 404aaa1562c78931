"""HTML tables with stable markers: what a browser test (and a person) reads off the page.

Each row carries `data-*` attributes with the exact stored values (times in epoch ms, ages in
seconds), and the same values as visible text; everything is escaped.
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from ..checks.result import fmt_num

OK_STYLE = "color:#0a7d32;font-weight:600"
BAD_STYLE = "color:#c62828;font-weight:600"
NOWRAP = ' style="white-space:nowrap"'


def attr(v: Any) -> str:
    return "" if v is None else html.escape(str(v), quote=True)


def state_cell(ok: bool | None, text: str) -> str:
    style = "" if ok is None else (OK_STYLE if ok else BAD_STYLE)
    return f'<span style="{style}">{html.escape(text)}</span>'


def table(table_id: str, headers: Sequence[str], rows: Iterable[tuple[str, dict[str, Any], Sequence[Any]]],
          raw_cols: frozenset[int] = frozenset(), max_height_px: int | None = None) -> str:
    """`rows`: (css class, data attributes, cells); cells at `raw_cols` are HTML already. The table
    scrolls inside its box (sideways when wide, down past `max_height_px`), never over its neighbours."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for css, data, cells in rows:
        attrs = " ".join(f'data-{k}="{attr(v)}"' for k, v in data.items())
        # The first cell names the row (a service, a check): never wrapped in the middle of its name.
        tds = "".join(f"<td{NOWRAP if i == 0 else ''}>{c if i in raw_cols else html.escape(text(c))}</td>"
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{css}" {attrs}>{tds}</tr>')
    box = "overflow-x:auto" + (f";max-height:{max_height_px}px;overflow-y:auto" if max_height_px else "")
    return (f'<div style="{box}"><table id="{table_id}" style="width:100%;font-size:0.85rem"><thead><tr>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def shortened(v: str | None, limit: int = 120) -> str | None:
    """Long text cut for a table cell (the full text stays in the stored result)."""
    if v is None or len(v) <= limit:
        return v
    return v[:limit - 1].rstrip() + "…"


def text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt_num(v)
    return str(v)
