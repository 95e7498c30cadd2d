"""Honest latency measurement: warm up, repeat, report medians and tails in one process."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed call, with the summary statistics labs report."""

    samples: tuple[float, ...]
    threads: int

    @property
    def p50(self) -> float:
        """Median seconds per call: robust to the odd slow call from a busy machine."""
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        """95th percentile seconds per call (the tail a user notices)."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def mean(self) -> float:
        """Mean seconds per call."""
        return statistics.fmean(self.samples)

    def as_ms(self) -> dict[str, float]:
        """p50, p95 and mean in milliseconds, for tables."""
        return {"p50_ms": 1e3 * self.p50, "p95_ms": 1e3 * self.p95, "mean_ms": 1e3 * self.mean}

    def __str__(self) -> str:
        return (
            f"p50 {1e3 * self.p50:.2f} ms, p95 {1e3 * self.p95:.2f} ms "
            f"({len(self.samples)} runs, {self.threads} threads)"
        )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Temporarily run torch's intra-op pool with `threads` threads (None: leave it as is)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _cuda_synchronize() -> None:
    """Wait for queued GPU kernels, otherwise we would time only the launch."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_calls(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds, so load from other processes hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    if not fns:
        raise ValueError("nothing to time: fns is empty")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch_threads(threads) as used_threads:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        _cuda_synchronize()
        # A collection in the middle of a timed call would be charged to the model.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    _cuda_synchronize()
                    samples[name].append(time.perf_counter() - start)
        finally:
            if gc_was_enabled:
                gc.enable()
    return {name: Timing(tuple(times), used_threads) for name, times in samples.items()}


def time_call(
    fn: Callable[[], Any], repeats: int = 20, warmup: int = 3, threads: int | None = None
) -> Timing:
    """Call `fn` `warmup` times untimed, then time `repeats` calls with `threads` torch threads."""
    return time_calls({"fn": fn}, repeats, warmup, threads)["fn"]
