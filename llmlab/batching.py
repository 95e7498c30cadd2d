"""Batching for generation (lab 14): a request trace, static and continuous batching, metrics.

Both schedulers run the same greedy decode step over `llmlab.generation`'s KV cache, in real
time: a request can join only once the clock has passed its arrival. Static batching takes the
requests that have arrived, decodes them together until the longest one is done, then forms the
next batch. Continuous (in-flight) batching decodes every active request at each step; a finished
request leaves at once and a waiting one joins at the next step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from llmlab.generation import KVCache, cached_forward, prefill
from llmlab.models import BlockGPT


@dataclass
class Request:
    """One generation request: when it arrives, its prompt, how many tokens it wants."""

    request_id: int
    arrival_s: float
    prompt: Tensor
    max_new_tokens: int


@dataclass
class Served:
    """What happened to one request: when its first and last tokens came, and the tokens."""

    request: Request
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    tokens: list[int] = field(default_factory=list)

    def add(self, token: int, now_s: float) -> bool:
        """Record one generated token at time now_s; True when the request is complete."""
        if not self.tokens:
            self.first_token_s = now_s
        self.tokens.append(token)
        if len(self.tokens) == self.request.max_new_tokens:
            self.finish_s = now_s
            return True
        return False


def request_trace(
    n_requests: int,
    rate_per_s: float,
    tokens: Tensor,
    prompt_lengths: tuple[int, int],
    output_lengths: tuple[int, int],
    seed: int = 0,
) -> list[Request]:
    """Poisson arrivals at `rate_per_s`; prompts cut from `tokens`; lengths uniform in [lo, hi]."""
    rng = np.random.default_rng(seed)
    arrivals = np.concatenate([[0.0], np.cumsum(rng.exponential(1 / rate_per_s, n_requests - 1))])
    prompt_sizes = rng.integers(prompt_lengths[0], prompt_lengths[1] + 1, n_requests)
    output_sizes = rng.integers(output_lengths[0], output_lengths[1] + 1, n_requests)
    starts = rng.integers(0, len(tokens) - prompt_lengths[1], n_requests)
    return [
        Request(i, float(arrivals[i]), tokens[start : start + size].clone(), int(output_sizes[i]))
        for i, (start, size) in enumerate(zip(starts, prompt_sizes, strict=True))
    ]


def _clock() -> Callable[[], float]:
    """Seconds since this call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def _wait_until(now: Callable[[], float], when_s: float) -> None:
    """Sleep until the clock reads `when_s` (nothing to do until the next request arrives)."""
    time.sleep(max(0.0, when_s - now()))


def _arrived(pending: deque[Request], now_s: float, limit: int) -> list[Request]:
    """Pop up to `limit` requests that have arrived by now_s, first come first served."""
    taken = []
    while pending and len(taken) < limit and pending[0].arrival_s <= now_s:
        taken.append(pending.popleft())
    return taken


def _max_len(trace: list[Request]) -> int:
    """Cache length that holds any request's prompt plus the longest output of the trace."""
    return max(len(r.prompt) for r in trace) + max(r.max_new_tokens for r in trace)


@torch.no_grad()
def static_batching(model: BlockGPT, trace: list[Request], max_batch: int) -> list[Served]:
    """Batch what has arrived, decode until its longest request is done, then the next batch."""
    now, pending = _clock(), deque(sorted(trace, key=lambda r: r.arrival_s))
    cache = KVCache.empty(model, max_batch, _max_len(trace))
    served = []
    while pending:
        _wait_until(now, pending[0].arrival_s)
        batch = [Served(r) for r in _arrived(pending, now(), max_batch)]
        tokens = prefill(model, cache, [s.request.prompt for s in batch]).argmax(-1)
        for _ in range(max(s.request.max_new_tokens for s in batch)):
            now_s = now()
            for s, token in zip(batch, tokens.tolist(), strict=True):
                if len(s.tokens) < s.request.max_new_tokens:
                    s.add(token, now_s)
            if all(len(s.tokens) == s.request.max_new_tokens for s in batch):
                break
            # Finished rows keep decoding (their tokens are dropped): the batch is fixed.
            tokens = cached_forward(model, cache, tokens[:, None])[:, -1].argmax(-1)
        served += batch
    return served


def _retire(active: list[Served], last: Tensor, cache: KVCache) -> Tensor:
    """Drop finished requests, moving the last active row into each freed one (rows stay packed)."""
    for row in reversed(range(len(active))):
        if len(active[row].tokens) == active[row].request.max_new_tokens:
            end = len(active) - 1
            if row != end:
                cache.move_row(end, row)
                last[row] = last[end]
                active[row] = active[end]
            active.pop()
            last = last[:end]
    return last


@torch.no_grad()
def continuous_batching(model: BlockGPT, trace: list[Request], max_batch: int) -> list[Served]:
    """Each step decodes every active request; arrivals join and finished requests leave at once."""
    now, pending = _clock(), deque(sorted(trace, key=lambda r: r.arrival_s))
    cache = KVCache.empty(model, max_batch, _max_len(trace))
    active: list[Served] = []
    last = torch.empty(0, dtype=torch.long, device=cache.lengths.device)
    served = []
    while pending or active:
        if not active:
            _wait_until(now, pending[0].arrival_s)
        joining = [Served(r) for r in _arrived(pending, now(), max_batch - len(active))]
        if joining:
            first = prefill(model, cache, [s.request.prompt for s in joining], len(active))
            first = first.argmax(-1)
            now_s = now()
            for s, token in zip(joining, first.tolist(), strict=True):
                s.add(token, now_s)
            active, last = active + joining, torch.cat([last, first])
            served += joining
        last = _retire(active, last, cache)
        if active:
            last = cached_forward(model, cache, last[:, None])[:, -1].argmax(-1)
            now_s = now()
            for s, token in zip(active, last.tolist(), strict=True):
                s.add(token, now_s)
    return sorted(served, key=lambda s: s.request.request_id)


def served_frame(served: list[Served]) -> pd.DataFrame:
    """One row a request: arrival, first token, finish, TTFT and time per output token (s)."""
    frame = pd.DataFrame(
        {
            "request_id": [s.request.request_id for s in served],
            "arrival_s": [s.request.arrival_s for s in served],
            "first_token_s": [s.first_token_s for s in served],
            "finish_s": [s.finish_s for s in served],
            "new_tokens": [len(s.tokens) for s in served],
        }
    ).set_index("request_id")
    frame["ttft_s"] = frame.first_token_s - frame.arrival_s
    decode_tokens = (frame.new_tokens - 1).where(frame.new_tokens > 1)
    frame["tpot_s"] = (frame.finish_s - frame.first_token_s) / decode_tokens
    return frame.sort_index()


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Throughput (output tokens/s from first arrival to last finish), TTFT/TPOT p50 and p99."""
    span = frame.finish_s.max() - frame.arrival_s.min()
    summary = {"tokens_per_s": frame.new_tokens.sum() / span}
    for metric in ("ttft_s", "tpot_s"):
        values = frame[metric].dropna()
        summary |= {f"{metric}_p50": values.quantile(0.5), f"{metric}_p99": values.quantile(0.99)}
    return summary
