"""Lab 12's elasticity and bill: replicas over time under a load that rises and falls (driven
by `llmlab.serving.loadtest`), the cold start of a deployment scaled to zero, and what a
thousand requests cost. Built and used in lab 12."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pandas as pd

from llmlab.serving.loadtest import load_test
from llmlab.system.app import replica_counts

# Serve's defaults wait 30 s to scale up and 600 s to scale down (sized for production traffic);
# the lab's phases last seconds, so the autoscaler looks back 2 s and decides within a few.
FAST_AUTOSCALING = {
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
    "downscale_to_zero_delay_s": 3.0,
}


async def sample_replicas(
    stop: asyncio.Event, deployment: str = "Model", app: str = "default", period_s: float = 0.25
) -> pd.DataFrame:
    """Replicas of `deployment` per state every `period_s` until `stop` is set: one row per
    sample, its time (s since the first) and a column per state (RUNNING, STARTING, ...)."""
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    while not stop.is_set():
        counts = await asyncio.to_thread(replica_counts, app)  # a controller call: off the loop
        rows.append({"t_s": time.perf_counter() - start} | counts[deployment])
        await asyncio.sleep(period_s)
    timeline = pd.DataFrame(rows)
    for state in ("RUNNING", "STARTING"):  # present even where no replica ever was in it
        timeline[state] = timeline.get(state, 0)
    return timeline.fillna(0)


async def idle_until_no_replica(
    seconds: float, deployment: str = "Model", app: str = "default"
) -> None:
    """Send nothing until `deployment` has no replica left (scaled to zero) or `seconds` passed."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        counts = await asyncio.to_thread(replica_counts, app)
        if not any(counts[deployment].values()):
            return
        await asyncio.sleep(0.25)


async def _stop_when_running(stop: asyncio.Event, replicas: int, app: str = "default") -> None:
    """Set `stop` once the model has `replicas` RUNNING replicas."""
    while not stop.is_set():
        counts = await asyncio.to_thread(replica_counts, app)
        if counts["Model"].get("RUNNING", 0) >= replicas:
            stop.set()
        await asyncio.sleep(0.25)


async def drive_phases(
    url: str, texts: Sequence[str], phases: Sequence[tuple], timeout_s: float = 60.0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run (name, concurrency, seconds[, until_running]) phases of closed-loop load while
    sampling the model's replicas: a phase with `until_running` ends early once that many
    replicas run; concurrency 0 idles until no replica is left (at most `seconds`). The
    timeline, the requests, and each phase's start and end."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_replicas(stop))
    await asyncio.sleep(0)  # the sampler's clock starts before the first phase
    start = time.perf_counter()
    requests, spans = [], []
    for name, concurrency, seconds, *until in phases:
        began = time.perf_counter() - start
        if concurrency == 0:
            await idle_until_no_replica(seconds)
        else:
            enough = asyncio.Event()
            watcher = asyncio.create_task(_stop_when_running(enough, until[0])) if until else None
            sent = await load_test(url, texts, 10**6, concurrency, seconds, timeout_s, enough)
            enough.set()
            if watcher:
                await watcher
            requests.append(sent.assign(phase=name, sent_s=sent.sent_s + began))
        spans.append({"phase": name, "concurrency": concurrency, "start_s": began})
        spans[-1]["end_s"] = time.perf_counter() - start
    stop.set()
    timeline = await sampler
    return timeline, pd.concat(requests, ignore_index=True), pd.DataFrame(spans)


async def cold_then_warm(url: str, text: str, warm: int = 5, timeout_s: float = 120.0) -> dict:
    """Latency (ms) of the first request to a deployment scaled to zero, then the median of
    `warm` requests sent one at a time after it."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        latencies = []
        for _ in range(1 + warm):
            sent = time.perf_counter()
            response = await client.post("/predict", json={"text": text})
            response.raise_for_status()
            latencies.append(1000 * (time.perf_counter() - sent))
    return {"cold_ms": latencies[0], "warm_ms": float(np.median(latencies[1:]))}


def replica_seconds(timeline: pd.DataFrame, column: str = "RUNNING") -> float:
    """Replica-seconds the timeline holds (each sample's count until the next sample)."""
    steps = np.diff(timeline.t_s.to_numpy())
    return float((timeline[column].to_numpy()[:-1] * steps).sum())


def cost_per_thousand(
    throughput_rps: float,
    cpus: float,
    cpu_hour_price: float,
    gpus: float = 0,
    gpu_hour_price: float = 0.0,
) -> float:
    """Price of 1000 requests served at `throughput_rps` by `cpus` CPUs and `gpus` GPUs held
    for as long as they take, at the given prices per CPU-hour and GPU-hour."""
    hour_price = cpus * cpu_hour_price + gpus * gpu_hour_price
    return hour_price * 1000 / (throughput_rps * 3600)
