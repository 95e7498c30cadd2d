"""The token-streaming generation service on a tiny random GPT: the stream, sampling, limits,
backpressure, deadlines, disconnects, probes, metrics and the OpenAPI contract. Each test's
docstring names the broken service it catches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM

from llmlab.models import build_gpt, gpt_config
from llmlab.serving.engine import Engine, load_language_model
from llmlab.serving.generate import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    GenerateConfig,
    create_generate_app,
    serve_in_thread,
)
from llmlab.serving.stream_client import (
    measure_streams,
    read_metrics,
    stream_once,
    summarize_streams,
    wait_for_metric,
)
from llmlab.text import train_bpe

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "hello world, café", "the fox"]
WAIT_S = 10.0  # upper bound for events that should take milliseconds


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT (lab 04's smoke size, 64 positions) and a 300-token byte-level BPE."""
    path = tmp_path_factory.mktemp("gpt")
    tokenizer = train_bpe(SENTENCES * 5, 300)
    torch.manual_seed(0)
    model = build_gpt(gpt_config("smoke", len(tokenizer), eos_token_id=tokenizer.eos_token_id))
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def served(model_dir: Path, **options: object) -> Iterator[tuple[str, Engine]]:
    """The service on uvicorn in a thread (real HTTP), ready; its URL and engine."""
    app = create_generate_app(GenerateConfig(str(model_dir), **options))
    with serve_in_thread(app) as url:
        yield url, app.state.service.engine


def wrap_step(engine: Engine, hook: Callable[[int, list[int]], None] | None = None, after=None):
    """Replace the served model's step: `hook(call, ids)` runs before it, `after(call, logits)`
    may change its logits. Returns the list of input lengths, one per call."""
    original, lengths = engine.lm.step, []

    def step(ids: list[int], past: object) -> tuple[torch.Tensor, object]:
        call = len(lengths)
        lengths.append(len(ids))
        if hook:
            hook(call, ids)
        logits, past = original(ids, past)
        if after:
            with torch.inference_mode():  # the logits are inference tensors
                after(call, logits)
        return logits, past

    engine.lm.step = step
    return lengths


def in_system(count: int) -> Callable[[Engine], bool]:
    """Predicate: `count` streams are active or waiting."""
    return lambda engine: len(engine.active) + len(engine.waiting) == count


def wait_loaded(client: TestClient) -> httpx.Response:
    """Poll /health until the model is no longer loading; its last answer."""
    deadline = time.monotonic() + WAIT_S
    while (health := client.get("/health")).json()["state"] == "loading":
        assert time.monotonic() < deadline, "still loading"
        time.sleep(0.01)
    return health


def read_stream(url: str, body: dict) -> tuple[httpx.Response, list[dict], dict]:
    """POST /generate and read all of it: the response, its token events and its end event."""
    tokens, end, kind = [], {}, "message"
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=WAIT_S) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                event = json.loads(line.split(":", 1)[1])
                if kind == "end":
                    end = event
                else:
                    tokens.append(event)
    return response, tokens, end


def test_stream_is_greedy_generate_token_by_token_through_the_kv_cache(model_dir):
    """Catches a service that recomputes the whole prefix each step (no KV cache: inputs longer
    than one token after the prompt), misuses the cache (tokens differ from `generate`), sends
    the text at the end instead of per token, or lacks the SSE headers."""
    prompt, n = "the cat", 12
    with served(model_dir) as (url, engine):
        lengths = wrap_step(engine)
        response, tokens, end = read_stream(url, {"prompt": prompt, "max_new_tokens": n})
        metrics = read_metrics(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    prompt_ids = engine.lm.encode(prompt)
    assert lengths[0] == len(prompt_ids) and set(lengths[1:]) == {1}, lengths
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = engine.lm.eos_token_id
    expected = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=eos
    )[0, len(prompt_ids) :].tolist()
    if eos in expected:  # the service stops there and sends no event for EOS
        expected = expected[: expected.index(eos)]
    assert [event["token"] for event in tokens] == expected
    assert [event["index"] for event in tokens] == list(range(len(expected)))
    assert end["finish_reason"] == ("length" if len(expected) == n else "eos")
    assert end["completion_tokens"] == len(expected) and end["prompt_tokens"] == len(prompt_ids)
    assert end["text"] == engine.lm.tokenizer.decode(expected)
    assert end["text"].startswith("".join(event["text"] for event in tokens))
    assert metrics["llmlab_generate_tokens_total"] == len(expected)


