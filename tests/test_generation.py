"""Tests of llmlab.generation: sampling filters and the KV cache, on a tiny random GPT."""

from __future__ import annotations

import pytest
import torch

from llmlab.generation import (
    KVCache,
    cached_forward,
    filter_logits,
    generate_cached,
    next_token,
    prefill,
)
from llmlab.models import BlockGPT, build_gpt, copy_gpt2_weights, gpt_config

VOCAB = 300


@pytest.fixture(scope="module")
def models():
    """A tiny random Hugging Face GPT-2 and the same weights in a BlockGPT."""
    torch.manual_seed(0)
    config = gpt_config("smoke", VOCAB, eos_token_id=0)
    theirs = build_gpt(config).eval()
    return theirs, copy_gpt2_weights(BlockGPT(config), theirs).eval()


def test_filters_keep_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, top_k=2)[0, :2]).any()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # p(4.0) = 0.64 < 0.7
    with pytest.raises(ValueError):
        filter_logits(logits, temperature=0)


def test_greedy_next_token_is_argmax():
    logits = torch.randn(3, 10)
    assert torch.equal(next_token(logits), logits.argmax(-1))


def test_cached_decode_equals_full_recompute(models):
    _, ours = models
    ids = torch.randint(0, VOCAB, (2, 20))
    cache = KVCache.empty(ours, 2)
    prompt_logits = cached_forward(ours, cache, ids[:, :7])
    steps = [cached_forward(ours, cache, ids[:, i : i + 1]) for i in range(7, 20)]
    with torch.no_grad():
        full = ours(ids)
    assert torch.allclose(torch.cat([prompt_logits, *steps], 1), full, atol=1e-5)
    assert cache.lengths.tolist() == [20, 20]


def test_off_by_one_position_changes_the_logits(models):
    _, ours = models
    ids = torch.randint(0, VOCAB, (1, 12))
    cache = KVCache.empty(ours, 1)
    cached_forward(ours, cache, ids[:, :11])
    cache.lengths += 1  # a cache that believes it holds one token more than it does
    wrong = cached_forward(ours, cache, ids[:, 11:])[0, -1]
    with torch.no_grad():
        right = ours(ids)[0, -1]
    assert not torch.allclose(wrong, right, atol=1e-3)


def test_prefill_of_padded_rows_matches_each_prompt_alone(models):
    _, ours = models
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (3, 9, 5)]
    cache = KVCache.empty(ours, 4)
    cache.lengths[:] = 7  # stale lengths from an earlier request must not matter
    last = prefill(ours, cache, prompts, start_row=1)
    with torch.no_grad():
        alone = torch.stack([ours(p[None])[0, -1] for p in prompts])
    assert torch.allclose(last, alone, atol=1e-5)
    assert cache.lengths.tolist() == [7, 3, 9, 5]


def test_generate_cached_matches_transformers_greedy(models):
    theirs, ours = models
    prompt = torch.randint(1, VOCAB, (6,))
    new = generate_cached(ours, prompt, 12)
    reference = theirs.generate(prompt[None], max_new_tokens=12, do_sample=False, pad_token_id=0)
    produced = reference[0, len(prompt) :]
    assert new[: len(produced)].tolist() == produced.tolist()


def test_cache_bytes_follow_the_formula(models):
    _, ours = models
    cache = KVCache.empty(ours, 3, max_len=10)
    heads, head_size = ours.blocks[0].attention.n_heads, ours.blocks[0].attention.d_head
    assert cache.nbytes() == 2 * len(ours.blocks) * heads * head_size * 3 * 10 * 4
