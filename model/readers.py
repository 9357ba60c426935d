"""Event-log readers: real log files -> one events DataFrame, read in chunks.

Every reader returns the same schema (`EVENT_COLUMNS`): `user_id`, `item_id` and
`event_type` as pandas categoricals of strings (a huge log is a few integer code
arrays, not millions of Python objects), `timestamp` as float64 unix seconds and
`dwell_time` as float64 seconds (NaN = missing). Each chunk is converted as it
is read, so memory holds the compact frame plus one raw chunk.

Timestamps go through `model.features` (`unix_to_seconds`, `timestamp_to_seconds`):
a number below 1e11 is unix seconds, at or above it unix milliseconds, a string is
ISO-8601; anything outside 1990..2100 fails with the file and line that hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from model.features import timestamp_to_seconds, unix_to_seconds

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "dwell_time")
STRING_COLUMNS = ("user_id", "item_id", "event_type")
TIME_UNITS = ("auto", "s", "ms", "iso")
DEFAULT_EVENT_TYPE = "event"  # the type of every event when a log has no type column


class DataError(ValueError):
    """A log that cannot be read; the message names the file (and line)."""


def require_path(path: str | Path, what: str = "event log") -> Path:
    resolved = Path(path)
    if not resolved.exists():
        raise DataError(f"{what} not found: {resolved}")
    return resolved


# -- schema -------------------------------------------------------------------


def events_frame(user_id: Any, item_id: Any, timestamp: Any, event_type: Any, dwell_time: Any = None) -> pd.DataFrame:
    """Columns (array-likes) -> a frame in the events schema; timestamp already in seconds."""
    seconds = np.asarray(timestamp, dtype=np.float64)
    n = seconds.shape[0]
    dwell = np.full(n, np.nan) if dwell_time is None else np.asarray(dwell_time, dtype=np.float64)
    if isinstance(event_type, str):  # one type for every event: codes only, no string per row
        only = pd.Index([event_type], dtype="str")
        event_type = pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=only)
    return pd.DataFrame(
        {
            "user_id": _categorical(user_id),
            "item_id": _categorical(item_id),
            "timestamp": seconds,
            "event_type": _categorical(event_type),
            "dwell_time": dwell,
        }
    )


def _categorical(values: Any) -> pd.Categorical:
    if isinstance(values, pd.Categorical) and values.categories.dtype == "str":
        return values
    return pd.Categorical(pd.Series(np.asarray(values), dtype="str"))


def concat_frames(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Chunks in the events schema -> one frame; categories are merged (sorted), not widened to objects."""
    parts = list(frames)
    if not parts:
        return events_frame([], [], [], [])
    columns: dict[str, Any] = {}
    for name in EVENT_COLUMNS:
        if name in STRING_COLUMNS:
            columns[name] = union_categoricals([p[name].array for p in parts], sort_categories=True)
        else:
            columns[name] = np.concatenate([p[name].to_numpy(dtype=np.float64) for p in parts])
    return pd.DataFrame(columns)


# -- value conversion with locations ------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Names a row of a chunk: the file and its line (1-based, header counted) or row."""

    path: Path
    first_row: int  # 0-based data row of the chunk's first row
    header_lines: int  # lines before the first data row; -1: name rows, not lines (Parquet)

    def __call__(self, row: int) -> str:
        absolute = self.first_row + row
        if self.header_lines < 0:
            return f"{self.path}: row {absolute}"
        return f"{self.path}: line {absolute + self.header_lines + 1}"


def to_seconds(values: pd.Series, unit: str, where: Callable[[int], str]) -> np.ndarray:
    """A raw time column -> unix seconds; a bad value fails naming its line."""
    if unit not in TIME_UNITS:
        raise DataError(f"unknown time unit {unit!r}; use one of {', '.join(TIME_UNITS)}")
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        values = _datetime_to_unix(values)
        unit = "s"
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    if unit == "iso" or not numeric:
        if unit in ("s", "ms"):
            as_numbers = pd.to_numeric(values, errors="coerce")
            bad = as_numbers.isna() & values.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{where(row)}: timestamp {_show(values.iloc[row])} is not a number (time unit {unit!r})"
                )
            return to_seconds(as_numbers, unit, where)
        return _parse_each(values, iso_only=unit == "iso", where=where)
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        return unix_to_seconds(array, unit)
    except ValueError:
        row = _first_failing(array, unit)
        raise DataError(
            f"{where(row)}: timestamp {_show(values.iloc[row])} is not a unix time between 1990 and 2100 "
            f"(time unit {unit!r})"
        ) from None


def _datetime_to_unix(values: pd.Series) -> pd.Series:
    """A datetime column (Parquet timestamp) -> unix seconds; no zone means UTC, NaT -> NaN."""
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return (values - pd.Timestamp(0)) / pd.Timedelta(seconds=1)


def _first_failing(array: np.ndarray, unit: str) -> int:
    """Index of the first value `unix_to_seconds` rejects (bisection keeps it vectorised)."""

    def fails(n: int) -> bool:
        try:
            unix_to_seconds(array[:n], unit)
        except ValueError:
            return True
        return False

    lo, hi = 0, array.shape[0]  # the prefix of length hi fails, of length lo does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return lo


