"""The generation service (lab 14 serves lab 04's GPT): `POST /generate` streams one
Server-Sent Event per token from `llmlab.serving.engine`; probes, metrics, limits. Built and used
in lab 14 (`llmlab serve-lm`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import StreamingResponse

from llmlab.serving.batching import QueueFull
from llmlab.serving.engine import (
    FINISH_REASONS,
    Engine,
    LanguageModel,
    Stream,
    check_language_model,
    load_language_model,
)
from llmlab.serving.errors import RETRY_AFTER_S, install_error_handlers
from llmlab.serving.manager import BackgroundServer, free_port
from llmlab.serving.probes import probes_router

log = logging.getLogger("llmlab.generate")
MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 4000
MAX_BODY_BYTES = 64 * 1024


@dataclass
class GenerateConfig:
    """What the generation service serves and its limits."""

    model: str  # a `save_pretrained` directory with .safetensors weights
    device: str = "cpu"
    max_active: int = 4  # streams decoded together
    max_queue: int = 8  # streams waiting for a slot; more get a 429
    max_new_tokens: int = MAX_NEW_TOKENS  # at most MAX_NEW_TOKENS
    deadline_s: float = 30.0  # from arrival to the last token; then finish reason `deadline`


class GenerateRequest(BaseModel):
    """A prompt and how to continue it: greedy unless a sampling parameter or `seed` is given."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "max_new_tokens": 32}]},
    )
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    max_new_tokens: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_NEW_TOKENS,
            description="at most the server's limit and, with the prompt's tokens, the context",
        ),
    ]
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None


TOKEN_EVENT = {
    "type": "object",
    "properties": {"token": {"type": "integer"}, "text": {"type": "string"}, "index": {}},
}
END_EVENT = {
    "type": "object",
    "properties": {
        "finish_reason": {"enum": list(FINISH_REASONS)},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "text": {"type": "string"},
    },
}
STREAM_DOC = (
    "One `data:` event per generated token (JSON: token id, its text, index), then `event: end`"
    " whose data names the finish reason (length, eos, deadline, error) and the counts."
)


class EventStream(StreamingResponse):
    """`text/event-stream` of one Stream; however the response ends (done, client gone), the
    engine stops decoding it."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], engine: Engine, stream: Stream) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, headers=headers)
        self.engine, self.stream = engine, stream

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.stream)  # a no-op once it finished


async def sse_events(queue: asyncio.Queue) -> AsyncIterator[bytes]:
    """Wire format of the engine's events: `data: {...}`, the last one as `event: end`."""
    while True:
        event = await queue.get()
        data = json.dumps(event, ensure_ascii=False)
        if "finish_reason" in event:
            yield f"event: end\ndata: {data}\n\n".encode()
            return
        yield f"data: {data}\n\n".encode()


