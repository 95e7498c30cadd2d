import time

import pytest
import torch

from llmlab.bench import (
    Timing,
    all_reduce_bandwidth,
    time_call,
    time_calls,
    torch_threads,
    two_four_mask,
)


def test_time_call_measures_what_the_function_costs():
    fast = time_call(lambda: None, repeats=5, warmup=1)
    slow = time_call(lambda: time.sleep(0.01), repeats=5, warmup=1)
    assert len(slow.samples) == 5
    assert slow.p50 >= 0.01
    assert slow.p50 > 10 * fast.p50


def test_warmup_calls_are_not_timed():
    calls = []

    def first_call_is_slow():
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.05)

    timing = time_call(first_call_is_slow, repeats=4, warmup=1)
    assert len(calls) == 5
    assert max(timing.samples) < 0.05


def test_percentiles_of_known_samples():
    timing = Timing(samples=tuple(float(i) for i in range(1, 21)), threads=1)
    assert timing.p50 == 10.5
    assert timing.p95 == 19.0
    assert timing.mean == 10.5
    assert timing.as_ms()["p50_ms"] == 10500.0


def test_threads_are_set_during_the_call_and_restored():
    before = torch.get_num_threads()
    seen = []
    timing = time_call(lambda: seen.append(torch.get_num_threads()), repeats=2, warmup=0, threads=1)
    assert set(seen) == {1}
    assert timing.threads == 1
    assert torch.get_num_threads() == before


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass


def test_time_calls_interleaves_so_both_see_the_same_machine():
    order = []
    timings = time_calls(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1
    )
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert set(timings) == {"a", "b"}
    assert all(len(t.samples) == 3 for t in timings.values())


def test_two_four_mask_keeps_the_two_largest_of_every_four():
    weight = torch.tensor([[1.0, -4, 3, 2, 0.5, 0.1, -0.2, 9], [0.3, -0.1, 0.2, 0.05, 5, -6, 7, 8]])
    assert two_four_mask(weight).tolist() == [
        [False, True, True, False, True, False, False, True],
        [True, False, True, False, False, False, True, True],
    ]


def test_all_reduce_over_two_gloo_ranks_sums_right_and_measures_bandwidth():
    measured = all_reduce_bandwidth("gloo", world_size=2, size_mb=1, timeout_s=60)
    assert measured["sum_correct"] is True
    assert (measured["backend"], measured["world_size"]) == ("gloo", 2)
    # Two processes on one host exchange 1 MB through loopback: about 1 GB/s on two idle cores,
    # below memory bandwidth and above 1 MB per 100 ms even on a busy machine. A slip by a
    # factor of 1000 either way (ms for s, MB for GB) lands outside.
    assert 0.01 < measured["algbw_GBps"] < 40, measured
    assert measured["busbw_GBps"] == pytest.approx(measured["algbw_GBps"])  # 2(n-1)/n = 1
