"""Attention from the formula agrees with PyTorch and with a BERT layer from transformers."""

import pytest
import torch
import torch.nn.functional as F

from llmlab.attention import (
    EncoderBlock,
    MultiHeadAttention,
    causal_mask,
    decoder_block_from_torch,
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


def torch_decoder_layer(norm_first: bool) -> torch.nn.TransformerDecoderLayer:
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(
        d_model=16,
        nhead=4,
        dim_feedforward=32,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=norm_first,
    )
    # Random norm scales and shifts, so that a norm copied to the wrong place shows.
    for norm in (layer.norm1, layer.norm2, layer.norm3):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    return layer.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_torch_transformer_decoder_layer(norm_first):
    layer = torch_decoder_layer(norm_first)
    block = decoder_block_from_torch(layer).eval()
    target, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    target_keep = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    memory_keep = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        ours = block(target, memory, padding_mask(target_keep), padding_mask(memory_keep))
        cross_weights = block.cross_weights
        theirs = layer(
            target,
            memory,
            tgt_mask=~causal_mask(5),
            tgt_key_padding_mask=target_keep == 0,
            memory_key_padding_mask=memory_keep == 0,
        )
        ours_unmasked = block(target, memory)
        theirs_causal_only = layer(target, memory, tgt_mask=~causal_mask(5))
    real = target_keep.bool()  # padded target rows are never read; compare the real ones
    assert (ours - theirs)[real].abs().max() < 1e-5
    assert (ours_unmasked - theirs_causal_only).abs().max() < 1e-5
    assert cross_weights.shape == (2, 4, 5, 7)
    assert cross_weights[1, :, :, 4:].abs().max() == 0, "padded source tokens got weight"


def test_decoder_block_does_not_see_future_targets_but_sees_the_whole_source():
    block = decoder_block_from_torch(torch_decoder_layer(norm_first=True)).eval()
    target, memory = torch.randn(1, 6, 16), torch.randn(1, 4, 16)
    changed_target, changed_memory = target.clone(), memory.clone()
    changed_target[:, 4:] = torch.randn(1, 2, 16)
    changed_memory[:, -1] = torch.randn(16)
    with torch.no_grad():
        before = block(target, memory)
        after = block(changed_target, memory)
        other_source = block(target, changed_memory)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6), "past outputs saw the future"
    assert not torch.allclose(before[:, 4:], after[:, 4:]), "changed tokens should change outputs"
    # Cross-attention is not causal: the first target token reads the last source token too.
    assert not torch.allclose(before[:, 0], other_source[:, 0])


def test_decoder_block_from_torch_rejects_other_layers():
    with pytest.raises(ValueError, match="gelu"):
        decoder_block_from_torch(torch.nn.TransformerDecoderLayer(8, 2, batch_first=True))
    with pytest.raises(ValueError, match="batch_first"):
        decoder_block_from_torch(torch.nn.TransformerDecoderLayer(8, 2, activation="gelu"))