def _parse_each(values: pd.Series, iso_only: bool, where: Callable[[int], str]) -> np.ndarray:
    """Text times (ISO-8601, or numbers written as text) -> seconds, parsing each distinct value once."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    missing = np.flatnonzero(codes < 0)
    parsed = np.empty(len(uniques), dtype=np.float64)
    for k, value in enumerate(uniques):
        try:
            parsed[k] = timestamp_to_seconds(value if iso_only else _number_or_text(value))
        except ValueError as exc:
            row = int(np.argmax(codes == k))
            if missing.size and missing[0] < row:
                break
            raise DataError(f"{where(row)}: timestamp {_show(value)}: {exc}") from None
    if missing.size:
        raise DataError(f"{where(int(missing[0]))}: timestamp is missing")
    return parsed[codes]


def _show(value: Any) -> str:
    """A raw value as it reads in the file: 12, nan, 'yesterday' (no numpy wrappers)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def to_dwell(values: pd.Series | None, n: int, where: Callable[[int], str]) -> np.ndarray:
    """A raw dwell column -> float64 seconds >= 0, NaN where the log leaves it empty."""
    if values is None:
        return np.full(n, np.nan)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = (np.isnan(numbers) & values.notna().to_numpy()) | np.isinf(numbers) | (numbers < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where(row)}: dwell_time {_show(values.iloc[row])} must be a number >= 0 (or empty)")
    return numbers


# -- column mapping -------------------------------------------------------------

# Roles of a generic log's columns, with the column each defaults to when the file
# has a header. Without a header and without any column given, the defaults are
# positions 0, 1, 2 (user, item, time), then 3 (type) and 4 (dwell) when the file
# has that many columns.
ROLES = ("user", "item", "time", "type", "dwell")
DEFAULT_NAMES = {
    "user": "user_id",
    "item": "item_id",
    "time": "timestamp",
    "type": "event_type",
    "dwell": "dwell_time",
}
OPTIONAL_ROLES = ("type", "dwell")

Column = str | int


def parse_column(text: str | int | None) -> Column | None:
    """A command-line column: digits are a 0-based position, anything else a name."""
    if text is None or isinstance(text, int):
        return text
    return int(text) if text.strip().isdigit() else text


def resolve_columns(
    names: list[str], header: bool, columns: Mapping[str, Column | None] | None, path: Path
) -> dict[str, int]:
    """Role -> 0-based position in the file, from names or positions; unknown roles fail."""
    given = dict(columns or {})
    unknown = set(given) - set(ROLES)
    if unknown:
        raise DataError(f"unknown column role(s) {sorted(unknown)}; use {', '.join(ROLES)}")
    # Without a header, positions are only guessed when no column is given at all: a
    # partial mapping must not pick up some unrelated column as type or dwell.
    guess_positions = not header and all(choice is None for choice in given.values())
    positions: dict[str, int] = {}
    for position, role in enumerate(ROLES):
        choice = given.get(role)
        if choice is None:
            if header and DEFAULT_NAMES[role] in names:
                positions[role] = names.index(DEFAULT_NAMES[role])
                continue
            if guess_positions and position < len(names):
                positions[role] = position
                continue
            if role in OPTIONAL_ROLES:
                continue
            raise DataError(f"{path}: no {role} column; pass it (name or 0-based position), file columns: {names}")
        if isinstance(choice, int):
            if not 0 <= choice < len(names):
                raise DataError(f"{path}: {role} column {choice} is out of range (the file has {len(names)})")
            positions[role] = choice
        elif header and choice in names:
            positions[role] = names.index(choice)
        else:
            where = f"columns {names}" if header else "no header (give 0-based positions)"
            raise DataError(f"{path}: {role} column {choice!r} not found; {where}")
    return positions


def convert_chunk(
    raw: pd.DataFrame,
    positions: Mapping[str, int],
    unit: str,
    where: Callable[[int], str],
    type_map: Callable[[pd.Series], Any] | None = None,
) -> pd.DataFrame:
    """One raw chunk (columns by position) -> the events schema."""
    cols = list(raw.columns)

    def column(role: str) -> pd.Series | None:
        return raw[cols[positions[role]]] if role in positions else None

    user, item = column("user"), column("item")
    assert user is not None and item is not None
    for role, series in (("user", user), ("item", item)):
        if series.isna().any():
            row = int(np.flatnonzero(series.isna().to_numpy())[0])
            raise DataError(f"{where(row)}: {role} id is missing")
    time = column("time")
    assert time is not None
    kind = column("type")
    if kind is None:
        event_type: Any = DEFAULT_EVENT_TYPE
    else:
        if kind.isna().any():
            row = int(np.flatnonzero(kind.isna().to_numpy())[0])
            raise DataError(f"{where(row)}: event type is missing")
        event_type = type_map(kind) if type_map else kind
    return events_frame(
        user,
        item,
        to_seconds(time, unit, where),
        event_type,
        to_dwell(column("dwell"), len(raw), where),
    )


# -- file readers -----------------------------------------------------------------


