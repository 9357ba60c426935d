"""Behavior event logs -> per-user, time-ordered histories.

`load_events` reads a log in one of the supported formats into the events
schema (see `model.readers`); `user_histories` splits it into one `History` per
user. `add_data_arguments` / `events_from_args` are the shared command-line
options of train, evaluate and bench.

Order: each history is sorted by timestamp with a stable sort, so events with
equal timestamps keep their order in the file. That is the order training and
the leave-one-out split use (the last event is the test target, the one before
it the validation target). Histories come in user_id order (string order).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.readers import (
    TIME_UNITS,
    DataError,
    parse_column,
    read_delimited,
    read_movielens,
    read_parquet,
    read_retailrocket,
    read_taobao,
    require_path,
)

FORMATS = ("movielens", "taobao", "retailrocket", "csv", "parquet", "synthetic")

__all__ = [
    "FORMATS",
    "DataError",
    "History",
    "add_data_arguments",
    "events_from_args",
    "load_events",
    "user_histories",
]


@dataclass(frozen=True)
class History:
    """One user's events, oldest first (stable by file order on equal timestamps)."""

    user_id: str
    item_ids: np.ndarray  # (n,) str
    seconds: np.ndarray  # (n,) float64 unix seconds, non-decreasing
    event_types: np.ndarray  # (n,) str
    dwell: np.ndarray  # (n,) float64 seconds, NaN = missing

    def __len__(self) -> int:
        return int(self.seconds.shape[0])


def load_events(
    path: str | Path | None,
    fmt: str,
    *,
    columns: dict[str, str | int | None] | None = None,
    sep: str | None = None,
    header: bool | None = None,
    time_unit: str = "auto",
    chunk_rows: int = 1_000_000,
    **synthetic: Any,
) -> pd.DataFrame:
    """Read an event log into the events schema (user_id, item_id, timestamp, event_type, dwell_time).

    `fmt` is one of FORMATS. `columns`, `sep` and `header` apply to `csv` (defaults:
    ",", a header row) and `parquet`; `columns` maps the roles user/item/time/type/dwell
    to a column name or 0-based position. `time_unit` is auto/s/ms/iso (auto: numbers
    below 1e11 are seconds, above milliseconds, text is ISO-8601; the known formats
    use their own unit). For `synthetic`, `path` is ignored and the keyword arguments
    go to `model.synthetic.synthetic_events`.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if time_unit not in TIME_UNITS:
        raise DataError(f"unknown time unit {time_unit!r}; use one of {', '.join(TIME_UNITS)}")
    if fmt == "synthetic":
        from model.synthetic import synthetic_events

        return synthetic_events(**synthetic)
    if synthetic:
        raise TypeError(f"unexpected arguments for format {fmt!r}: {sorted(synthetic)}")
    if path is None:
        raise DataError(f"format {fmt!r} needs a data path")
    source = require_path(path)
    if fmt == "movielens":
        return read_movielens(source, time_unit=time_unit, chunk_rows=chunk_rows)
    if fmt == "taobao":
        return read_taobao(source, time_unit=time_unit, chunk_rows=chunk_rows)
    if fmt == "retailrocket":
        return read_retailrocket(source, time_unit=time_unit, chunk_rows=chunk_rows)
    if source.is_dir():
        raise DataError(f"format {fmt!r} needs a file, not a folder: {source}")
    if fmt == "parquet":
        return read_parquet(source, columns=columns, time_unit=time_unit, chunk_rows=chunk_rows)
    return read_delimited(
        source,
        sep=sep or ",",
        header=True if header is None else header,
        columns=columns,
        time_unit=time_unit,
        chunk_rows=chunk_rows,
    )


def user_histories(df: pd.DataFrame) -> list[History]:
    """Events frame -> one History per user, in user_id order, each sorted by time (stable).

    One stable sort of the whole frame by (user, timestamp), then a split at the
    user boundaries: no Python loop over rows.
    """
    if df.empty:
        return []
    user_codes, users = pd.factorize(df["user_id"], sort=True)
    seconds = df["timestamp"].to_numpy(dtype=np.float64)
    order = np.lexsort((seconds, user_codes))  # lexsort is stable: ties keep file order
    sorted_users = user_codes[order]
    bounds = np.flatnonzero(np.diff(sorted_users)) + 1
    items = _strings(df["item_id"])[order]
    kinds = _strings(df["event_type"])[order]
    dwell = df["dwell_time"].to_numpy(dtype=np.float64)[order]
    seconds = seconds[order]
    user_names = np.asarray(users, dtype=str)
    starts = np.concatenate([[0], bounds])
    return [
        History(str(user_names[sorted_users[start]]), item_part, second_part, kind_part, dwell_part)
        for start, item_part, second_part, kind_part, dwell_part in zip(
            starts,
            np.split(items, bounds),
            np.split(seconds, bounds),
            np.split(kinds, bounds),
            np.split(dwell, bounds),
            strict=True,
        )
    ]


def _strings(column: pd.Series) -> np.ndarray:
    """A string column -> numpy str array, built from the categories, not per row."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = np.asarray(column.cat.categories, dtype=str)
        return categories[column.cat.codes.to_numpy()]
    return column.to_numpy(dtype=str)


# -- command line -------------------------------------------------------------------


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The event-log options shared by train, evaluate and bench."""
    group = parser.add_argument_group("event log")
    group.add_argument("--data", type=Path, help="log file or folder (not needed for --format synthetic)")
    group.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="log format (default: synthetic when --data is not given)",
    )
    group.add_argument("--sep", default=None, help="csv: field separator (default ',')")
    group.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="csv: the first line names the columns (default: yes)",
    )
    for role, default in (("user", "user_id"), ("item", "item_id"), ("time", "timestamp")):
        group.add_argument(f"--{role}-col", help=f"csv/parquet: {role} column, name or 0-based position ({default})")
    group.add_argument("--type-col", help="csv/parquet: event type column (event_type; absent: every event 'event')")
    group.add_argument("--dwell-col", help="csv/parquet: dwell seconds column (dwell_time; absent: no dwell)")
    group.add_argument(
        "--time-unit",
        choices=TIME_UNITS,
        default="auto",
        help="auto: numbers < 1e11 are unix s, larger unix ms, text ISO-8601",
    )
    group.add_argument("--synthetic-users", type=int, default=2000, help="synthetic: number of users")
    group.add_argument("--synthetic-items", type=int, default=3000, help="synthetic: number of items")
    group.add_argument("--seed", type=int, default=0, help="random seed (synthetic data and training)")


def events_from_args(args: argparse.Namespace) -> pd.DataFrame:
    """Read the log the options of `add_data_arguments` describe."""
    fmt = args.format
    if fmt is None:
        if args.data is not None:
            raise DataError("--format is required with --data")
        fmt = "synthetic"
    if fmt == "synthetic":
        return load_events(None, fmt, n_users=args.synthetic_users, n_items=args.synthetic_items, seed=args.seed)
    columns = {
        "user": parse_column(args.user_col),
        "item": parse_column(args.item_col),
        "time": parse_column(args.time_col),
        "type": parse_column(args.type_col),
        "dwell": parse_column(args.dwell_col),
    }
    return load_events(
        args.data,
        fmt,
        columns=columns,
        sep=args.sep,
        header=args.header,
        time_unit=args.time_unit,
    )
