"""GPT builders: every profile's config constructs; the gpu-sized model trains a step on CPU."""

import pytest
import torch
from transformers import GPT2Config

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
    # 12 layers of 12 d^2 matmul weights plus the 256 x 768 output layer; 6N dominates at T=1024.
    n_matmul = 12 * 12 * 768**2 + 256 * 768
    assert gpt_flops_per_token(model, 1024) == 6 * n_matmul + 12 * 12 * 12 * 64 * 1024


def test_flops_count_only_matmul_weights():
    """6N counts the weights that multiply: no embeddings, biases or LayerNorm gains."""
    config = GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=8, tie_word_embeddings=False
    )
    model = build_gpt(config)
    # Per layer: c_attn 16x48, attn c_proj 16x16, mlp c_fc 16x64, mlp c_proj 64x16.
    per_layer = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16
    n_matmul = 2 * per_layer + 64 * 16  # plus lm_head; the untied token embedding only looks up
    attention = 12 * 2 * 2 * 8 * 8  # 12 L H Q T with Q = 16 / 2
    assert gpt_flops_per_token(model, 8) == 6 * n_matmul + attention == 46080
