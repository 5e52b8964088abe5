"""notifier.mail.tables: numbers in their column's natural format, and explicit formats."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from notifier.errors import MessageError
from notifier.mail.tables import auto_float_format, dataframe_html


def cells(markup: str) -> list[list[str]]:
    """The text of every body cell, row by row."""
    body = markup.split("<tbody>", 1)[1]
    return [
        re.findall(r"<t[dh] [^>]*>([^<]*)</t[dh]>", row)
        for row in re.findall(r"<tr [^>]*>(.*?)</tr>", body)
    ]


def test_integer_valued_floats_show_no_decimals():
    # a sum or a NaN turns counts into floats: 885.0 units is still 885 units
    frame = pd.DataFrame({"units": [885.0, 1096.0, None], "revenue": [29387.0, 1500.0, 2.0]})
    assert frame["units"].dtype.kind == "f"
    assert cells(dataframe_html(frame)) == [["885", "29,387"], ["1,096", "1,500"], ["", "2"]]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([492.8, 12.0, 506.6], ",.1f"),  # latency in ms
        ([1234.5, 99.0, 1000000.25], ",.2f"),  # money with cents
        ([1 / 3, 2.0], ",.2f"),  # at most 2 decimals for values of 1 and more
        ([0.0034, 0.01], ",.4f"),  # small rates keep their digits
        ([float("nan"), float("inf")], ",.2f"),
    ],
)
def test_auto_format_uses_as_few_decimals_as_the_column_needs(values, expected):
    assert auto_float_format(values) == expected


def test_latency_table_reads_naturally():
    frame = pd.DataFrame({"time": ["13:05", "13:10"], "p95_ms": [471.4, 506.6], "n": [12, 1300]})
    assert cells(dataframe_html(frame)) == [["13:05", "471.4", "12"], ["13:10", "506.6", "1,300"]]


def test_one_format_for_every_float_column_leaves_integers_alone():
    frame = pd.DataFrame({"ms": [492.8], "count": [7]})
    assert cells(dataframe_html(frame, float_format=",.3f")) == [["492.800", "7"]]


def test_formats_per_column_also_apply_to_integer_columns():
    frame = pd.DataFrame({"revenue": [29387.5], "share": [0.474], "units": [885], "ms": [492.84]})
    markup = dataframe_html(
        frame, float_format={"revenue": ",.2f", "share": ".1%", "units": ",.1f"}
    )
    assert cells(markup) == [["29,387.50", "47.4%", "885.0", "492.84"]]


def test_float_index_is_formatted_like_a_column():
    frame = pd.DataFrame({"n": [1, 2]}, index=pd.Index([1.0, 2.0], name="level"))
    assert cells(dataframe_html(frame)) == [["1", "1"], ["2", "2"]]


def test_pandas_missing_values_are_empty_cells():
    frame = pd.DataFrame(
        {"n": pd.array([1, None], dtype="Int64"), "when": pd.to_datetime(["2026-01-01", None])}
    )
    assert cells(dataframe_html(frame)) == [["1", "2026-01-01"], ["", ""]]


@pytest.mark.parametrize(
    "float_format, message, fix",
    [
        ({"revenu": ",.2f"}, "names column(s) the table does not have: revenu", "revenue, units"),
        ("%.2f", "'%.2f' (column 'revenue') is not a format for numbers", "',.2f'"),
        ({"units": ",.2s"}, "',.2s' (column 'units') is not a format for numbers", "',.0f'"),
    ],
)
def test_a_bad_format_is_one_clear_error(float_format, message, fix):
    frame = pd.DataFrame({"revenue": [1.5], "units": [3]})
    with pytest.raises(MessageError) as raised:
        dataframe_html(frame, float_format=float_format)
    assert message in raised.value.message
    assert fix in raised.value.fix
