"""The one HTTP load-test client: closed-loop load on POST /predict, and its summary. Built in
lab 10 (its service under load); lab 12 drives its Ray system with it (`llmlab.system.client`,
`llmlab.system.elastic`), and the GPU check (`llmlab.gpucheck`) loads lab 10's service on CUDA."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ANSWER_KEYS = ("label", "score", "model_version", "replica_pid")  # per prediction, where present


async def load_test(
    url: str,
    texts: Sequence[str],
    requests: int = 200,
    concurrency: int = 16,
    time_limit_s: float = 30.0,
    timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> pd.DataFrame:
    """Closed-loop load: `concurrency` clients each send one text per POST /predict, then the
    next, until `requests` were sent, `time_limit_s` passed or `stop` was set. One row per
    request: its text's index, send time, latency, status and what the answer says of itself
    (`answer_fields`)."""
    import httpx
    import pandas as pd

    rows: list[dict[str, Any]] = []
    counter = itertools.count()
    tls = ssl.create_default_context()  # built once: each client would otherwise spend ~30 ms
    start = time.perf_counter()

    def keep_going() -> bool:
        in_time = time.perf_counter() - start < time_limit_s
        return in_time and not (stop and stop.is_set())

    async def one_client() -> None:
        # A client (one keep-alive connection) per simulated user: one shared pool costs more
        # CPU per request than the server does.
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, verify=tls) as client:
            while keep_going() and (index := next(counter)) < requests:
                sent = time.perf_counter()
                row: dict[str, Any] = {"text_index": index % len(texts), "sent_s": sent - start}
                row["status"] = 0  # no HTTP answer at all
                try:
                    text = texts[row["text_index"]]
                    response = await client.post("/predict", json={"text": text})
                    row["status"] = response.status_code
                    if response.status_code == 200:
                        row |= answer_fields(response.json())
                except httpx.HTTPError as error:  # refused, reset, timed out: a failed request
                    row["error"] = type(error).__name__
                row["latency_s"] = time.perf_counter() - sent
                rows.append(row)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return pd.DataFrame(rows)


def answer_fields(body: dict[str, Any]) -> dict[str, Any]:
    """What a /predict answer says about its first text: the variant (lab 10), label, score and
    model version; lab 12's system adds whether its cache answered, the ingress's retries and
    time, the model replica's pid and the per-hop timers (ms)."""
    first = body["predictions"][0]
    fields = {key: first[key] for key in ANSWER_KEYS if key in first}
    fields |= {key: body[key] for key in ("variant", "ingress_ms", "retries") if key in body}
    if "cached" in body:
        fields["cached"] = body["cached"][0]
    return fields | (body["timings_ms"][0] if "timings_ms" in body else {})


def summarize(requests: pd.DataFrame) -> dict[str, float]:
    """Throughput (successful requests/s) and latency percentiles (ms) of a load test."""
    ok = requests[requests.status == 200]
    span = (requests.sent_s + requests.latency_s).max() - requests.sent_s.min()
    latency_ms = ok.latency_s.to_numpy() * 1000
    return {
        "requests": len(requests),
        "failed": int((requests.status != 200).sum()),
        "throughput_rps": len(ok) / span,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p95_ms": float(np.percentile(latency_ms, 95)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
    }
