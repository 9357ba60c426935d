"""Raw behavior events -> model input arrays. The one preprocessing path.

Training, evaluation and the service all call `Preprocessor.encode` and
`pad_batch`; nothing else turns events into model inputs. numpy only: the
service imports this module without torch.

Timestamps: a number below 1e11 is unix seconds, a number at or above 1e11 is
unix milliseconds (1e11 s is the year 5138, while 1990 in ms is 6.3e11, so the
two ranges never overlap); a string is ISO-8601 (no zone means UTC). Anything
NaN, infinite, negative or outside 1990-01-01..2100-01-01 is rejected.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

PREPROCESS_VERSION = 2

# Reserved indices, shared by items and event types.
PAD = 0  # padding position (mask is False there)
UNKNOWN = 1  # item not in the training vocabulary / event type not seen in training
NUM_RESERVED = 2

MS_THRESHOLD = 1e11
MIN_TS = 631152000.0  # 1990-01-01T00:00:00Z
MAX_TS = 4102444800.0  # 2100-01-01T00:00:00Z

# Dense per-event features, in column order of the `dense` input. Each depends
# only on the event itself and the events before it in the kept window, so the
# features of a prefix are the prefix of the features (the model is trained on
# all prefixes in one pass): log_gap = log1p(seconds since the previous event,
# 0 for the first), log_span = log1p(seconds since the first kept event),
# dwell = log1p(dwell seconds), each standardised with training statistics.
DENSE_FEATURES = ("log_gap", "log_span", "dwell")

# ONNX input names, in the order the exported graph declares them.
INPUT_NAMES = ("items", "event_types", "dense", "mask")
OUTPUT_NAME = "embedding"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class EventError(ValueError):
    """A raw event that cannot be encoded; `index` and `field` locate it."""

    def __init__(self, index: int, field: str | None, message: str) -> None:
        # field None: the event itself is at fault (not an object)
        super().__init__(f"event {index}: {field}: {message}" if field else f"event {index}: {message}")
        self.index = index
        self.field = field
        self.message = message
        self.sequence: int | None = None  # which history, when many are encoded at once


def _check_range(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError("timestamp must be a finite number")
    if seconds < 0:
        raise ValueError("timestamp must not be negative")
    if not MIN_TS <= seconds < MAX_TS:
        raise ValueError("timestamp must lie between 1990-01-01 and 2100-01-01")
    return seconds


def timestamp_to_seconds(value: Any) -> float:
    """One timestamp (unix s, unix ms or ISO-8601 string) -> unix seconds."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or an ISO-8601 string, not a boolean")
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise ValueError("timestamp must lie between 1990-01-01 and 2100-01-01") from None
        if math.isfinite(number) and number >= MS_THRESHOLD:
            number /= 1000.0
        return _check_range(number)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp string is not ISO-8601: {text[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _check_range(parsed.timestamp())
    raise ValueError("timestamp must be a number or an ISO-8601 string")


def unix_to_seconds(values: npt.ArrayLike, unit: str = "auto") -> npt.NDArray[np.float64]:
    """A column of unix times -> seconds; `unit` is 's', 'ms' or 'auto' (the rule above)."""
    raw = np.asarray(values, dtype=np.float64)
    array = raw
    if unit == "ms":
        array = array / 1000.0
    elif unit == "auto":
        array = np.where(array >= MS_THRESHOLD, array / 1000.0, array)
    elif unit != "s":
        raise ValueError(f"unknown time unit {unit!r}; use 's', 'ms' or 'auto'")
    bad = ~np.isfinite(array) | (array < MIN_TS) | (array >= MAX_TS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"row {row}: timestamp {float(raw[row])!r} is not a unix time between 1990 and 2100 (check the time unit)"
        )
    return array


@dataclass(frozen=True)
class Encoded:
    """One history as model inputs, oldest event first, at most max_len long."""

    items: IntArray  # (L,)
    event_types: IntArray  # (L,)
    dense: FloatArray  # (L, len(DENSE_FEATURES))
    n_unknown: int

    @property
    def length(self) -> int:
        return int(self.items.shape[0])

    def digest(self) -> str:
        """Stable hash of the encoded input: equal histories give equal digests."""
        h = hashlib.blake2b(digest_size=16)
        for array in (self.items, self.event_types, self.dense):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(str(self.length).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float

    def apply(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (values - self.mean) / self.std

    @classmethod
    def fit(cls, values: npt.NDArray[np.float64]) -> Stats:
        if values.size == 0:
            return cls(0.0, 1.0)
        std = float(values.std())
        return cls(float(values.mean()), std if std > 1e-6 else 1.0)


@dataclass
class Preprocessor:
    """Everything needed to encode raw events exactly as training did."""

    max_len: int
    item_ids: list[str]  # item_ids[i] has index i + NUM_RESERVED
    event_types: list[str]  # event_types[i] has index i + NUM_RESERVED
    gap_stats: Stats = field(default_factory=lambda: Stats(0.0, 1.0))
    span_stats: Stats = field(default_factory=lambda: Stats(0.0, 1.0))
    dwell_stats: Stats = field(default_factory=lambda: Stats(0.0, 1.0))
    version: int = PREPROCESS_VERSION

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError("max_len must be at least 1")
        self._item_index = {item: i + NUM_RESERVED for i, item in enumerate(self.item_ids)}
        self._type_index = {kind: i + NUM_RESERVED for i, kind in enumerate(self.event_types)}

    @property
    def num_items(self) -> int:
        """Rows of the item embedding table, reserved indices included."""
        return len(self.item_ids) + NUM_RESERVED

    @property
    def num_event_types(self) -> int:
        return len(self.event_types) + NUM_RESERVED

    def item_index(self, item_id: str) -> int:
        return self._item_index.get(item_id, UNKNOWN)

    @classmethod
    def fit(cls, histories: Iterable[Any], max_len: int) -> Preprocessor:
        """Vocabulary, type map and feature statistics from training histories.

        Each history has time-sorted columns `item_ids`, `seconds`, `event_types`,
        `dwell` (as `model.data.History`). Items keep their order of first
        appearance, so the vocabulary is deterministic. Statistics are taken over
        the newest max_len events of each history, the windows the model sees.
        """
        items: dict[str, None] = {}
        kinds: dict[str, None] = {}
        gaps: list[npt.NDArray[np.float64]] = []
        spans: list[npt.NDArray[np.float64]] = []
        dwells: list[npt.NDArray[np.float64]] = []
        for h in histories:
            items.update(dict.fromkeys(str(i) for i in h.item_ids))
            kinds.update(dict.fromkeys(str(t) for t in h.event_types))
            seconds = np.asarray(h.seconds, dtype=np.float64)[-max_len:]
            dwell = np.asarray(h.dwell, dtype=np.float64)[-max_len:]
            if seconds.shape[0]:
                gaps.append(np.log1p(np.diff(seconds, prepend=seconds[0])))
                spans.append(np.log1p(seconds - seconds[0]))
                dwells.append(np.log1p(dwell[~np.isnan(dwell)]))

        def joined(parts: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
            return np.concatenate(parts) if parts else np.zeros(0)

        return cls(
            max_len=max_len,
            item_ids=list(items),
            event_types=sorted(kinds),
            gap_stats=Stats.fit(joined(gaps)),
            span_stats=Stats.fit(joined(spans)),
            dwell_stats=Stats.fit(joined(dwells)),
        )

    # -- encoding ---------------------------------------------------------

    def encode(
        self,
        item_ids: Sequence[str],
        seconds: npt.ArrayLike,
        event_types: Sequence[str],
        dwell: npt.ArrayLike | None = None,
    ) -> Encoded:
        """Columns of one history (unix seconds, dwell NaN = missing) -> Encoded.

        Stable sort by time (ties keep input order), keep the newest max_len.
        """
        ts = np.asarray(seconds, dtype=np.float64)
        n = ts.shape[0]
        if len(item_ids) != n or len(event_types) != n:
            raise ValueError("item_ids, seconds and event_types must have equal length")
        dw = np.full(n, np.nan) if dwell is None else np.asarray(dwell, dtype=np.float64)
        if dw.shape != (n,):
            raise ValueError("dwell must have one value (NaN = missing) per event")
        labels = [str(i) for i in item_ids]  # an integer id means its decimal string
        (encoded,) = self._encode_flat(labels, ts, [str(k) for k in event_types], dw, [n])
        return encoded

    def _encode_flat(
        self,
        item_ids: Sequence[str],
        seconds: npt.NDArray[np.float64],
        event_types: Sequence[str],
        dwell: npt.NDArray[np.float64],
        lengths: Sequence[int],
    ) -> list[Encoded]:
        """Many histories, their columns laid end to end (`lengths` events each) -> one Encoded each.

        One pass of numpy calls for all of them: per history, the fixed cost of a
        dozen small numpy calls would outweigh the work on 50 events.
        """
        if not lengths:
            return []
        if len(lengths) == 1:  # one history (a single-sequence request): no grouping to do
            order = np.argsort(seconds, kind="stable")[-self.max_len :]
            kept_sizes = np.array([order.shape[0]])
        else:
            sizes = np.asarray(lengths, dtype=np.int64)
            # Stable sort by (history, time): ties in time keep input order.
            order = np.lexsort((seconds, np.repeat(np.arange(sizes.shape[0]), sizes)))
            first = np.cumsum(sizes) - sizes  # where each history starts in `order`
            kept_sizes = np.minimum(sizes, self.max_len)
            rank = np.arange(order.shape[0]) - np.repeat(first, sizes)  # position within its history
            order = order[rank >= np.repeat(sizes - kept_sizes, sizes)]  # the newest max_len of each
        items = _lookup(self._item_index, item_ids)[order]
        types = _lookup(self._type_index, event_types)[order]
        dense = self._dense(seconds[order], dwell[order], kept_sizes)
        history_of_kept = np.repeat(np.arange(len(lengths)), kept_sizes)
        counts = np.bincount(history_of_kept[items == UNKNOWN], minlength=len(lengths)).tolist()
        ends = np.cumsum(kept_sizes).tolist()
        return [
            Encoded(items[start:end], types[start:end], dense[start:end], n_unknown)
            for start, end, n_unknown in zip([0, *ends[:-1]], ends, counts, strict=True)
        ]

    def dense_features(self, seconds: npt.NDArray[np.float64], dwell: npt.NDArray[np.float64]) -> FloatArray:
        """(L,) time-sorted seconds and dwell (NaN = missing) -> (L, len(DENSE_FEATURES))."""
        return self._dense(seconds, dwell, np.array([seconds.shape[0]]))

    def _dense(
        self, seconds: npt.NDArray[np.float64], dwell: npt.NDArray[np.float64], lengths: npt.NDArray[np.int64]
    ) -> FloatArray:
        """dense_features of histories laid end to end, each time-sorted, `lengths` events each."""
        dense = np.zeros((seconds.shape[0], len(DENSE_FEATURES)), dtype=np.float32)
        if seconds.shape[0]:
            lengths = lengths[lengths > 0]  # an empty history has no events to mark
            starts = np.cumsum(lengths) - lengths
            previous = np.empty_like(seconds)
            previous[1:] = seconds[:-1]
            previous[starts] = seconds[starts]  # the first event of a history has no gap
            dense[:, 0] = self.gap_stats.apply(np.log1p(seconds - previous))
            dense[:, 1] = self.span_stats.apply(np.log1p(seconds - np.repeat(seconds[starts], lengths)))
            # Missing dwell is encoded as the training mean (0 after scaling).
            missing = np.isnan(dwell)
            dense[:, 2] = np.where(missing, 0.0, self.dwell_stats.apply(np.log1p(np.where(missing, 0.0, dwell))))
        return dense

    def encode_events(self, events: Sequence[Mapping[str, Any] | Any]) -> Encoded:
        """Raw events (dicts, or objects with the same attributes) -> Encoded; EventError names a bad one.

        An event has `item_id` and `event_type` (a non-empty string of at most
        MAX_LABEL characters, or an integer, read as its decimal string),
        `timestamp` (see timestamp_to_seconds) and optional `dwell_time` (a number
        >= 0, or None). This is the only check of raw events: the service's schema
        only requires a list of objects.
        """
        (encoded,) = self.encode_event_lists([events])
        return encoded

    def encode_event_lists(self, histories: Sequence[Sequence[Mapping[str, Any] | Any]]) -> list[Encoded]:
        """encode_events of each history, in one pass; EventError names the history (`sequence`) and event.

        The common case (dicts whose timestamps are numbers) is checked column by
        column over all histories at once; anything else goes history by
        history, event by event, which also finds the first bad event.
        """
        lengths = [len(events) for events in histories]
        columns = _fast_columns([event for events in histories for event in events])
        if columns is None:
            parts = []
            for sequence, events in enumerate(histories):
                try:
                    parts.append(_fast_columns(events) or _checked_columns(events))
                except EventError as exc:
                    exc.sequence = sequence
                    raise
            columns = (
                [i for part in parts for i in part[0]],
                np.concatenate([part[1] for part in parts]) if parts else np.zeros(0),
                [k for part in parts for k in part[2]],
                np.concatenate([part[3] for part in parts]) if parts else np.zeros(0),
            )
        items, seconds, kinds, dwell = columns
        return self._encode_flat(items, seconds, kinds, dwell, lengths)

    # -- persistence (plain JSON, no pickle) --------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "max_len": self.max_len,
            "event_types": self.event_types,
            "item_ids": self.item_ids,
            "stats": {
                "log_gap": [self.gap_stats.mean, self.gap_stats.std],
                "log_span": [self.span_stats.mean, self.span_stats.std],
                "dwell": [self.dwell_stats.mean, self.dwell_stats.std],
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessor:
        if data.get("version") != PREPROCESS_VERSION:
            raise ValueError(
                f"preprocessing version {data.get('version')} is not supported (expected {PREPROCESS_VERSION})"
            )
        stats = data["stats"]
        return cls(
            max_len=int(data["max_len"]),
            item_ids=[str(i) for i in data["item_ids"]],
            event_types=[str(t) for t in data["event_types"]],
            gap_stats=Stats(*stats["log_gap"]),
            span_stats=Stats(*stats["log_span"]),
            dwell_stats=Stats(*stats["dwell"]),
        )


MAX_LABEL = 256  # characters of an item id or event type
Columns = tuple[list[str], npt.NDArray[np.float64], list[str], npt.NDArray[np.float64]]


_STR = frozenset({str})
_NUMBER = frozenset({int, float})
_NUMBER_OR_NONE = frozenset({int, float, type(None)})


def _label(value: Any) -> str | None:
    """An item id or event type as its string, or None when it is not a valid label."""
    if type(value) is int:
        value = str(value)
    elif type(value) is not str:
        return None
    return value if 0 < len(value) <= MAX_LABEL else None


def _labels(values: list[Any]) -> list[str] | None:
    """Every value as a label, or None when one is not valid (the checked path then names it)."""
    if _STR.issuperset(map(type, values)):  # the common case, checked without a Python call per value
        if values and (min(map(len, values)) == 0 or max(map(len, values)) > MAX_LABEL):
            return None
        return values
    labels = [_label(v) for v in values]
    return None if None in labels else labels  # type: ignore[return-value]  # no None left


def _finite_number(value: Any) -> float | None:
    """A finite int or float (not a bool) as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _fast_columns(events: Sequence[Any]) -> Columns | None:
    """Columns of valid dict events with numeric timestamps, or None to take the checked path."""
    try:
        raw_items = [e["item_id"] for e in events]
        raw_kinds = [e["event_type"] for e in events]
        raw_times = [e["timestamp"] for e in events]
        raw_dwell = [e.get("dwell_time") for e in events]
    except (KeyError, TypeError, AttributeError):
        return None
    items = _labels(raw_items)
    kinds = _labels(raw_kinds)
    if items is None or kinds is None:
        return None
    # Exact types (type(), not isinstance): a bool is not a number here.
    if not _NUMBER.issuperset(map(type, raw_times)):
        return None
    try:
        seconds = np.array(raw_times, dtype=np.float64)
    except OverflowError:  # an integer with hundreds of digits
        return None
    seconds = np.where(seconds >= MS_THRESHOLD, seconds / 1000.0, seconds)
    if not ((seconds >= MIN_TS) & (seconds < MAX_TS)).all():  # also false for NaN and huge integers
        return None
    missing = raw_dwell.count(None)
    if missing == len(raw_dwell):
        dwell = np.full(len(raw_dwell), np.nan)
    else:
        if not _NUMBER_OR_NONE.issuperset(map(type, raw_dwell)):
            return None
        try:
            dwell = np.array(raw_dwell, dtype=np.float64)  # None -> NaN
        except OverflowError:
            return None
        nan = np.isnan(dwell)
        # A NaN that was sent (not a None) is an error, named by the checked path.
        if int(nan.sum()) != missing or not (nan | (np.isfinite(dwell) & (dwell >= 0))).all():
            return None
    return items, seconds, kinds, dwell


def _checked_columns(events: Sequence[Any]) -> Columns:
    """Columns of the events, checked one by one; raises EventError at the first bad one."""
    items: list[str] = []
    kinds: list[str] = []
    seconds: list[float] = []
    dwell: list[float] = []
    for index, event in enumerate(events):
        if isinstance(event, Mapping):
            get = event.get
        elif event is None or isinstance(event, (str, bytes, int, float, list, tuple)):
            raise EventError(index, None, "must be an object with item_id, timestamp and event_type")
        else:
            get = lambda key, e=event: getattr(e, key, None)  # noqa: E731
        for field_name, out in (("item_id", items), ("event_type", kinds)):
            value = get(field_name)
            label = _label(value)
            if label is None:
                if value is None:
                    raise EventError(index, field_name, "field required")
                raise EventError(index, field_name, f"must be a string of 1 to {MAX_LABEL} characters or an integer")
            out.append(label)
        value = get("timestamp")
        if value is None:
            raise EventError(index, "timestamp", "field required")
        try:
            seconds.append(timestamp_to_seconds(value))
        except ValueError as exc:
            raise EventError(index, "timestamp", str(exc)) from None
        value = get("dwell_time")
        if value is None:
            dwell.append(math.nan)
        else:
            number = _finite_number(value)
            if number is None or number < 0:
                raise EventError(index, "dwell_time", "must be a finite number >= 0")
            dwell.append(number)
    return items, np.array(seconds, dtype=np.float64), kinds, np.array(dwell, dtype=np.float64)


def _lookup(index: dict[str, int], labels: Sequence[str]) -> IntArray:
    """Labels -> indices (UNKNOWN when absent), without a Python-level call per label."""
    return np.fromiter(map(index.get, labels, repeat(UNKNOWN)), dtype=np.int64, count=len(labels))


def pad_batch(batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest history (at least 1 column), with a mask.

    Keys are the ONNX input names. An empty history is a row with an all-False
    mask; the model answers it with its learned "no history" vector.
    """
    width = max([1, *(e.length for e in batch)])
    size = len(batch)
    items = np.zeros((size, width), dtype=np.int64)
    types = np.zeros((size, width), dtype=np.int64)
    dense = np.zeros((size, width, len(DENSE_FEATURES)), dtype=np.float32)
    mask = np.zeros((size, width), dtype=bool)
    for row, e in enumerate(batch):
        n = e.length
        items[row, :n] = e.items
        types[row, :n] = e.event_types
        dense[row, :n] = e.dense
        mask[row, :n] = True
    return {"items": items, "event_types": types, "dense": dense, "mask": mask}
