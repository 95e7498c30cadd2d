"""Small models on lab 03's blocks (built in lab 04, used by labs 04, 06, 14 and lab 07's workers).

A GPT-2-style causal LM sized per profile, the same GPT from lab 03's blocks and its FLOPs per
token (lab 04; lab 14 decodes with them), and the small feedback classifier that lab 06 compares
with Keras and lab 07 trains with DDP and FSDP. transformers is imported only where a GPT-2 is
built, so the classifier's torchrun workers start without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from llmlab.attention import EncoderBlock, padding_mask
from llmlab.config import resolve_profile
from llmlab.flops import flops_per_token

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedModel

# Sizes per profile. gpu is GPT-2 small's shape: big enough matmuls to keep an H100 busy;
# smoke and cpu are sized to learn something in seconds or minutes on 2 cores. No dropout:
# pretraining runs are short next to the data (nanoGPT's choice too); overfitting is caught
# by early stopping on validation loss.
GPT_SIZES = {
    "smoke": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 64},
    # cpu: two layers, since on a million tokens and minutes of 2 cores a shallower GPT taking
    # more steps learns more per FLOP than a deeper one (lab 04 asserts it beats the bigram).
    "cpu": {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128},
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
    from transformers import GPT2Config

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
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # the class name maps to no loss; skip the fallback warning
    return model


def _matmul_weight_count(model: nn.Module) -> int:
    """Number of weights that take part in a matrix multiply: every Linear and GPT-2 Conv1D."""
    from transformers.pytorch_utils import Conv1D

    layers = (module for module in model.modules() if isinstance(module, (nn.Linear, Conv1D)))
    return sum(layer.weight.numel() for layer in layers)


def gpt_flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token of a GPT-2 model: 6 per matmul weight, plus attention.

    N counts the block matmuls and the output layer (`lm_head`), not the embeddings, whose
    lookups multiply nothing, nor biases and LayerNorm gains (PaLM appendix B, nanoGPT).
    """
    config = model.config
    head_dim = config.n_embd // config.n_head
    n_matmul = _matmul_weight_count(model)
    return flops_per_token(n_matmul, config.n_layer, config.n_head, head_dim, seq_len)


class BlockGPT(nn.Module):
    """GPT-2 from lab 03's blocks: embeddings, causal pre-norm blocks, final norm, output layer."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        d = config.n_embd
        self.tokens = nn.Embedding(config.vocab_size, d)
        self.positions = nn.Embedding(config.n_positions, d)
        self.blocks = nn.ModuleList(
            EncoderBlock(
                d,
                config.n_head,
                4 * d,
                dropout=config.resid_pdrop,
                norm_first=True,
                layer_norm_eps=config.layer_norm_epsilon,
                gelu_approximate="tanh",
            )
            for _ in range(config.n_layer)
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.head = nn.Linear(d, config.vocab_size, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        """(batch, seq) token ids -> (batch, seq, vocab) next-token logits."""
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.norm(x))


class FeedbackClassifier(nn.Module):
    """Embeddings, lab 03's encoder blocks, mean pooling over real tokens, a linear head."""

    def __init__(self, vocab_size: int, seq_len: int, dim: int, n_layers: int, n_classes: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(seq_len, dim)
        # dropout=0: DDP and one process then compute the same function, not just alike ones.
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, n_heads=4, d_ff=2 * dim, dropout=0.0) for _ in range(n_layers)
        )
        self.head = nn.Linear(dim, n_classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(batch, seq) token ids -> (batch, n_classes) logits."""
        keep = input_ids != 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x, padding_mask(keep))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


@torch.no_grad()
def copy_gpt2_weights(ours: BlockGPT, theirs: PreTrainedModel) -> BlockGPT:
    """Load a Hugging Face GPT-2's weights into a BlockGPT (GPT-2's Conv1D stores W transposed)."""
    d, hf = theirs.config.n_embd, theirs.transformer
    state = {
        "tokens.weight": hf.wte.weight,
        "positions.weight": hf.wpe.weight,
        "norm.weight": hf.ln_f.weight,
        "norm.bias": hf.ln_f.bias,
        "head.weight": theirs.lm_head.weight,
    }
    for i, layer in enumerate(hf.h):
        ours_to_theirs = {
            "attention.out": layer.attn.c_proj,
            "feed_forward.0": layer.mlp.c_fc,
            "feed_forward.2": layer.mlp.c_proj,
        }
        for name, conv in ours_to_theirs.items():
            state |= {
                f"blocks.{i}.{name}.weight": conv.weight.T,
                f"blocks.{i}.{name}.bias": conv.bias,
            }
        qkv_weights = layer.attn.c_attn.weight.split(d, 1)
        qkv_biases = layer.attn.c_attn.bias.split(d)
        for name, weight, bias in zip(
            ("query", "key", "value"), qkv_weights, qkv_biases, strict=True
        ):
            state |= {f"blocks.{i}.attention.{name}.weight": weight.T}
            state |= {f"blocks.{i}.attention.{name}.bias": bias}
        for ours_norm, theirs_norm in (("norm1", layer.ln_1), ("norm2", layer.ln_2)):
            state |= {f"blocks.{i}.{ours_norm}.{k}": v for k, v in theirs_norm.state_dict().items()}
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return ours.to(theirs.device)