def test_seeded_sampling_repeats_even_among_concurrent_sampled_streams(model_dir):
    """Catches sampling from torch's global RNG (other streams' draws interleave with this one's,
    so a seed does not reproduce under concurrency) and a seed that is ignored."""
    body = {"prompt": "a dog", "max_new_tokens": 16, "temperature": 1.5, "top_k": 100}
    with served(model_dir, max_active=4) as (url, engine):
        alone = read_stream(url, body | {"seed": 7})[1]
        other_seed = read_stream(url, body | {"seed": 8})[1]
        release = threading.Event()
        wrap_step(engine, hook=lambda call, ids: call == 0 and release.wait(WAIT_S))

        async def together() -> list[dict]:
            async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
                bodies = [body | {"seed": 7}] + [body] * 3  # three unseeded sampled streams
                calls = [asyncio.create_task(stream_once(client, b)) for b in bodies]
                await asyncio.to_thread(engine.wait_until, in_system(4), WAIT_S)
                release.set()  # all four decode together from here
                return await asyncio.gather(*calls)

        rows = asyncio.run(together())
    tokens = [event["token"] for event in alone]
    assert len(tokens) == 16
    assert rows[0]["text"] == engine.lm.tokenizer.decode(tokens)
    assert [event["token"] for event in other_seed] != tokens


def test_eos_ends_the_stream_without_sending_it(model_dir):
    """Catches a service that decodes past EOS (finish reason `length`, EOS text sent)."""
    with served(model_dir) as (url, engine):
        eos = engine.lm.eos_token_id

        def force_eos(call: int, logits: torch.Tensor) -> None:
            if call == 3:  # prompt, then two tokens, then EOS
                logits[:, eos] = 1e9

        wrap_step(engine, after=force_eos)
        _, tokens, end = read_stream(url, {"prompt": "hello", "max_new_tokens": 20})
    assert end["finish_reason"] == "eos" and end["completion_tokens"] == 3
    assert eos not in [event["token"] for event in tokens]


def test_a_full_engine_answers_429_with_retry_after_at_once(model_dir):
    """Catches an unbounded queue (the third request would wait, so it times out here) and a
    refusal without Retry-After; the refusal is counted and the admitted streams finish."""
    with served(model_dir, max_active=1, max_queue=1) as (url, engine):
        release = threading.Event()
        wrap_step(engine, hook=lambda call, ids: call == 0 and release.wait(WAIT_S))
        body = {"prompt": "the", "max_new_tokens": 4}

        async def scenario() -> tuple[list[dict], httpx.Response, dict]:
            async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
                admitted = [asyncio.create_task(stream_once(client, body)) for _ in range(2)]
                await asyncio.to_thread(engine.wait_until, in_system(2), WAIT_S)
                # The model is blocked: only a refusal can answer before `release`.
                refused = await client.post("/generate", json=body, timeout=2.0)
                metrics = await asyncio.to_thread(read_metrics, url)
                release.set()
                return await asyncio.gather(*admitted), refused, metrics

        rows, refused, metrics = asyncio.run(scenario())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert metrics['llmlab_generate_shed_total{reason="queue_full"}'] == 1
    assert metrics["llmlab_generate_active_streams"] == 1
    assert metrics["llmlab_generate_queued_streams"] == 1
    assert [(row["status"], row["finish_reason"]) for row in rows] == [(200, "length")] * 2


