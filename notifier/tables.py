"""pandas DataFrames as HTML tables with inline styles (mail clients drop ``<style>``)."""

from __future__ import annotations

import html
import numbers
from typing import Any

from notifier.parts import keeps_index

TABLE_STYLE = (
    "border-collapse:collapse;font-family:Arial,Helvetica,sans-serif;font-size:13px;margin:8px 0"
)
CAPTION_STYLE = "caption-side:top;text-align:left;font-weight:bold;padding:4px 0;color:#333"
HEAD_STYLE = (
    "background:#2f5597;color:#fff;padding:6px 10px;border:1px solid #2f5597;text-align:{align}"
)
CELL_STYLE = "padding:5px 10px;border:1px solid #d0d7de;text-align:{align}"
ROW_BACKGROUNDS = ("#ffffff", "#f3f6fa")


def _format(value: Any, float_format: str) -> tuple[str, str]:
    """(text, alignment) of one cell; numbers right-aligned with thousands separators."""
    if value is None or (isinstance(value, float) and value != value):
        return "", "left"
    if isinstance(value, bool):
        return str(value), "left"
    if isinstance(value, numbers.Integral):
        return f"{value:,}", "right"
    if isinstance(value, numbers.Real):
        return format(value, float_format), "right"
    if hasattr(value, "isoformat") and hasattr(value, "hour"):
        text = value.isoformat(sep=" ") if hasattr(value, "date") else value.isoformat()
        return text.removesuffix(" 00:00:00"), "left"
    return str(value), "left"


def dataframe_html(
    frame: Any,
    caption: str | None = None,
    *,
    max_rows: int = 200,
    index: bool | None = None,
    float_format: str = ",.2f",
) -> str:
    """Render a DataFrame (or Series) as an inline-styled ``<table>``.

    ``index=None`` shows the index only when it carries data (named, or not integers).
    Rows beyond ``max_rows`` are cut, and the table says so.
    """
    if hasattr(frame, "to_frame") and not hasattr(frame, "columns"):
        frame = frame.to_frame()
    if index is None:
        index = keeps_index(frame)
    shown = frame.head(max_rows)
    columns = [str(c) for c in shown.columns]
    index_name = str(shown.index.name) if shown.index.name is not None else ""
    rows_html = []
    aligns = [
        "right" if dtype.kind in "iuf" else "left"  # numbers right, everything else left
        for dtype in shown.dtypes
    ]
    head_cells = (
        [f'<th style="{HEAD_STYLE.format(align="left")}">{html.escape(index_name)}</th>']
        if index
        else []
    )
    head_cells += [
        f'<th style="{HEAD_STYLE.format(align=align)}">{html.escape(name)}</th>'
        for name, align in zip(columns, aligns, strict=True)
    ]
    for number, (label, values) in enumerate(
        zip(shown.index, shown.itertuples(index=False, name=None), strict=True)
    ):
        background = ROW_BACKGROUNDS[number % 2]
        cells = []
        if index:
            text, _ = _format(label, float_format)
            cells.append(
                f'<th style="{CELL_STYLE.format(align="left")};font-weight:bold">'
                f"{html.escape(text)}</th>"
            )
        for value, align in zip(values, aligns, strict=True):  # itertuples keeps column types
            text, _ = _format(value, float_format)
            cells.append(f'<td style="{CELL_STYLE.format(align=align)}">{html.escape(text)}</td>')
        rows_html.append(f'<tr style="background:{background}">{"".join(cells)}</tr>')
    caption_html = (
        f'<caption style="{CAPTION_STYLE}">{html.escape(caption)}</caption>' if caption else ""
    )
    footer = ""
    if len(frame) > max_rows:
        span = len(columns) + (1 if index else 0)
        footer = (
            f'<tr><td colspan="{span}" style="{CELL_STYLE.format(align="left")};color:#777">'
            f"… {len(frame) - max_rows:,} more rows not shown</td></tr>"
        )
    return (
        f'<table style="{TABLE_STYLE}">{caption_html}<thead><tr>{"".join(head_cells)}</tr></thead>'
        f"<tbody>{''.join(rows_html)}{footer}</tbody></table>"
    )
