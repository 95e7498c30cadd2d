"""Small model builders: a GPT-2-style causal LM sized per profile, and its FLOPs per token."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedModel

from llmlab.config import resolve_profile
from llmlab.train import flops_per_token

# Sizes per profile. gpu is GPT-2 small's shape: big enough matmuls to keep an H100 busy;
# smoke and cpu are sized to learn something in seconds or minutes on 2 cores. No dropout:
# pretraining runs are short next to the data (nanoGPT's choice too); overfitting is caught
# by early stopping on validation loss.
GPT_SIZES = {
    "smoke": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 64},
    "cpu": {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 128},
    "gpu": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
}


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the output matmul has tensor-core friendly shapes."""
    return -(-vocab_size // multiple) * multiple


def gpt_config(
    profile: str, vocab_size: int, eos_token_id: int | None = None, dropout: float = 0.0
) -> GPT2Config:
    """GPT2Config of the profile's size, padded vocabulary, our EOS id, untied output layer.

    GPT-2 ties the output layer to the input embedding; untied, our small models leave the
    unigram plateau in far fewer steps, for vocab_size x n_embd more parameters.
    """
    return GPT2Config(
        **GPT_SIZES[resolve_profile(profile)],
        vocab_size=padded_vocab_size(vocab_size),
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def build_gpt(config: GPT2Config) -> PreTrainedModel:
    """Randomly initialised GPT-2 LM using PyTorch SDPA (flash attention kernels on GPU)."""
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # the class name maps to no loss; skip the fallback warning
    return model


def gpt_flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token of a GPT-2 model (positional embeddings do no matmul)."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    n_params -= model.transformer.wpe.weight.numel()
    head_dim = config.n_embd // config.n_head
    return flops_per_token(n_params, config.n_layer, config.n_head, head_dim, seq_len)