def test_a_stream_past_its_deadline_ends_with_finish_reason_deadline(model_dir):
    """Catches a service without a deadline: a slow model would decode all 50 tokens
    (finish reason `length`, 10 s here)."""
    slow = threading.Event()  # never set: each step past the second waits 0.2 s
    with served(model_dir, deadline_s=0.5) as (url, engine):
        wrap_step(engine, hook=lambda call, ids: call >= 2 and slow.wait(0.2))
        _, tokens, end = read_stream(url, {"prompt": "the", "max_new_tokens": 50})
        metrics = read_metrics(url)
    assert end["finish_reason"] == "deadline"
    assert 1 <= len(tokens) == end["completion_tokens"] < 50
    assert metrics['llmlab_generate_finished_total{reason="deadline"}'] == 1


def test_a_client_that_leaves_stops_its_decoding_and_frees_its_slot(model_dir):
    """Catches a service that keeps decoding for a client that left: the stream is never
    cancelled, its slot stays taken (the next request gets a 429) and tokens keep coming."""
    proceed = threading.Event()
    with served(model_dir, max_active=1, max_queue=0) as (url, engine):
        # The third step (second token's successor) waits until the client has left.
        wrap_step(engine, hook=lambda call, ids: call == 2 and proceed.wait(WAIT_S))
        body = {"prompt": "the", "max_new_tokens": 50}

        async def leave() -> dict:
            async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
                return await stream_once(client, body, leave_after=2)

        left = asyncio.run(leave())
        cancelled = engine.wait_until(lambda e: e.cancelled == 1, WAIT_S)
        proceed.set()
        after_leaving = engine.tokens_generated
        response, tokens, end = read_stream(url, {"prompt": "the", "max_new_tokens": 5})
        metrics = wait_for_metric(url, "llmlab_generate_cancelled_total", 1)
    assert left["tokens"] == 2 and cancelled
    assert response.status_code == 200 and end["finish_reason"] == "length"
    assert after_leaving == 2 and engine.tokens_generated == 2 + len(tokens)
    assert metrics["llmlab_generate_cancelled_total"] == 1


def test_streams_advance_together_one_token_each_per_iteration(model_dir):
    """Catches run-to-completion scheduling (one stream at a time): the second stream's first
    token would come only after the first stream's last."""
    release = threading.Event()
    with served(model_dir, max_active=2) as (url, engine):

        def slow_start(call: int, ids: list[int]) -> None:
            if call == 0:
                release.wait(WAIT_S)
            threading.Event().wait(0.005)  # a model of 5 ms a step: arrival order is clear

        wrap_step(engine, hook=slow_start)

        async def scenario():
            measuring = asyncio.create_task(measure_streams(url, ["the", "a dog"], 2, 20))
            await asyncio.to_thread(engine.wait_until, in_system(2), WAIT_S)
            release.set()
            return await measuring

        table = asyncio.run(scenario())
        metrics = read_metrics(url)
    assert summarize_streams(table)["failed"] == 0 and (table.tokens == 20).all()
    iterations = metrics["llmlab_generate_iterations_total"]
    assert iterations < 0.75 * metrics["llmlab_generate_tokens_total"], "two tokens an iteration"
    first_token_at = table.started_s + table.ttft_s
    ended_at = table.started_s + table.total_s
    assert first_token_at.max() < ended_at.min(), table