class GenerationService:
    """The model loading in the background, its test generation, the engine and the probes."""

    def __init__(self, config: GenerateConfig, load: Callable[..., LanguageModel]) -> None:
        self.config = config
        self.load = load
        self.state = "loading"  # loading -> serving, or failed
        self.load_error: str | None = None
        self.engine: Engine | None = None
        self.shed = {"queue_full": 0, "not_ready": 0}

    async def start(self) -> None:
        """Load the model and run a test generation in a thread, then start the engine."""
        try:
            lm = await asyncio.to_thread(self.load, self.config.model, self.config.device)
            await asyncio.to_thread(check_language_model, lm)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model %s failed to load: %s", self.config.model, self.load_error)
            self.state = "failed"
            return
        self.engine = Engine(lm, self.config.max_active, self.config.max_queue)
        self.engine.start()
        self.state = "serving"

    def not_ready_reason(self) -> str | None:
        """Why no traffic should come here now (None: ready)."""
        if self.state != "serving":
            return f"model {self.state}"
        if not self.engine.alive:
            return "the engine thread is dead"
        return None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: False once the model failed to load or the engine thread died."""
        alive = self.state != "failed" and (self.engine is None or self.engine.alive)
        report = {"status": "ok" if alive else "failing", "state": self.state}
        return alive, report | ({"load_error": self.load_error} if self.load_error else {})

    def refuse(self, status: int, reason: str) -> JSONResponse:
        """A 429 or 503 with Retry-After, counted."""
        self.shed["queue_full" if status == 429 else "not_ready"] += 1
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse({"detail": reason}, status_code=status, headers=headers)

    def problems(self, body: GenerateRequest, prompt_ids: list[int] | None) -> list[dict]:
        """What makes a schema-valid request impossible here (422 details, lab 10's format)."""
        lm, limit = self.engine.lm, self.config.max_new_tokens

        def problem(field: str, message: str, kind: str) -> dict:
            return {"loc": ["body", field], "msg": message, "type": kind}

        if body.max_new_tokens > limit:
            return [problem("max_new_tokens", f"at most {limit} on this server", "too_many")]
        if prompt_ids is None:
            return [problem("prompt", "the tokenizer cannot encode this prompt", "unencodable")]
        if not prompt_ids:
            return [problem("prompt", "the prompt maps to zero tokens", "empty_prompt")]
        if len(prompt_ids) + body.max_new_tokens > lm.n_positions:
            message = (
                f"the prompt has {len(prompt_ids)} tokens: with max_new_tokens"
                f" {body.max_new_tokens} that exceeds the model's context of {lm.n_positions}"
            )
            return [problem("prompt", message, "context_exceeded")]
        return []


def _metrics_collector(service: GenerationService) -> Any:
    """Prometheus view of the engine's own counts (one source of truth, read on scrape)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterator[Any]:
            engine = service.engine
            active, queued = (len(engine.active), len(engine.waiting)) if engine else (0, 0)
            yield GaugeMetricFamily("llmlab_generate_active_streams", "Streams decoding", active)
            yield GaugeMetricFamily("llmlab_generate_queued_streams", "Streams waiting", queued)
            counts = {
                "tokens": ("Tokens generated", engine.tokens_generated if engine else 0),
                "cancelled": ("Streams whose client left", engine.cancelled if engine else 0),
                # tokens / iterations: about the streams advanced per engine iteration
                "iterations": ("Engine iterations", engine.iterations if engine else 0),
            }
            for name, (text, value) in counts.items():
                yield CounterMetricFamily(f"llmlab_generate_{name}", text, value)
            shed = CounterMetricFamily(
                "llmlab_generate_shed", "Refused (429/503)", labels=["reason"]
            )
            finished = CounterMetricFamily(
                "llmlab_generate_finished", "Streams ended", labels=["reason"]
            )
            for reason, value in service.shed.items():
                shed.add_metric([reason], value)
            for reason, value in (engine.finished if engine else {}).items():
                finished.add_metric([reason], value)
            yield shed
            yield finished

    return Collector()


def create_generate_app(
    config: GenerateConfig, load: Callable[..., LanguageModel] = load_language_model
) -> FastAPI:
    """The FastAPI app: POST /generate (SSE), /health, /ready, /metrics."""
    from prometheus_client import CollectorRegistry

    if not 1 <= config.max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}")
    service = GenerationService(config, load)
    registry = CollectorRegistry()
    registry.register(_metrics_collector(service))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(service.start())  # /health answers meanwhile
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        if service.engine:
            service.engine.stop()

    app = FastAPI(
        title="llmlab text generation",
        description="Streams a GPT's continuation of a prompt, token by token (llmlab lab 14).",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.service = service
    install_error_handlers(app)

    @app.post(
        "/generate",
        response_class=EventStream,
        status_code=200,
        responses={
            200: {
                "description": STREAM_DOC,
                "content": {"text/event-stream": {"schema": {"oneOf": [TOKEN_EVENT, END_EVENT]}}},
            },
            422: {"description": "invalid input, or a prompt too long for the context"},
            429: {"description": "all slots and the queue are full: retry after Retry-After"},
            503: {"description": "not ready (model loading or failed)"},
        },
    )
    async def generate(body: GenerateRequest) -> Response:
        """Continue `prompt`; the response streams each token as the model makes it."""
        reason = service.not_ready_reason()
        if reason:
            return service.refuse(503, f"not ready: {reason}")
        engine = service.engine
        try:
            prompt_ids = engine.lm.encode(body.prompt)
        except Exception:  # e.g. lone UTF-16 surrogates
            prompt_ids = None
        problems = service.problems(body, prompt_ids)
        if problems:
            return JSONResponse({"detail": problems}, status_code=422)
        sampling = body.model_dump(include={"temperature", "top_k", "top_p", "seed"})
        stream = Stream(prompt_ids, body.max_new_tokens, config.deadline_s, **sampling)
        queue = stream.deliver_to(asyncio.get_running_loop())
        try:
            engine.submit(stream)
        except QueueFull as error:
            return service.refuse(429, f"busy: {error}")
        return EventStream(sse_events(queue), engine, stream)

    app.include_router(
        probes_router(service, lambda: {"model": service.engine.lm.version}, registry)
    )

    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread of this process on a free 127.0.0.1 port; yield its
    URL once /ready says 200; stop it when the block ends."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
                health = httpx.get(f"{url}/health", timeout=1)
                if health.status_code == 503:
                    raise RuntimeError(f"server at {url} is failing: {health.text}")
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError(f"server at {url} not ready after {timeout_s:g} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


class GenerationServer(BackgroundServer):
    """`python -m llmlab.serving.generate --model DIR OPTIONS` in a subprocess (lab 10's
    manager: start, wait until ready, stop)."""

    def __init__(self, model: str, *options: str) -> None:
        super().__init__(model, *options)
        self.command[2:4] = ["llmlab.serving.generate"]  # instead of `llmlab.cli serve`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's command-line options (shared with `llmlab`'s command)."""
    parser.add_argument("--model", required=True, help="a save_pretrained directory")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--max-active", type=int, default=4, help="streams decoded together")
    parser.add_argument("--max-queue", type=int, default=8, help="streams waiting for a slot")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--deadline-s", type=float, default=30.0)


def serve(args: argparse.Namespace) -> int:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    options = ("model", "device", "max_active", "max_queue", "max_new_tokens", "deadline_s")
    config = GenerateConfig(**{name: getattr(args, name) for name in options})
    uvicorn.run(create_generate_app(config), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(serve(parser.parse_args()))
