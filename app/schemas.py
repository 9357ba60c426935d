"""Request and response bodies of the HTTP API.

The schema checks the shape of a request only: a list of sequences, each with a
list of events. Every rule about an event (an object; its fields' types,
presence, timestamp formats and range, dwell) lives in
`model.features.encode_event_lists`, which checks each event while encoding it;
building a pydantic object per event would cost more than the model itself.
`Event` below documents that contract in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from model.features import MAX_LABEL


def _int_to_str(value: Any) -> Any:
    # A JSON integer id means the same label as its decimal string.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


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
    """One raw behavior event (checked by model.features.encode_events; unknown fields are ignored)."""

    item_id: str | int = Field(description=f"1 to {MAX_LABEL} characters; an integer is read as its decimal string")
    timestamp: int | float | str = Field(
        description="unix seconds, unix milliseconds (>= 1e11) or an ISO-8601 string (no zone = UTC), "
        "between 1990 and 2100"
    )
    event_type: str | int = Field(description=f"1 to {MAX_LABEL} characters, e.g. view, cart, buy")
    dwell_time: float | None = Field(default=None, description="seconds spent, >= 0")


# list[Any]: validating each event as a dict here would copy every event (about as long as
# encoding them); encode_event_lists checks each event, objects included.
EventList = Annotated[
    list[Any],
    WithJsonSchema({"type": "array", "items": Event.model_json_schema()}),
]


class SequenceIn(BaseModel):
    """One user's history; events in any order (they are sorted by time)."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, BeforeValidator(_int_to_str), Field(max_length=256)] | None = None
    events: EventList


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
