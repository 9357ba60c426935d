"""Leave-one-out by time: last event = test target, the one before = validation.

Each history must be time-ordered (as `model.data.user_histories` returns it).
The training part of a user is everything before the validation target; the
validation input is that same part, the test input adds the validation event.
Users with fewer than 3 events go entirely to training and are not evaluated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def head(history: Any, n: int) -> Any:
    """The history's first n events (same type, every column cut)."""
    return dataclasses.replace(
        history,
        item_ids=history.item_ids[:n],
        seconds=history.seconds[:n],
        event_types=history.event_types[:n],
        dwell=history.dwell[:n],
    )


@dataclass(frozen=True)
class Target:
    """Predict `item_id` from `history` (the events strictly before it)."""

    history: Any
    item_id: str


@dataclass(frozen=True)
class LeaveOneOut:
    train: list[Any]  # every user's events before the validation target
    valid: list[Target]
    test: list[Target]


def leave_one_out(histories: Sequence[Any]) -> LeaveOneOut:
    train: list[Any] = []
    valid: list[Target] = []
    test: list[Target] = []
    for h in histories:
        n = len(h.item_ids)
        if n < 3:
            train.append(h)
            continue
        train.append(head(h, n - 2))
        valid.append(Target(head(h, n - 2), str(h.item_ids[n - 2])))
        test.append(Target(head(h, n - 1), str(h.item_ids[n - 1])))
    return LeaveOneOut(train, valid, test)
