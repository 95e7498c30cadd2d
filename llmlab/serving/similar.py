"""POST /similar: the saved rows nearest a text, from a vector index that must have been built by
the embedding model that embeds the queries (the service refuses any other). Built and used in
lab 15, which adds it to lab 10's service."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from llmlab.embeddings import embed, embedding_model_dir, load_embedding_model, model_version
from llmlab.serving.errors import RETRY_AFTER_S
from llmlab.serving.schemas import MAX_BODY_BYTES, Text, error_responses
from llmlab.vectorindex import VectorIndex, check_version, read_manifest

log = logging.getLogger("llmlab.serve")
MAX_K = 50
UNENCODABLE = "the tokenizer cannot encode this text"


def _json_integer(value: Any) -> Any:
    """What JSON Schema calls an integer: 5 and 5.0, never "5" or true (lax pydantic takes both)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("k must be an integer")
    return value


class SimilarRequest(BaseModel):
    """A text, and how many of the nearest saved rows to return."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"text": "no picture"}]}
    )
    text: Text
    k: Annotated[int, Field(ge=1, le=MAX_K), BeforeValidator(_json_integer)] = 5


class Neighbour(BaseModel):
    """One saved row and its cosine similarity to the request's text (1: same direction)."""

    text: str
    label: str
    source_id: str
    score: float


class SimilarResponse(BaseModel):
    """The nearest rows, most similar first, and the index that answered."""

    model_version: str
    index_rows: int
    results: list[Neighbour]


class SimilarSearch:
    """The embedding model and the vector index behind /similar, loaded in the background."""

    def __init__(self, index_dir: Path | str, model_dir: Path | str | None = None) -> None:
        """Check, before anything loads, that the index was built by this embedding model."""
        self.index_dir = Path(index_dir)
        self.model_dir = embedding_model_dir(model_dir)
        self.model_version = model_version(self.model_dir)
        check_version(read_manifest(self.index_dir), self.model_version, self.index_dir)
        self.state = "loading"  # loading -> serving, or failed
        self.error: str | None = None
        self.index: VectorIndex | None = None
        self.tokenizer: Any = None
        self.model: Any = None

    def _load(self) -> None:
        tokenizer, model = load_embedding_model(self.model_dir)
        index = VectorIndex.load(self.index_dir, self.model_version)
        embed(["warm-up"], tokenizer, model)  # the first forward pass allocates; not a client's
        self.tokenizer, self.model, self.index = tokenizer, model, index

    async def start(self) -> None:
        """Load the model and the index in a thread; on failure, record why (health fails)."""
        try:
            await asyncio.to_thread(self._load)
        except Exception as error:
            self.state, self.error = "failed", f"{type(error).__name__}: {error}"
            log.error("vector index %s failed to load: %s", self.index_dir, self.error)
            return
        self.state = "serving"

    def report(self) -> dict[str, Any]:
        """Whether the index is loaded, its path, model version and rows (for /health, /ready)."""
        report = {
            "loaded": self.state == "serving",
            "state": self.state,
            "path": str(self.index_dir),
        }
        report |= {"model_version": self.model_version}
        report |= {"rows": len(self.index)} if self.index is not None else {}
        return report | ({"error": self.error} if self.error else {})

    def not_ready_reason(self) -> str | None:
        """Why /similar cannot answer now (None: it can)."""
        return None if self.state == "serving" else f"vector index {self.state}"

    def encodable(self, text: str) -> bool:
        """Whether the tokenizer can encode `text` (a lone UTF-16 surrogate, e.g., it cannot)."""
        try:
            self.tokenizer([text], truncation=True, max_length=8)
        except Exception:
            return False
        return True

    def nearest(self, text: str, k: int) -> list[dict[str, Any]]:
        """The `k` saved rows nearest `text`, most similar first."""
        assert self.index is not None, "nearest() before the index loaded"
        return self.index.neighbours(embed([text], self.tokenizer, self.model), k)[0]

    def router(self) -> APIRouter:
        """POST /similar, answered from this index."""
        router = APIRouter()

        @router.post(
            "/similar",
            response_model=SimilarResponse,
            responses=error_responses(
                {
                    400: "the body is not JSON, or not UTF-8",
                    413: f"the body is over {MAX_BODY_BYTES} bytes",
                    422: "invalid input, or a text the tokenizer cannot encode",
                    500: "embedding or search failed (body: request id)",
                    503: "the vector index is not loaded yet",
                }
            ),
        )
        async def similar(body: SimilarRequest, request: Request) -> Any:
            """The `k` saved texts nearest `text` by cosine similarity of their embeddings."""
            reason = self.not_ready_reason()
            if reason:
                headers = {"Retry-After": str(RETRY_AFTER_S)}
                return JSONResponse({"detail": f"not ready: {reason}"}, 503, headers=headers)
            if not self.encodable(body.text):
                detail = [{"loc": ["body", "text"], "msg": UNENCODABLE, "type": "unencodable"}]
                return JSONResponse({"detail": detail}, status_code=422)
            try:
                results = await asyncio.to_thread(self.nearest, body.text, body.k)
            except Exception:
                request_id = request.state.request_id
                log.exception("request %s: /similar failed", request_id)
                body_500 = {"detail": "embedding or search failed", "request_id": request_id}
                return JSONResponse(body_500, status_code=500)
            return {
                "model_version": self.model_version,
                "index_rows": len(self.index),
                "results": results,
            }

        return router
