"""Request and response bodies of the HTTP API.

The schema checks types and presence only. The value rules for events
(timestamp formats and range, dwell) live in `model.features`, applied when the
events are encoded, so training and serving cannot disagree about them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _int_to_str(value: Any) -> Any:
    # Item ids and event types are labels; a JSON integer id means the same label.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _timestamp_type(value: Any) -> Any:
    # One clear message instead of one per union member; the value rules are in model.features.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number (unix seconds or milliseconds) or an ISO-8601 string")
    return value


def _dwell_type(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError("must be a number of seconds")
    return value


Label = Annotated[str, BeforeValidator(_int_to_str), Field(min_length=1, max_length=256)]

EXAMPLE_REQUEST: dict[str, Any] = {
    "sequences": [
        {
            "id": "user-196",
            "events": [
                {"item_id": "242", "timestamp": 881250949, "event_type": "rating_3"},
                {"item_id": "393", "timestamp": 881251863, "event_type": "rating_4", "dwell_time": 12.5},
                {"item_id": "381", "timestamp": "1997-12-04T15:55:49Z", "event_type": "rating_4"},
            ],
        }
    ],
    "encoding": "float",
}


class Event(BaseModel):
    """One raw behavior event."""

    model_config = ConfigDict(extra="ignore")

    item_id: Label
    timestamp: Annotated[int | float | str, BeforeValidator(_timestamp_type)] = Field(
        description="unix seconds, unix milliseconds (>= 1e11) or an ISO-8601 string (no zone = UTC)"
    )
    event_type: Label
    dwell_time: Annotated[float | None, BeforeValidator(_dwell_type)] = Field(
        default=None, description="seconds spent, >= 0"
    )


class SequenceIn(BaseModel):
    """One user's history; events in any order (they are sorted by time)."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, BeforeValidator(_int_to_str), Field(max_length=256)] | None = None
    events: list[Event]


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    sequences: list[SequenceIn] = Field(min_length=1)
    encoding: Literal["float", "base64"] = Field(
        default="float", description="`base64`: each embedding is base64 of little-endian float32"
    )


class EmbeddingOut(BaseModel):
    id: str | None
    embedding: list[float] | str
    cached: bool
    events_used: int = Field(description="events fed to the model (the newest max_len)")
    unknown_items: int = Field(description="events whose item is not in the model's vocabulary")


class EmbedResponse(BaseModel):
    model_version: str
    dim: int
    embeddings: list[EmbeddingOut]


class ErrorDetail(BaseModel):
    type: str = Field(description="one of the kinds in app/errors.py, e.g. invalid_request, too_large, overloaded")
    message: str
    fields: list[dict[str, str]] = Field(description="the fields at fault: {'field': path, 'message': text}")


class ErrorBody(BaseModel):
    error: ErrorDetail
