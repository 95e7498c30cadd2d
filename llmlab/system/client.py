"""A closed-loop client that keeps what the system's answers say about themselves: cache hits,
model version and the per-hop timers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd


async def call_all(
    url: str, texts: Sequence[str], concurrency: int = 8, timeout_s: float = 30.0
) -> pd.DataFrame:
    """POST each text once to `url`/predict from `concurrency` clients; one row per text: its
    index, send time (s since the first), latency, status, label, version, cached, the retries
    the ingress made, the model replica's pid, and the ingress's hop timers (ms)."""
    import httpx

    rows: list[dict[str, Any]] = []
    counter = itertools.count()
    start = time.perf_counter()

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            while (index := next(counter)) < len(texts):
                sent = time.perf_counter()
                row: dict[str, Any] = {"index": index, "sent_s": sent - start, "status": 0}
                try:
                    response = await client.post("/predict", json={"text": texts[index]})
                    row["status"] = response.status_code
                    if response.status_code == 200:
                        body = response.json()
                        answer = body["predictions"][0]
                        row |= {"label": answer["label"], "model_version": answer["model_version"]}
                        row |= {"cached": body["cached"][0], "ingress_ms": body["ingress_ms"]}
                        row |= {"retries": body["retries"], "replica_pid": answer["replica_pid"]}
                        row |= body["timings_ms"][0]
                except httpx.HTTPError as error:
                    row["error"] = type(error).__name__
                row["latency_ms"] = 1000 * (time.perf_counter() - sent)
                rows.append(row)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return pd.DataFrame(rows).sort_values("index", ignore_index=True)
