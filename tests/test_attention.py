"""Attention from the formula agrees with PyTorch and with a BERT layer from transformers."""

import pytest
import torch
import torch.nn.functional as F

from llmlab.attention import (
    EncoderBlock,
    MultiHeadAttention,
    causal_mask,
    encoder_block_from_bert,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positions,
)


def qkv(batch: int = 2, heads: int = 3, seq: int = 5, width: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, seq, width, generator=generator) for _ in range(3)]


def test_attention_matches_pytorch_without_mask():
    q, k, v = qkv()
    ours, weights = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(ours, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 5)), "weights rows must sum to 1"


def test_attention_matches_pytorch_with_padding_and_causal_masks():
    q, k, v = qkv()
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    ours, weights = scaled_dot_product_attention(q, k, v, mask=mask, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal_mask(5))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert weights[1, :, :, 3:].abs().max() == 0, "padded keys must get zero weight"
    assert weights[..., 0, 1:].abs().max() == 0, "the first token may only see itself"


def test_causal_flag_equals_pytorch_is_causal():
    q, k, v = qkv()
    ours, _ = scaled_dot_product_attention(q, k, v, causal=True)
    assert torch.allclose(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_attention_rejects_bad_input():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match="widths differ"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="batch, seq"):
        padding_mask(torch.ones(2, 1, 5))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_multi_head_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model=12, n_heads=3).eval()
    theirs = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(
            torch.cat([ours.query.weight, ours.key.weight, ours.value.weight])
        )
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        theirs.out_proj.load_state_dict(ours.out.state_dict())
    x = torch.randn(2, 4, 12)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    expected, _ = theirs(x, x, x, key_padding_mask=keep == 0)
    assert torch.allclose(ours(x, mask=padding_mask(keep)), expected, atol=1e-5)


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    block = EncoderBlock(d_model=8, n_heads=2, d_ff=16, norm_first=True).eval()
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 8)
    before, after = block(x, causal=True), block(changed, causal=True)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6), "past outputs saw the future"
    assert not torch.allclose(before[:, 4:], after[:, 4:]), "changed tokens should change outputs"


def test_encoder_block_reproduces_a_bert_layer():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    bert = BertModel(config).eval()
    input_ids = torch.randint(0, 50, (2, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        hidden = bert(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = hidden.hidden_states
        for i, layer in enumerate(bert.encoder.layer):
            block = encoder_block_from_bert(layer).eval()
            ours = block(hidden[i], mask=padding_mask(attention_mask))
            assert (ours - hidden[i + 1]).abs().max() < 1e-5, f"layer {i} differs from BERT"


def test_sinusoidal_positions_follow_the_formula():
    table = sinusoidal_positions(50, 16)
    assert table.shape == (50, 16)
    assert torch.allclose(table[0, 0::2], torch.zeros(8)) and torch.allclose(
        table[0, 1::2], torch.ones(8)
    ), "position 0 is sin(0)=0, cos(0)=1"
    # Dim pair i has frequency base^(-2i/d): dim 2 at position 3 is sin(3 / 10000^(2/16)).
    assert torch.isclose(table[3, 2], torch.sin(torch.tensor(3 / 10_000 ** (2 / 16))))
    # A fixed offset is a rotation of each sin/cos pair, so dot products depend only on distance.
    assert torch.isclose(table[10] @ table[13], table[30] @ table[33], atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positions(4, 5)
