"""pandas DataFrames as HTML tables with inline styles (mail clients drop ``<style>``)."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from notifier.errors import MessageError
from notifier.mail.parts import keeps_index

FloatFormat = str | Mapping[str, str] | None

TABLE_STYLE = (
    "border-collapse:collapse;font-family:Arial,Helvetica,sans-serif;font-size:13px;margin:8px 0"
)
CAPTION_STYLE = "caption-side:top;text-align:left;font-weight:bold;padding:4px 0;color:#333"
HEAD_STYLE = (
    "background:#2f5597;color:#fff;padding:6px 10px;border:1px solid #2f5597;text-align:{align}"
)
CELL_STYLE = "padding:5px 10px;border:1px solid #d0d7de;text-align:{align}"
ROW_BACKGROUNDS = ("#ffffff", "#f3f6fa")


def auto_float_format(values: Sequence[Any]) -> str:
    """The natural format of a column of floats: as few decimals as its values need.

    Integer-valued floats (``885.0``, a count that became float through a NaN or a
    sum) show no decimals; otherwise one or two (``492.8`` -> 1, ``1234.25`` -> 2),
    up to four for a column whose values are all below 1 (rates like ``0.0034``).
    """
    finite = [
        float(v)
        for v in values
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not finite:
        return ",.2f"
    most = 2 if max(abs(v) for v in finite) >= 1 else 4
    for decimals in range(most + 1):
        if all(abs(round(v, decimals) - v) <= 1e-9 * max(1.0, abs(v)) for v in finite):
            return f",.{decimals}f"
    return f",.{most}f"


def _column_formats(
    frame: Any, columns: list[str], float_format: FloatFormat
) -> list[tuple[str | None, bool]]:
    """Per column: (format for its floats, whether integers use it too)."""
    named: dict[str, str] = {}
    if isinstance(float_format, Mapping):
        named = {str(name): spec for name, spec in float_format.items()}
        unknown = sorted(set(named) - set(columns))
        if unknown:
            raise MessageError(
                f"float_format names column(s) the table does not have: {', '.join(unknown)}.",
                f"use the table's column names: {', '.join(columns)}",
            )
    formats: list[tuple[str | None, bool]] = []
    for position, (name, dtype) in enumerate(zip(columns, frame.dtypes, strict=True)):
        if name in named:
            formats.append((_checked(named[name], name), True))
        elif isinstance(float_format, str):
            formats.append((_checked(float_format, name), False))
        elif dtype.kind in "fO":  # object columns may hold floats too
            formats.append((auto_float_format(list(frame.iloc[:, position])), False))
        else:
            formats.append((None, False))
    return formats


def _checked(spec: str, column: str) -> str:
    """``spec`` when it formats numbers, else a MessageError naming the column."""
    try:
        format(1234.5, spec)
        format(1234, spec)
    except (ValueError, TypeError):
        raise MessageError(
            f"float_format {spec!r} (column {column!r}) is not a format for numbers.",
            "use a format spec like ',.2f' (2 decimals, thousands separators), ',.0f' or '.1%'",
        ) from None
    return spec


def _format(value: Any, float_format: str | None, integers_too: bool = False) -> tuple[str, str]:
    """(text, alignment) of one cell; numbers right-aligned with thousands separators."""
    if value is None or (isinstance(value, float) and value != value):
        return "", "left"
    if type(value).__name__ in {"NAType", "NaTType"}:  # pandas' missing values
        return "", "left"
    if isinstance(value, bool):
        return str(value), "left"
    if isinstance(value, numbers.Integral):
        text = format(value, float_format) if integers_too and float_format else f"{value:,}"
        return text, "right"
    if isinstance(value, numbers.Real):
        return format(value, float_format or auto_float_format([value])), "right"
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
    float_format: FloatFormat = None,
) -> str:
    """Render a DataFrame (or Series) as an inline-styled ``<table>``.

    ``float_format``: None picks each float column's natural format (see
    :func:`auto_float_format`); a format spec like ``",.2f"`` applies to every float
    column; a mapping ``{"revenue": ",.0f", "share": ".1%"}`` sets the named columns
    (integer columns too) and leaves the others natural.
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
    formats = _column_formats(shown, columns, float_format)
    index_format = auto_float_format(list(shown.index)) if shown.index.dtype.kind == "f" else None
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
            text, _ = _format(label, index_format)
            cells.append(
                f'<th style="{CELL_STYLE.format(align="left")};font-weight:bold">'
                f"{html.escape(text)}</th>"
            )
        # itertuples keeps column types
        for value, align, (spec, integers_too) in zip(values, aligns, formats, strict=True):
            text, _ = _format(value, spec, integers_too)
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