def read_delimited(
    path: Path,
    *,
    sep: str,
    header: bool,
    columns: Mapping[str, Column | None] | None,
    time_unit: str,
    chunk_rows: int,
    type_map: Callable[[pd.Series], Any] | None = None,
) -> pd.DataFrame:
    """A delimited text log -> events frame, `chunk_rows` rows at a time."""
    if chunk_rows < 1:
        raise DataError("chunk_rows must be at least 1")
    try:
        probe = pd.read_csv(path, sep=sep, header=0 if header else None, nrows=1, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    names = [str(c) for c in probe.columns]
    positions = resolve_columns(names, header, columns, path)
    used = sorted(set(positions.values()))
    text_roles = {"user", "item", "type"} | ({"time"} if time_unit == "iso" else set())
    dtypes = {positions[r]: str for r in text_roles if r in positions}
    with pd.read_csv(
        path,
        sep=sep,
        header=0 if header else None,
        usecols=used,
        dtype=dtypes,
        chunksize=chunk_rows,
        keep_default_na=False,
        na_values=[""],
    ) as reader:  # closes the file when a bad row stops the read
        return concat_frames(_convert_chunks(reader, path, header, positions, time_unit, type_map))


def _convert_chunks(
    chunks: Iterator[pd.DataFrame],
    path: Path,
    header: bool,
    positions: Mapping[str, int],
    unit: str,
    type_map: Callable[[pd.Series], Any] | None,
) -> Iterator[pd.DataFrame]:
    first = 0
    compact = _compact(positions)
    for chunk in chunks:
        yield convert_chunk(chunk, compact, unit, Where(path, first, 1 if header else 0), type_map)
        first += len(chunk)


def _compact(positions: Mapping[str, int]) -> dict[str, int]:
    """Role -> index among the used columns (read_csv/iter_batches return them in file order)."""
    used = sorted(set(positions.values()))
    return {role: used.index(p) for role, p in positions.items()}


def read_parquet(
    path: Path,
    *,
    columns: Mapping[str, Column | None] | None,
    time_unit: str,
    chunk_rows: int,
) -> pd.DataFrame:
    """A Parquet log -> events frame, one record batch of `chunk_rows` rows at a time."""
    import pyarrow.parquet as pq

    if chunk_rows < 1:
        raise DataError("chunk_rows must be at least 1")
    file = pq.ParquetFile(path)
    names = list(file.schema_arrow.names)
    positions = resolve_columns(names, True, columns, path)
    used = sorted(set(positions.values()))
    compact = _compact(positions)

    def chunks() -> Iterator[pd.DataFrame]:
        first = 0
        for batch in file.iter_batches(batch_size=chunk_rows, columns=[names[p] for p in used]):
            raw = batch.to_pandas()
            for role in ("user", "item", "type"):
                if role in compact:
                    name = raw.columns[compact[role]]
                    raw[name] = raw[name].astype("str").where(raw[name].notna())
            yield convert_chunk(raw, compact, time_unit, Where(path, first, -1))
            first += len(raw)

    return concat_frames(chunks())


# -- known log formats --------------------------------------------------------------


def _unit(requested: str, native: str) -> str:
    return native if requested == "auto" else requested


def read_movielens(path: Path, *, time_unit: str = "auto", chunk_rows: int = 1_000_000) -> pd.DataFrame:
    """MovieLens `u.data` (or its folder): user, item, rating, unix seconds; tab-separated, no header.

    Each rating is one event at its time; rating r becomes event type `rating_r`.
    """
    if path.is_dir():
        path = require_path(path / "u.data", "MovieLens u.data")
    return read_delimited(
        path,
        sep="\t",
        header=False,
        columns={"user": 0, "item": 1, "type": 2, "time": 3},
        time_unit=_unit(time_unit, "s"),
        chunk_rows=chunk_rows,
        type_map=lambda ratings: "rating_" + ratings,
    )


def read_taobao(path: Path, *, time_unit: str = "auto", chunk_rows: int = 1_000_000) -> pd.DataFrame:
    """Taobao UserBehavior.csv: user, item, category, behavior (pv/cart/fav/buy), unix seconds; no header."""
    if path.is_dir():
        path = require_path(path / "UserBehavior.csv", "Taobao UserBehavior.csv")
    return read_delimited(
        path,
        sep=",",
        header=False,
        columns={"user": 0, "item": 1, "type": 3, "time": 4},
        time_unit=_unit(time_unit, "s"),
        chunk_rows=chunk_rows,
    )


def read_retailrocket(path: Path, *, time_unit: str = "auto", chunk_rows: int = 1_000_000) -> pd.DataFrame:
    """RetailRocket events.csv: header timestamp(ms),visitorid,event(view/addtocart/transaction),itemid,..."""
    if path.is_dir():
        path = require_path(path / "events.csv", "RetailRocket events.csv")
    return read_delimited(
        path,
        sep=",",
        header=True,
        columns={"user": "visitorid", "item": "itemid", "type": "event", "time": "timestamp"},
        time_unit=_unit(time_unit, "ms"),
        chunk_rows=chunk_rows,
    )
