"""Tests of llmlab.batching: the trace, and both schedulers against decoding each request alone."""

from __future__ import annotations

import pytest
import torch

from llmlab.batching import (
    continuous_batching,
    request_trace,
    served_frame,
    static_batching,
    summarize,
)
from llmlab.generation import generate_cached
from llmlab.models import BlockGPT, build_gpt, copy_gpt2_weights, gpt_config

VOCAB = 300


@pytest.fixture(scope="module")
def model() -> BlockGPT:
    """A tiny random BlockGPT."""
    torch.manual_seed(0)
    config = gpt_config("smoke", VOCAB, eos_token_id=0)
    return copy_gpt2_weights(BlockGPT(config), build_gpt(config)).eval()


@pytest.fixture(scope="module")
def trace():
    """Ten requests arriving at once-ish, prompts 2-10 tokens, outputs 1-12 tokens."""
    return request_trace(10, 500.0, torch.randint(0, VOCAB, (500,)), (2, 10), (1, 12), seed=3)


def test_trace_is_reproducible_and_in_range(trace):
    again = request_trace(10, 500.0, torch.randint(0, VOCAB, (500,)), (2, 10), (1, 12), seed=3)
    assert [r.arrival_s for r in trace] == [r.arrival_s for r in again]
    assert all(2 <= len(r.prompt) <= 10 and 1 <= r.max_new_tokens <= 12 for r in trace)
    assert [r.arrival_s for r in trace] == sorted(r.arrival_s for r in trace)
    assert len({len(r.prompt) for r in trace}) > 1  # mixed lengths: padding is exercised


@pytest.mark.parametrize("scheduler", [static_batching, continuous_batching])
def test_each_request_gets_the_tokens_it_gets_alone(model, trace, scheduler):
    served = scheduler(model, trace, max_batch=4)
    assert sorted(s.request.request_id for s in served) == list(range(len(trace)))
    for s in served:
        alone = generate_cached(model, s.request.prompt, s.request.max_new_tokens)
        assert s.tokens == alone.tolist(), s.request.request_id


def test_metrics_are_consistent(model, trace):
    frame = served_frame(continuous_batching(model, trace, max_batch=3))
    assert (frame.first_token_s >= frame.arrival_s).all()
    assert (frame.finish_s >= frame.first_token_s).all()
    assert frame.new_tokens.tolist() == [r.max_new_tokens for r in trace]
    summary = summarize(frame)
    assert summary["ttft_s_p50"] <= summary["ttft_s_p99"]
    assert summary["tokens_per_s"] > 0
