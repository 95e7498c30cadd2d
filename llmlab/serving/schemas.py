"""The API contract: request, response and error bodies, and their limits. Built in lab 10; lab
12's Ray ingress validates with the same `PredictRequest`.

What the service answers is what its OpenAPI schema says: `make contract` fuzzes the running
service against the published schema, so a constraint checked here is written into the schema too
(no blank text, exactly one of `text`/`texts`)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

MAX_TEXT_CHARS = 1000  # longer texts are refused (422) rather than silently cut
MAX_ITEMS = 64  # texts per request
# Every schema-valid body fits, even with each character written as a 12-byte surrogate pair
# escape: the limit refuses what the schema cannot (a body padded with whitespace).
MAX_BODY_BYTES = 1024 * 1024
# Blank: only the characters str.isspace() accepts, spelled out, as regex engines disagree on
# what `\s` holds: the service (Python) and the schema's readers (any engine) must agree.
WHITESPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"


def _not_blank(text: str) -> str:
    if not re.search(NOT_BLANK, text):
        raise ValueError("text is empty")
    return text


TEXT_SCHEMA = {"type": "string", "maxLength": MAX_TEXT_CHARS, "pattern": NOT_BLANK}
Text = Annotated[
    str,
    StringConstraints(max_length=MAX_TEXT_CHARS),
    AfterValidator(_not_blank),
    WithJsonSchema(TEXT_SCHEMA),
]


def _exactly_one_field(schema: dict[str, Any]) -> None:
    """The schema says what the validators check: `text` or `texts`, one of them, never null."""
    schema["properties"]["text"] = {**TEXT_SCHEMA, "title": "Text"}
    schema["properties"]["texts"] = {
        "type": "array",
        "items": TEXT_SCHEMA,
        "minItems": 1,
        "maxItems": MAX_ITEMS,
        "title": "Texts",
    }
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [{"text": "I lost my card"}, {"texts": ["hi", "bye"]}]


class PredictRequest(BaseModel):
    """Send one `text`, or a batch of `texts`."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_exactly_one_field)
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_null(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            raise ValueError("null is not a text: leave the field out")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' or 'texts'")
        return self


class Prediction(BaseModel):
    """What the model says about one text."""

    label: str
    score: float
    probabilities: dict[str, float]
    model_version: str


class PredictResponse(BaseModel):
    """Predictions in request order and the variant (champion/challenger) that made them."""

    variant: str
    predictions: list[Prediction]


class TrafficRequest(BaseModel):
    """Share of requests routed to the challenger."""

    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is not a fraction
    challenger_fraction: Annotated[float, Field(ge=0.0, le=1.0)]


class TrafficResponse(BaseModel):
    """The share now in force."""

    challenger_fraction: float


class ModelsResponse(BaseModel):
    """The model version each variant serves (champion, and challenger if any)."""

    models: dict[str, str]


class Problem(BaseModel):
    """An error: what went wrong; a 5xx also names its request id (the details went to the log)."""

    detail: str
    request_id: str | None = None


class InvalidField(BaseModel):
    """One field the service refused: where (`body`, field, position), why, and its type."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """A 422: every refused field (the input is not echoed back: it may be a megabyte)."""

    detail: list[InvalidField]


RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's errors, each with its body (and Retry-After on 429 and
    503): what the service answers, so the schema can be checked against it."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in descriptions.items():
        response = {
            "description": description,
            "model": InvalidRequest if status == 422 else Problem,
        }
        if status in (429, 503):
            response["headers"] = {"Retry-After": RETRY_AFTER}
        if status == 413:  # Starlette refuses a Content-Length over the limit in plain text
            response["content"] = {"text/plain": {"schema": {"type": "string"}}}
        responses[status] = response
    return responses
