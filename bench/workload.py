"""Benchmark inputs built from real histories: raw API events and request bodies.

A cache-miss workload needs every sequence to differ after preprocessing (the
cache key is `Encoded.digest()`), so it draws distinct crops: a crop is the
`length` events of one user that end at position `end`. Users rate each item
once, so two crops differ whenever (user, end, length) differs, as long as no
crop is longer than the model's window (the service keeps only the newest
`max_len` events, so a longer crop would collide with a shorter one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

Event = dict[str, Any]

MIN_CROP = 5  # shortest crop: a few events, like a new user


@dataclass(frozen=True)
class Crop:
    user: int  # index into the histories
    end: int  # exclusive
    length: int


def api_events(history: Any, start: int = 0, end: int | None = None) -> list[Event]:
    """Events start..end-1 of a history in the `/embed` request format."""
    stop = len(history.item_ids) if end is None else end
    events = []
    for i in range(start, stop):
        seconds = float(history.seconds[i])
        event: Event = {
            "item_id": str(history.item_ids[i]),
            "timestamp": int(seconds) if seconds.is_integer() else seconds,
            "event_type": str(history.event_types[i]),
        }
        dwell = float(history.dwell[i])
        if not np.isnan(dwell):
            event["dwell_time"] = dwell
        events.append(event)
    return events


def distinct_crops(histories: Sequence[Any], count: int, max_len: int, seed: int = 0) -> list[Crop]:
    """`count` different crops (at most max_len events each), users and positions at random."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(h.item_ids) for h in histories])
    # Crops of one user: every end in MIN_CROP..n and every length MIN_CROP..min(max_len, end).
    available = int(sum(_crops_of(int(n), max_len) for n in lengths))
    if count > available:
        raise ValueError(f"asked for {count} distinct crops, the histories hold only {available}")
    seen: set[tuple[int, int, int]] = set()
    out: list[Crop] = []
    eligible = np.flatnonzero(lengths >= MIN_CROP)
    while len(out) < count:
        user = int(rng.choice(eligible))
        end = int(rng.integers(MIN_CROP, lengths[user] + 1))
        length = int(rng.integers(MIN_CROP, min(max_len, end) + 1))
        key = (user, end, length)
        if key not in seen:
            seen.add(key)
            out.append(Crop(*key))
    return out


def _crops_of(n: int, max_len: int) -> int:
    return sum(min(max_len, end) - MIN_CROP + 1 for end in range(MIN_CROP, n + 1))


def crop_events(histories: Sequence[Any], crops: Sequence[Crop]) -> list[list[Event]]:
    return [api_events(histories[c.user], c.end - c.length, c.end) for c in crops]


def request_bodies(sequences: Sequence[list[Event]], per_request: int, encoding: str = "float") -> list[bytes]:
    """Consecutive groups of `per_request` sequences -> serialised `/embed` bodies (a short tail is dropped)."""
    bodies = []
    for first in range(0, len(sequences) - per_request + 1, per_request):
        group = sequences[first : first + per_request]
        body = {
            "sequences": [{"id": f"s{first + i}", "events": events} for i, events in enumerate(group)],
            "encoding": encoding,
        }
        bodies.append(orjson.dumps(body))
    return bodies


def write_bodies(path: Path, bodies: Sequence[bytes]) -> Path:
    """One body per line (orjson never writes a raw newline inside a document)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path
