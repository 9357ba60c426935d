"""The preprocessing path: timestamps, encoding, dense features, fitting, persistence and padding."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from model.data import History, load_events, user_histories
from model.features import (
    DENSE_FEATURES,
    INPUT_NAMES,
    NUM_RESERVED,
    PAD,
    PREPROCESS_VERSION,
    UNKNOWN,
    Encoded,
    EventError,
    Preprocessor,
    Stats,
    _checked_columns,
    _fast_columns,
    pad_batch,
    timestamp_to_seconds,
    unix_to_seconds,
)

T = 1704067200  # 2024-01-01T00:00:00Z
NAN = float("nan")
LN10 = math.log(10.0)


def make_pre(max_len: int = 10, **stats: Stats) -> Preprocessor:
    """items a, b, c, 242 -> 2, 3, 4, 5; event types click, view -> 2, 3."""
    return Preprocessor(max_len=max_len, item_ids=["a", "b", "c", "242"], event_types=["click", "view"], **stats)


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T, 1704067200.0),
        (1704067200.5, 1704067200.5),
        (np.int64(T), 1704067200.0),
        (np.float64(T), 1704067200.0),
        (631152000, 631152000.0),  # 1990-01-01, the first accepted second
        (4102444799, 4102444799.0),  # the last second before 2100
        (1704067200000, 1704067200.0),  # milliseconds
        (1704067200123, 1704067200.123),
        (1704067200123.0, 1704067200.123),
        (631152000000, 631152000.0),
    ],
)
def test_timestamp_numbers(value: Any, expected: float) -> None:
    """Unix seconds pass through; values >= 1e11 are milliseconds."""
    assert timestamp_to_seconds(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", 1704067200.0),
        ("2024-01-01T00:00:00.250Z", 1704067200.25),
        (" 2024-01-01T00:00:00Z ", 1704067200.0),
        ("2024-01-01T02:00:00+02:00", 1704067200.0),
        ("2024-01-01T00:00:00-05:00", 1704085200.0),
        ("2024-01-01T12:30:00", 1704112200.0),  # no zone: UTC
        ("2024-02-29T12:00:00Z", 1709208000.0),
        ("2024-01-01", 1704067200.0),
    ],
)
def test_timestamp_iso(text: str, expected: float) -> None:
    """ISO-8601 strings, with Z, an offset or no zone (UTC)."""
    assert timestamp_to_seconds(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "finite"),
        (np.float64("nan"), "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (-1, "negative"),
        (-1704067200000, "negative"),
        ("1960-01-01T00:00:00Z", "negative"),
        (631151999, "between"),  # one second before 1990
        (4102444800, "between"),  # 2100-01-01 itself
        (4102444800000, "between"),  # 2100 in milliseconds
        (99999999999, "between"),  # just below the ms threshold: seconds, year 5138
        (10**400, "between"),  # too large for a float: a ValueError, not an OverflowError
        ("2100-01-01T00:00:00Z", "between"),
        (True, "boolean"),
        (False, "boolean"),
        ("yesterday", "ISO-8601"),
        ("1704067200", "ISO-8601"),
        ("", "ISO-8601"),
        (None, "number or an ISO-8601 string"),
        ([T], "number or an ISO-8601 string"),
    ],
)
def test_timestamp_rejected(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timestamp_to_seconds(value)


def test_unix_to_seconds_units() -> None:
    got = unix_to_seconds([T, T + 60], "s")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [1704067200.0, 1704067260.0])
    np.testing.assert_array_equal(unix_to_seconds([1704067200000, 1704067200500], "ms"), [1704067200.0, 1704067200.5])
    np.testing.assert_array_equal(unix_to_seconds([T, 1704067260000], "auto"), [1704067200.0, 1704067260.0])
    np.testing.assert_array_equal(unix_to_seconds([T, 1704067260000]), [1704067200.0, 1704067260.0])


def test_unix_to_seconds_bad_unit() -> None:
    with pytest.raises(ValueError, match="unknown time unit 'us'"):
        unix_to_seconds([T], "us")


@pytest.mark.parametrize(
    ("values", "unit", "row"),
    [
        ([T, T, 5.0, 6.0], "auto", 2),  # the first bad row is named
        ([T, NAN], "auto", 1),
        ([T, math.inf], "s", 1),
        ([T, 1704067200000], "s", 1),  # milliseconds read as seconds
        ([T], "ms", 0),  # seconds read as milliseconds
        ([T, -T], "auto", 1),
    ],
)
def test_unix_to_seconds_names_row(values: list[float], unit: str, row: int) -> None:
    with pytest.raises(ValueError, match=rf"^row {row}: timestamp .* is not a unix time between 1990 and 2100"):
        unix_to_seconds(values, unit)


# -- encode --------------------------------------------------------------------------------


def test_encode_stable_sort() -> None:
    """Sorted by time; the two events at T keep their input order (b before a)."""
    enc = make_pre().encode(["a", "b", "c", "a"], [T + 10, T, T + 10, T], ["view", "view", "click", "click"])
    np.testing.assert_array_equal(enc.items, [3, 2, 2, 4])
    np.testing.assert_array_equal(enc.event_types, [3, 2, 3, 2])
    assert enc.items.dtype == np.int64 and enc.event_types.dtype == np.int64
    assert enc.dense.dtype == np.float32 and enc.dense.shape == (4, len(DENSE_FEATURES))
    assert enc.length == 4 and enc.n_unknown == 0


def test_encode_keeps_newest() -> None:
    """Only the newest max_len events are kept, after sorting."""
    enc = make_pre(max_len=3).encode(["c", "a", "b", "a", "c"], [T + 4, T, T + 1, T + 3, T + 2], ["view"] * 5)
    np.testing.assert_array_equal(enc.items, [4, 2, 4])  # c@T+2, a@T+3, c@T+4
    assert enc.length == 3
    # spans count from the first kept event (T+2), not the first event overall
    np.testing.assert_allclose(enc.dense[:, 1], [0.0, math.log(2.0), math.log(3.0)], rtol=1e-6)


def test_encode_unknown() -> None:
    """Unknown items and event types map to UNKNOWN; n_unknown counts unknown items in the window."""
    pre = make_pre(max_len=3)
    enc = pre.encode(
        ["zz", "a", "yy", "b", "xx"], [T, T + 1, T + 2, T + 3, T + 4], ["view", "buy", "click", "", "view"]
    )
    assert UNKNOWN == 1 and NUM_RESERVED == 2 and PAD == 0
    np.testing.assert_array_equal(enc.items, [1, 3, 1])
    np.testing.assert_array_equal(enc.event_types, [2, 1, 3])
    assert enc.n_unknown == 2  # "zz" fell out of the window
    assert pre.encode(["a", "b"], [T, T + 1], ["buy", "buy"]).n_unknown == 0


def test_encode_index_is_position_plus_reserved() -> None:
    pre = Preprocessor(max_len=5, item_ids=["p", "q", "r"], event_types=["e"])
    enc = pre.encode(["r", "p", "q"], [T, T + 1, T + 2], ["e", "e", "e"])
    np.testing.assert_array_equal(enc.items, [4, 2, 3])
    assert [pre.item_index(i) for i in ("p", "q", "r", "s")] == [2, 3, 4, 1]
    assert pre.num_items == 5 and pre.num_event_types == 3


def test_encode_ids_are_strings() -> None:
    """Integer-like ids are labels: "242" and 242 match, "0242" and "242.0" do not."""
    enc = make_pre().encode(["242", "0242", 242, "242.0"], [T, T + 1, T + 2, T + 3], ["view"] * 4)
    np.testing.assert_array_equal(enc.items, [5, 1, 5, 1])
    assert enc.n_unknown == 2


def test_encode_empty() -> None:
    enc = make_pre().encode([], [], [])
    assert enc.length == 0 and enc.n_unknown == 0
    assert enc.items.shape == (0,) and enc.items.dtype == np.int64
    assert enc.event_types.shape == (0,) and enc.event_types.dtype == np.int64
    assert enc.dense.shape == (0, 3) and enc.dense.dtype == np.float32


def test_encode_length_mismatch() -> None:
    with pytest.raises(ValueError, match="equal length"):
        make_pre().encode(["a", "b"], [T], ["view", "view"])
    with pytest.raises(ValueError, match="equal length"):
        make_pre().encode(["a"], [T], ["view", "view"])
    with pytest.raises(ValueError, match="one value .* per event"):
        make_pre().encode(["a", "b"], [T, T], ["view", "view"], [1.0])


def test_max_len_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_len"):
        Preprocessor(max_len=0, item_ids=[], event_types=[])


# -- dense features ------------------------------------------------------------------------


def test_dense_values() -> None:
    """log1p of gap, span and dwell, standardised with the given Stats; missing dwell is 0."""
    pre = make_pre(gap_stats=Stats(1.0, 2.0), span_stats=Stats(0.5, 4.0), dwell_stats=Stats(2.0, 0.5))
    # given out of order: sorted times are T, T+9, T+99, T+99 with dwell NaN, 0, 9, 99
    enc = pre.encode(["a", "b", "c", "a"], [T + 99, T, T + 9, T + 99], ["view"] * 4, [9.0, NAN, 0.0, 99.0])
    ln91 = math.log(91.0)
    expected = [
        # log_gap: gaps 0, 9, 90, 0     log_span: spans 0, 9, 99, 99     dwell
        [(0 - 1) / 2, (0 - 0.5) / 4, 0.0],
        [(LN10 - 1) / 2, (LN10 - 0.5) / 4, (0 - 2) / 0.5],
        [(ln91 - 1) / 2, (2 * LN10 - 0.5) / 4, (LN10 - 2) / 0.5],
        [(0 - 1) / 2, (2 * LN10 - 0.5) / 4, (2 * LN10 - 2) / 0.5],
    ]
    np.testing.assert_allclose(enc.dense, np.array(expected), rtol=1e-6, atol=1e-7)


def test_dense_no_dwell() -> None:
    """Without a dwell column every dwell is missing: 0 after scaling, whatever the stats."""
    pre = make_pre(dwell_stats=Stats(3.0, 2.0))
    enc = pre.encode(["a", "b"], [T, T + 9], ["view", "view"])
    np.testing.assert_array_equal(enc.dense[:, 2], [0.0, 0.0])
    np.testing.assert_allclose(enc.dense[:, 0], [0.0, LN10], rtol=1e-6)


def test_dense_prefix_property() -> None:
    """Features of the first k events are the first k rows of the features of all events."""
    rng = np.random.default_rng(7)
    n = 40
    seconds = T + np.cumsum(rng.choice([0.0, 1.0, 30.0, 3600.0, 86400.0 * 3], size=n))
    dwell = np.where(rng.random(n) < 0.3, NAN, rng.exponential(20.0, size=n))
    items = [str(i) for i in rng.integers(0, 6, size=n)]
    kinds = [["click", "view", "buy"][k] for k in rng.integers(0, 3, size=n)]
    pre = Preprocessor(
        max_len=n,
        item_ids=["0", "1", "2", "3"],
        event_types=["click", "view"],
        gap_stats=Stats(4.2, 3.1),
        span_stats=Stats(9.7, 2.3),
        dwell_stats=Stats(2.5, 1.4),
    )
    whole = pre.encode(items, seconds, kinds, dwell)
    assert whole.length == n
    for k in range(n + 1):
        part = pre.encode(items[:k], seconds[:k], kinds[:k], dwell[:k])
        np.testing.assert_array_equal(part.dense, whole.dense[:k], err_msg=f"k={k}")
        np.testing.assert_array_equal(part.items, whole.items[:k])
        np.testing.assert_array_equal(part.event_types, whole.event_types[:k])


# -- encode_events -------------------------------------------------------------------------

EVENTS: list[dict[str, Any]] = [
    {"item_id": "a", "timestamp": "2024-01-01T00:00:09Z", "event_type": "view", "dwell_time": 9},
    {"item_id": "b", "timestamp": 1704067200000, "event_type": "click"},
    {"item_id": "zz", "timestamp": T + 99.0, "event_type": "buy", "dwell_time": 0.0},
]


def test_encode_events_dicts_and_objects() -> None:
    pre = make_pre(gap_stats=Stats(1.0, 2.0), dwell_stats=Stats(1.0, 0.5))
    from_dicts = pre.encode_events(EVENTS)
    # sorted: b@T, a@T+9, zz@T+99
    np.testing.assert_array_equal(from_dicts.items, [3, 2, 1])
    np.testing.assert_array_equal(from_dicts.event_types, [2, 3, 1])
    assert from_dicts.n_unknown == 1
    np.testing.assert_allclose(from_dicts.dense[:, 0], [-0.5, (LN10 - 1) / 2, (math.log(91.0) - 1) / 2], rtol=1e-6)
    np.testing.assert_allclose(from_dicts.dense[:, 2], [0.0, (LN10 - 1) / 0.5, (0 - 1) / 0.5], rtol=1e-6)

    objects = [SimpleNamespace(**event) for event in EVENTS]  # the second has no dwell_time attribute
    from_objects = pre.encode_events(objects)
    for name in ("items", "event_types", "dense"):
        np.testing.assert_array_equal(getattr(from_objects, name), getattr(from_dicts, name))
    assert from_objects.digest() == from_dicts.digest()

    columns = pre.encode(["a", "b", "zz"], [T + 9, T, T + 99], ["view", "click", "buy"], [9.0, NAN, 0.0])
    for name in ("items", "event_types", "dense"):
        np.testing.assert_array_equal(getattr(columns, name), getattr(from_dicts, name))
    assert columns.n_unknown == from_dicts.n_unknown


def test_encode_events_empty() -> None:
    enc = make_pre().encode_events([])
    assert enc.length == 0 and enc.dense.shape == (0, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "last tuesday"),
        ("timestamp", None),
        ("timestamp", True),
        ("timestamp", math.nan),
        ("timestamp", 12345),
        ("dwell_time", -0.5),
        ("dwell_time", -1),
        ("dwell_time", "5"),
        ("dwell_time", True),
        ("dwell_time", math.nan),
        ("dwell_time", math.inf),
        ("dwell_time", [1.0]),
        ("dwell_time", 10**400),
        ("item_id", None),
        ("item_id", ""),
        ("item_id", "x" * 257),
        ("item_id", ["242"]),
        ("item_id", True),
        ("item_id", 1.5),
        ("event_type", None),
        ("event_type", {"kind": "view"}),
    ],
)
def test_encode_events_error(field: str, value: Any) -> None:
    """A bad event raises EventError naming its index and field."""
    events = [dict(e) for e in EVENTS]
    events[2][field] = value
    with pytest.raises(EventError) as info:
        make_pre().encode_events(events)
    assert info.value.index == 2 and info.value.field == field
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"event 2: {field}: ")


@pytest.mark.parametrize("event", [5, 1.5, "view", None, [EVENTS[0]], b"x"])
def test_encode_events_not_an_object(event: Any) -> None:
    with pytest.raises(EventError) as info:
        make_pre().encode_events([EVENTS[0], event])
    assert info.value.index == 1 and info.value.field is None
    assert str(info.value) == "event 1: must be an object with item_id, timestamp and event_type"


def test_the_column_path_equals_the_event_by_event_path() -> None:
    """Valid dicts with numeric times take the column path; it must encode exactly as the checked path."""
    events = [
        {"item_id": 242, "timestamp": 1704067200, "event_type": "view"},
        {"item_id": "a", "timestamp": 1704067260500, "event_type": 7, "dwell_time": 3},  # ms, int type, int dwell
        {"item_id": "b", "timestamp": 1704067100.25, "event_type": "cart", "dwell_time": 0.5, "extra": 1},
        {"item_id": "a", "timestamp": 1704067100.25, "event_type": "buy", "dwell_time": None},  # a tie
    ]
    fast = _fast_columns(events)
    assert fast is not None
    checked = _checked_columns(events)
    assert fast[0] == checked[0] == ["242", "a", "b", "a"]
    assert fast[2] == checked[2] == ["view", "7", "cart", "buy"]
    np.testing.assert_array_equal(fast[1], [1704067200.0, 1704067260.5, 1704067100.25, 1704067100.25])
    np.testing.assert_array_equal(fast[1], checked[1])
    np.testing.assert_array_equal(fast[3], [np.nan, 3.0, 0.5, np.nan])
    np.testing.assert_array_equal(fast[3], checked[3])
    # Anything the column path does not take goes event by event, with the same result.
    iso = [{**events[0], "timestamp": "2024-01-01T00:00:00Z"}, *events[1:]]
    assert _fast_columns(iso) is None
    np.testing.assert_array_equal(_checked_columns(iso)[1], fast[1])


def test_many_histories_encode_as_each_alone(data_dir: Path) -> None:
    """encode_event_lists (one pass over a whole request) gives each history exactly its encode_events."""
    histories = user_histories(load_events(data_dir / "ml-100k", "movielens"))
    pre = Preprocessor.fit(histories[:500], max_len=50)  # users 500+ bring unknown items
    lists = []
    for h in histories[480:520]:
        events = [
            {"item_id": str(i), "timestamp": float(t), "event_type": str(k)}
            for i, t, k in zip(h.item_ids, h.seconds, h.event_types, strict=True)
        ]
        lists.append(events[::-1][:80])  # newest first, up to 80 events: sorting and cropping both matter
    lists.insert(3, [])  # an empty history between others
    lists.append([{**e, "timestamp": lists[0][0]["timestamp"]} for e in lists[0][:5]])  # all tied in time
    lists.append([])  # and one at the end
    together = pre.encode_event_lists(lists)
    assert len(together) == len(lists)
    assert sum(e.n_unknown for e in together) > 0
    for events, many in zip(lists, together, strict=True):
        alone = pre.encode_events(events)
        assert many.length == alone.length == min(50, len(events))
        for name in ("items", "event_types", "dense"):
            np.testing.assert_array_equal(getattr(many, name), getattr(alone, name))
        assert many.n_unknown == alone.n_unknown == int((alone.items == UNKNOWN).sum())
        assert many.digest() == alone.digest()


def test_encode_event_lists_mixed_paths_and_errors() -> None:
    """A history the column path cannot take goes event by event; an error names its history and event."""
    pre = make_pre(gap_stats=Stats(1.0, 2.0), dwell_stats=Stats(1.0, 0.5))
    numeric = [dict(e, timestamp=T + i) for i, e in enumerate(EVENTS)]
    together = pre.encode_event_lists([numeric, EVENTS, []])  # EVENTS holds an ISO timestamp
    for events, many in zip([numeric, EVENTS, []], together, strict=True):
        alone = pre.encode_events(events)
        for name in ("items", "event_types", "dense"):
            np.testing.assert_array_equal(getattr(many, name), getattr(alone, name))
    assert pre.encode_event_lists([]) == []

    bad = [dict(e) for e in EVENTS]
    bad[1]["dwell_time"] = -1
    with pytest.raises(EventError) as info:
        pre.encode_event_lists([numeric, EVENTS, bad])
    assert (info.value.sequence, info.value.index, info.value.field) == (2, 1, "dwell_time")

    # Errors the column path must not let through (each history alone is all-numeric).
    for field, value in (("dwell_time", math.nan), ("dwell_time", 10**400), ("timestamp", 10**400)):
        bad = [dict(e) for e in numeric]
        bad[2][field] = value
        with pytest.raises(EventError) as info:
            pre.encode_event_lists([numeric, bad])
        assert (info.value.sequence, info.value.index, info.value.field) == (1, 2, field)


def test_encode_events_zero_dwell_accepted() -> None:
    enc = make_pre(dwell_stats=Stats(0.0, 1.0)).encode_events([{**EVENTS[0], "dwell_time": 0}])
    np.testing.assert_array_equal(enc.dense[:, 2], [0.0])


# -- fit -----------------------------------------------------------------------------------


def history(user: str, items: list[str], offsets: list[float], kinds: list[str], dwell: list[float]) -> History:
    return History(
        user,
        np.asarray(items, dtype=str),
        T + np.asarray(offsets, dtype=np.float64),
        np.asarray(kinds, dtype=str),
        np.asarray(dwell, dtype=np.float64),
    )


@dataclass
class Columns:
    """A minimal history: just the columns fit reads."""

    item_ids: list[Any]
    seconds: list[float]
    event_types: list[str]
    dwell: list[float]


def test_fit() -> None:
    """Vocabulary by first appearance, sorted types, statistics over the newest max_len events."""
    histories = [
        # window (max_len 3): offsets 1, 10, 100; "q" only appears in the dropped event
        history("u1", ["q", "y", "x", "x"], [0, 1, 10, 100], ["view", "click", "view", "view"], [5, NAN, 9, 99]),
        history("u2", [], [], [], []),
        history("u3", ["z", "y", "w"], [0, 3, 10], ["view", "buy", "view"], [NAN, 3, 0]),
    ]
    pre = Preprocessor.fit(histories, max_len=3)
    assert pre.max_len == 3
    assert pre.item_ids == ["q", "y", "x", "z", "w"]
    assert pre.event_types == ["buy", "click", "view"]
    assert pre.version == PREPROCESS_VERSION
    ln = math.log
    gaps = [0, ln(10), ln(91), 0, ln(4), ln(8)]
    spans = [0, ln(10), ln(100), 0, ln(4), ln(11)]
    dwells = [ln(10), ln(100), ln(4), 0]
    for stats, values in ((pre.gap_stats, gaps), (pre.span_stats, spans), (pre.dwell_stats, dwells)):
        assert stats.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert stats.std == pytest.approx(statistics.pstdev(values), rel=1e-12)
    enc = pre.encode(["x", "q", "w"], [T, T + 1, T + 2], ["view", "buy", "nope"])
    np.testing.assert_array_equal(enc.items, [4, 2, 6])
    np.testing.assert_array_equal(enc.event_types, [4, 2, 1])


def test_fit_plain_columns_and_degenerate_stats() -> None:
    """Any object with the four columns works; ids become strings; a zero spread gives std 1."""
    pre = Preprocessor.fit([Columns([242, 7], [T, T], ["rate", "rate"], [9.0, 9.0])], max_len=5)
    assert pre.item_ids == ["242", "7"]
    assert pre.event_types == ["rate"]
    assert pre.gap_stats == Stats(0.0, 1.0)
    assert pre.span_stats == Stats(0.0, 1.0)
    assert pre.dwell_stats.mean == pytest.approx(LN10, rel=1e-12)
    assert pre.dwell_stats.std == 1.0


def test_fit_nothing() -> None:
    pre = Preprocessor.fit([], max_len=4)
    assert pre.item_ids == [] and pre.event_types == []
    assert pre.gap_stats == pre.span_stats == pre.dwell_stats == Stats(0.0, 1.0)
    assert pre.num_items == 2 and pre.num_event_types == 2
    no_dwell = Preprocessor.fit([Columns(["a"], [T], ["e"], [NAN])], max_len=4)
    assert no_dwell.dwell_stats == Stats(0.0, 1.0)


# -- persistence ---------------------------------------------------------------------------


def fitted() -> Preprocessor:
    return Preprocessor.fit(
        [
            history("u1", ["a", "b", "c"], [0, 7, 500], ["view", "click", "view"], [3, NAN, 40]),
            history("u2", ["c", "d"], [0, 86400], ["buy", "view"], [NAN, 12]),
        ],
        max_len=8,
    )


def test_json_round_trip() -> None:
    pre = fitted()
    text = json.dumps(pre.to_json())
    data = json.loads(text)
    assert data == pre.to_json()
    assert data["version"] == PREPROCESS_VERSION
    assert data["item_ids"] == ["a", "b", "c", "d"]
    assert data["event_types"] == ["buy", "click", "view"]
    assert set(data["stats"]) == set(DENSE_FEATURES)
    back = Preprocessor.from_json(data)
    assert back == pre
    events = [
        {"item_id": "c", "timestamp": T + 30, "event_type": "view", "dwell_time": 2.5},
        {"item_id": "a", "timestamp": T, "event_type": "buy"},
        {"item_id": "new", "timestamp": T + 4000, "event_type": "share", "dwell_time": 100},
    ]
    one, two = pre.encode_events(events), back.encode_events(events)
    for name in ("items", "event_types", "dense"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    assert one.digest() == two.digest()


def test_json_is_plain() -> None:
    """Only dicts, lists, strings and numbers: no pickled or numpy objects."""

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return type(value) in (str, int, float)

    assert plain(fitted().to_json())


@pytest.mark.parametrize("version", [PREPROCESS_VERSION - 1, PREPROCESS_VERSION + 1, None, str(PREPROCESS_VERSION)])
def test_from_json_rejects_version(version: Any) -> None:
    data = fitted().to_json()
    data["version"] = version
    with pytest.raises(ValueError, match=f"preprocessing version {version} is not supported"):
        Preprocessor.from_json(data)


def test_from_json_needs_version() -> None:
    data = fitted().to_json()
    del data["version"]
    with pytest.raises(ValueError, match="preprocessing version None is not supported"):
        Preprocessor.from_json(data)


# -- pad_batch -----------------------------------------------------------------------------


def encoded(items: list[int], kinds: list[int], dense: list[list[float]]) -> Encoded:
    return Encoded(
        np.asarray(items, dtype=np.int64),
        np.asarray(kinds, dtype=np.int64),
        np.asarray(dense, dtype=np.float32).reshape(len(items), 3),
        0,
    )


def test_pad_batch() -> None:
    batch = [
        encoded([5, 6], [2, 3], [[1, 2, 3], [4, 5, 6]]),
        encoded([], [], []),
        encoded([7, 8, 9], [3, 3, 2], [[-1, -2, -3], [0.5, 0.25, 0.125], [7, 8, 9]]),
    ]
    out = pad_batch(batch)
    assert tuple(out) == INPUT_NAMES
    assert [out[k].dtype for k in INPUT_NAMES] == [np.int64, np.int64, np.float32, np.bool_]
    np.testing.assert_array_equal(out["items"], [[5, 6, 0], [0, 0, 0], [7, 8, 9]])
    np.testing.assert_array_equal(out["event_types"], [[2, 3, 0], [0, 0, 0], [3, 3, 2]])
    np.testing.assert_array_equal(
        out["dense"],
        [
            [[1, 2, 3], [4, 5, 6], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[-1, -2, -3], [0.5, 0.25, 0.125], [7, 8, 9]],
        ],
    )
    np.testing.assert_array_equal(out["mask"], [[True, True, False], [False, False, False], [True, True, True]])


def test_pad_batch_width_at_least_one() -> None:
    out = pad_batch([encoded([], [], []), encoded([], [], [])])
    assert out["items"].shape == (2, 1) and out["dense"].shape == (2, 1, 3)
    assert not out["mask"].any() and not out["items"].any() and not out["dense"].any()
    empty = pad_batch([])
    assert [empty[k].shape for k in INPUT_NAMES] == [(0, 1), (0, 1), (0, 1, 3), (0, 1)]


def test_pad_batch_of_encodings() -> None:
    pre = make_pre()
    one = pre.encode(["a", "b", "c"], [T, T + 1, T + 2], ["view", "click", "view"])
    two = pre.encode(["c"], [T], ["click"])
    out = pad_batch([one, two])
    np.testing.assert_array_equal(out["items"], [[2, 3, 4], [4, PAD, PAD]])
    np.testing.assert_array_equal(out["mask"], [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(out["dense"][0], one.dense)
    np.testing.assert_array_equal(out["dense"][1, :1], two.dense)


# -- digest --------------------------------------------------------------------------------


def test_digest() -> None:
    pre = make_pre()
    base = [
        {"item_id": "a", "timestamp": T, "event_type": "view", "dwell_time": 3},
        {"item_id": "b", "timestamp": T + 60, "event_type": "click"},
    ]
    digest = pre.encode_events(base).digest()
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert pre.encode_events([dict(e) for e in base]).digest() == digest
    assert pre.encode_events(list(reversed(base))).digest() == digest  # same events, other input order
    changed = [
        [base[0], {**base[1], "item_id": "c"}],
        [base[0], {**base[1], "event_type": "view"}],
        [base[0], {**base[1], "timestamp": T + 61}],
        [{**base[0], "dwell_time": 4}, base[1]],
        [base[0]],
        [*base, {"item_id": "a", "timestamp": T + 60, "event_type": "click"}],
    ]
    digests = [pre.encode_events(events).digest() for events in changed]
    assert digest not in digests
    assert len(set(digests)) == len(digests)


def test_digest_of_equal_encodings() -> None:
    """Digest depends on the encoded arrays only: two unknown items encode, and hash, alike."""
    pre = make_pre()
    one = pre.encode(["zz", "a"], [T, T + 5], ["view", "view"])
    two = pre.encode(["yy", "a"], [T, T + 5], ["view", "view"])
    assert one.digest() == two.digest()
    a = encoded([2, 3], [2, 2], [[0, 0, 0], [1, 1, 1]])
    b = encoded([2, 3], [2, 2], [[0, 0, 0], [1, 1, 1]])
    assert a.digest() == b.digest()
    assert encoded([2], [2], [[0, 0, 0]]).digest() != a.digest()


# -- real data -----------------------------------------------------------------------------


def test_ml100k_every_user(data_dir: Path) -> None:
    """Every ml-100k user encodes to its newest min(50, n) events, all known, all finite."""
    histories = user_histories(load_events(data_dir / "ml-100k", "movielens"))
    assert len(histories) == 943
    pre = Preprocessor.fit(histories, max_len=50)
    assert len(pre.item_ids) == 1682
    index = {item: i + NUM_RESERVED for i, item in enumerate(pre.item_ids)}
    for h in histories:
        enc = pre.encode(h.item_ids, h.seconds, h.event_types, h.dwell)
        n = len(h)
        assert n >= 20
        assert enc.length == min(50, n), h.user_id
        assert enc.dense.shape == (min(50, n), 3)
        assert np.isfinite(enc.dense).all(), h.user_id
        assert enc.n_unknown == 0
        assert (enc.event_types >= NUM_RESERVED).all()
        np.testing.assert_array_equal(enc.items, [index[str(i)] for i in h.item_ids[-50:]], err_msg=h.user_id)


# -- no torch in the service ---------------------------------------------------------------

NO_TORCH = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch
    except ImportError:
        pass
    else:
        sys.exit("the torch blocker did not work")

    import model.features
    import model.bundle
    import app.main

    if "torch" in sys.modules or any(name.startswith("torch.") for name in sys.modules):
        sys.exit("torch was imported")
    """
)


def test_service_imports_without_torch(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH], cwd=repo_root, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