INVALID = {
    "max_new_tokens 0": ({"prompt": "hi", "max_new_tokens": 0}, "greater than or equal to 1"),
    "max_new_tokens over the limit": (
        {"prompt": "hi", "max_new_tokens": MAX_NEW_TOKENS + 1},
        f"less than or equal to {MAX_NEW_TOKENS}",
    ),
    "max_new_tokens missing": ({"prompt": "hi"}, "Field required"),
    "max_new_tokens a string": ({"prompt": "hi", "max_new_tokens": "5"}, "valid integer"),
    "temperature 0": ({"prompt": "hi", "max_new_tokens": 2, "temperature": 0}, "greater than 0"),
    "top_p 0": ({"prompt": "hi", "max_new_tokens": 2, "top_p": 0.0}, "greater than 0"),
    "top_p over 1": ({"prompt": "hi", "max_new_tokens": 2, "top_p": 1.5}, "less than or equal"),
    "top_k 0": ({"prompt": "hi", "max_new_tokens": 2, "top_k": 0}, "greater than or equal to 1"),
    "unknown field": ({"prompt": "hi", "max_new_tokens": 2, "n": 3}, "Extra inputs"),
    "prompt too many characters": (
        {"prompt": "a" * (MAX_PROMPT_CHARS + 1), "max_new_tokens": 2},
        f"at most {MAX_PROMPT_CHARS} characters",
    ),
    "prompt of zero tokens": ({"prompt": "", "max_new_tokens": 2}, "zero tokens"),
    "prompt and tokens past the context": (
        {"prompt": "zq" * 40, "max_new_tokens": 8},  # letters the BPE never merged
        "exceeds the model's context of 64",
    ),
    "a lone UTF-16 surrogate": ({"prompt": "\ud800", "max_new_tokens": 2}, "valid string"),
    "max_new_tokens over the server's limit": (
        {"prompt": "hi", "max_new_tokens": 9},
        "at most 8 on this server",
    ),
}


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    app = create_generate_app(GenerateConfig(str(model_dir), max_new_tokens=8))
    with TestClient(app) as client:
        wait_loaded(client)
        assert client.get("/ready").status_code == 200
        yield client


@pytest.mark.parametrize("body,message", INVALID.values(), ids=INVALID.keys())
def test_invalid_requests_get_422_with_a_reason_before_anything_is_queued(client, body, message):
    """Catches a service without the bounds (a prompt past the context would fail mid-stream
    or index past the position table) or one that queues before validating."""
    engine = client.app.state.service.engine
    submitted = engine.submitted
    # json.dumps escapes non-ASCII, so a lone surrogate travels as JSON allows (\\ud800).
    headers = {"content-type": "application/json"}
    response = client.post("/generate", content=json.dumps(body), headers=headers)
    assert response.status_code == 422
    assert message in response.text, response.text
    assert len(response.text) < 1000, "errors must not echo the (possibly huge) prompt"
    assert engine.submitted == submitted


def test_openapi_documents_the_event_stream_and_the_refusals(client):
    """Catches a schema that claims a JSON 200 for a stream or hides the 422 and 429."""
    operation = client.get("/openapi.json").json()["paths"]["/generate"]["post"]
    assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"422", "429", "503"} <= set(operation["responses"])
    schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["max_new_tokens"]["maximum"] == MAX_NEW_TOKENS
    assert schema["required"] == ["prompt", "max_new_tokens"]


def test_ready_only_after_the_model_loaded_and_generated(model_dir):
    """Catches a /ready that says 200 while the model loads, or for a model that loads but
    cannot generate (no test generation before serving)."""
    loaded = threading.Event()

    def slow_load(path: str, device: str):
        loaded.wait(WAIT_S)
        return load_language_model(path, device)

    with TestClient(create_generate_app(GenerateConfig(str(model_dir)), slow_load)) as client:
        assert client.get("/ready").status_code == 503
        assert client.get("/health").json()["state"] == "loading"
        refused = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        loaded.set()
        wait_loaded(client)
        assert client.get("/ready").status_code == 200

    def broken_load(path: str, device: str):
        lm = load_language_model(path, device)
        lm.model.transformer.wte.weight.data.fill_(float("nan"))
        return lm

    with TestClient(create_generate_app(GenerateConfig(str(model_dir)), broken_load)) as client:
        health = wait_loaded(client)
        assert client.get("/ready").status_code == 503
        assert health.status_code == 503 and "non-finite" in health.json()["load_error"]


def test_only_safetensors_load_and_a_broken_model_dir_fails_clearly(model_dir, tmp_path):
    """Catches loading pickled weights (code runs on unpickling) and a vague failure for a
    missing or corrupt model."""
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_language_model(tmp_path / "missing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickled weights"):
        load_language_model(pickled)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for file in model_dir.iterdir():
        (corrupt / file.name).write_bytes(file.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 16)
    with TestClient(create_generate_app(GenerateConfig(str(corrupt)))) as client:
        health = wait_loaded(client)
    assert health.status_code == 503 and health.json()["load_error"]
