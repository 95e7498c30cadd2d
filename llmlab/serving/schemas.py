"""The API contract: request and response bodies, and their limits."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

MAX_TEXT_CHARS = 1000  # longer texts are refused (422) rather than silently cut
MAX_ITEMS = 64  # texts per request
MAX_BODY_BYTES = 256 * 1024


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty")
    return text


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]


class PredictRequest(BaseModel):
    """Send one `text`, or a batch of `texts`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"text": "I lost my card"}, {"texts": ["hi", "bye"]}]},
    )
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)] | None = None

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

    challenger_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
