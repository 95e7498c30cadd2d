"""A client of the generation service: reads the Server-Sent Events of `POST /generate` and
measures, per stream, time to first token and decode tokens/s under N concurrent streams. Built
and used in lab 14."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    import pandas as pd


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event type, JSON data) of each event of a `text/event-stream` response, as it arrives."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if not line:  # a blank line ends an event
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())


async def stream_once(
    client: httpx.AsyncClient, body: dict[str, Any], leave_after: int | None = None
) -> dict[str, Any]:
    """POST /generate and read its stream: status, time to first token, total time, tokens,
    decode tokens/s (after the first token), finish reason, completion text. With
    `leave_after`, close the connection after that many tokens (finish reason `left`)."""
    sent = time.perf_counter()
    row: dict[str, Any] = {"status": 0, "ttft_s": float("nan"), "tokens": 0, "finish_reason": None}
    pieces: list[str] = []
    async with client.stream("POST", "/generate", json=body) as response:
        row["status"] = response.status_code
        if response.status_code != 200:
            await response.aread()
            row["detail"] = response.text[:200]
            row["retry_after"] = response.headers.get("retry-after")
        else:
            async for kind, event in read_events(response):
                if kind == "end":  # its text is the whole completion, held-back bytes too
                    row["finish_reason"] = event["finish_reason"]
                    pieces = [event["text"]]
                    break
                if row["tokens"] == 0:
                    row["ttft_s"] = time.perf_counter() - sent
                row["tokens"] += 1
                pieces.append(event["text"])
                if leave_after is not None and row["tokens"] >= leave_after:
                    row["finish_reason"] = "left"
                    break
    row["total_s"] = time.perf_counter() - sent
    decode_s = row["total_s"] - row["ttft_s"]
    row["decode_tokens_per_s"] = (row["tokens"] - 1) / decode_s if row["tokens"] > 1 else None
    row["text"] = "".join(pieces)
    return row


async def measure_streams(
    base_url: str,
    prompts: Sequence[str],
    concurrency: int,
    max_new_tokens: int,
    timeout_s: float = 120.0,
    **sampling: Any,
) -> pd.DataFrame:
    """Stream one completion per prompt, `concurrency` at a time; one row per stream (see
    `stream_once`) plus its prompt index, start time and the concurrency."""
    import httpx
    import pandas as pd

    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 1)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def one(index: int, prompt: str) -> dict[str, Any]:
            async with gate:
                started = time.perf_counter() - start
                body = {"prompt": prompt, "max_new_tokens": max_new_tokens, **sampling}
                try:
                    row = await stream_once(client, body)
                except httpx.HTTPError as error:  # refused, reset, timed out
                    row = {"status": 0, "error": type(error).__name__}
                return {"prompt_index": index, "started_s": started, **row}

        rows = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    table = pd.DataFrame(rows)
    table["concurrency"] = concurrency
    return table


def read_metrics(base_url: str) -> dict[str, float]:
    """The service's /metrics as {name{labels}: value} (e.g. `llmlab_generate_cancelled_total`)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def wait_for_metric(
    base_url: str, name: str, minimum: float, timeout_s: float = 10.0
) -> dict[str, float]:
    """Poll /metrics until `name` reaches `minimum` (e.g. a cancel the server has yet to
    notice); all metrics then. TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (values := read_metrics(base_url)).get(name, 0.0) < minimum:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} = {values.get(name)} < {minimum} after {timeout_s:g} s")
        time.sleep(0.02)
    return values


def summarize_streams(streams: pd.DataFrame) -> dict[str, float]:
    """One row of a concurrency table: streams, failures, median time to first token (ms),
    median decode tokens/s per stream, and tokens/s of all streams over the run's span."""
    ok = streams[streams.status == 200]
    span = (streams.started_s + streams.total_s).max() - streams.started_s.min()
    return {
        "streams": len(streams),
        "failed": int((streams.status != 200).sum()),
        "median TTFT (ms)": 1000 * ok.ttft_s.median(),
        "median decode tokens/s per stream": ok.decode_tokens_per_s.median(),
        "tokens/s, all streams": ok.tokens.sum() / span,
    }
