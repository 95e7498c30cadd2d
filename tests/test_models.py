"""GPT builders: every profile's config constructs; the gpu-sized model trains a step on CPU."""

import pytest
import torch

from llmlab.models import GPT_SIZES, build_gpt, gpt_config, gpt_flops_per_token, padded_vocab_size


def test_vocab_is_padded_to_a_multiple_of_64():
    assert padded_vocab_size(1000) == 1024
    assert padded_vocab_size(1024) == 1024


@pytest.mark.parametrize("profile", sorted(GPT_SIZES))
def test_profile_configs_construct(profile):
    config = gpt_config(profile, vocab_size=1000, eos_token_id=0)
    assert config.vocab_size == 1024 and config.n_embd % config.n_head == 0
    assert config.eos_token_id == 0


def test_gpu_sized_model_runs_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = build_gpt(gpt_config("gpu", vocab_size=256))
    assert model.config._attn_implementation == "sdpa"
    assert model.config.n_layer == 12 and model.config.n_positions == 1024
    tokens = torch.randint(0, 256, (1, 16))
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.h[0].attn.c_attn.weight.grad is not None
    # ~85M parameters without GPT-2's 50k vocabulary; 6N dominates at T=1024.
    n_params = sum(p.numel() for p in model.parameters()) - 1024 * 768
    assert gpt_flops_per_token(model, 1024) == 6 * n_params + 12 * 12 * 12 * 64 * 1024
