"""Fine-tuning helpers: freeze all but the top block, and an exact cached-activation speed-up.

Plain top-block fine-tuning (`freeze_below_top`) runs the whole network forward at every step,
although the frozen layers compute the same output for a text every epoch. The speed-up runs
them once (`top_block_inputs`) and trains on the cached input of the top block
(`TopBlockClassifier`), computing only the row of the top block the head reads: the `[CLS]`
row for BERT, the last real token's row for GPT-2. The other positions still enter as keys and
values, so every top-block weight trains; only outputs nobody reads are skipped.
`shortcut_error` checks the speed-up against the ordinary forward pass.
Supported: Hugging Face `BertForSequenceClassification` and `GPT2ForSequenceClassification`
(also with LoRA layers from peft inside the top block: they are called like the modules they wrap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from llmlab.attention import padding_mask, scaled_dot_product_attention


def _check_supported(model: nn.Module) -> str:
    """The model's type, or a clear error for an architecture the row computation lacks."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TOP_BLOCK:
        raise ValueError(f"top-block fine-tuning supports {sorted(TOP_BLOCK)}, got {model_type!r}")
    return model_type


def top_modules(model: nn.Module) -> list[nn.Module]:
    """The modules top-block fine-tuning trains: top block, final norm or pooler, and the head."""
    return TOP_BLOCK[_check_supported(model)][1](model)


def freeze_below_top(model: nn.Module) -> int:
    """Freeze every weight except the top block, final norm/pooler and head; trainable count."""
    model.requires_grad_(False)
    for module in top_modules(model):
        module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    n_heads: int,
    dropout_p: float,
) -> torch.Tensor:
    """Multi-head attention of a few query rows over all unpadded key positions."""
    batch, _, width = key.shape

    def heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(batch, -1, n_heads, width // n_heads).transpose(1, 2)

    attended, _ = scaled_dot_product_attention(
        heads(query), heads(key), heads(value), padding_mask(attention_mask), dropout_p=dropout_p
    )
    return attended.transpose(1, 2).reshape(batch, -1, width)


def bert_top_block_logits(
    model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Post-norm BERT layer for the [CLS] row only, then pooler and classifier."""
    layer = model.bert.encoder.layer[-1]
    attention = layer.attention.self
    dropout_p = attention.dropout.p if model.training else 0.0
    cls = hidden[:, :1]
    attended = _attend(
        attention.query(cls),
        attention.key(hidden),
        attention.value(hidden),
        mask,
        attention.num_attention_heads,
        dropout_p,
    )
    x = layer.attention.output(attended, cls)  # output projection, dropout, residual, LayerNorm
    x = layer.output(layer.intermediate(x), x)  # feed-forward, dropout, residual, LayerNorm
    return model.classifier(model.dropout(model.bert.pooler(x)))


def gpt2_top_block_logits(
    model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Pre-norm GPT-2 block for the last real token's row only, then final LayerNorm and score."""
    block = model.transformer.h[-1]
    rows = torch.arange(len(hidden), device=hidden.device)
    last = mask.sum(dim=1) - 1  # padding is on the right
    query, key, value = block.attn.c_attn(block.ln_1(hidden)).split(hidden.size(-1), dim=-1)
    dropout_p = block.attn.attn_dropout.p if model.training else 0.0
    # The last token may attend to every real token, so the causal mask is the padding mask.
    attended = _attend(query[rows, last, None], key, value, mask, block.attn.num_heads, dropout_p)
    x = hidden[rows, last, None] + block.attn.resid_dropout(block.attn.c_proj(attended))
    x = x + block.mlp(block.ln_2(x))
    return model.score(model.transformer.ln_f(x[:, 0]))


LogitsFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
TOP_BLOCK: dict[str, tuple[LogitsFn, Callable[[nn.Module], list[nn.Module]]]] = {
    "bert": (
        bert_top_block_logits,
        lambda m: [m.bert.encoder.layer[-1], m.bert.pooler, m.classifier],
    ),
    "gpt2": (gpt2_top_block_logits, lambda m: [m.transformer.h[-1], m.transformer.ln_f, m.score]),
}


class TopBlockClassifier(nn.Module):
    """`model` fed the cached input of its top block: logits from `top_block_inputs` output.

    It leaves `requires_grad` as it finds it: call `freeze_below_top` for plain top-block
    training, or let peft mark its adapters.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.logits_fn = TOP_BLOCK[_check_supported(model)][0]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes); cached rows are cut to the batch's longest text (exact)."""
        length = int(attention_mask.sum(dim=1).max())
        return self.logits_fn(self.model, hidden[:, :length], attention_mask[:, :length])


class _ReachedTopBlock(Exception):
    """Raised by a pre-hook to stop the forward pass once the top block's input is known."""


def _token_length(model: nn.Module, max_length: int) -> int:
    """max_length, capped by the model's position table (GPT-2's n_positions)."""
    return min(max_length, getattr(model.config, "n_positions", max_length))


@torch.no_grad()
def top_block_inputs(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    max_length: int,
    pairs: Sequence[str] | None = None,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Run the frozen layers once: the hidden states entering the top block, per text.

    Returns `hidden` (texts, max_length, width) and `attention_mask`, padded on the right.
    `pairs` gives a second text per row ([CLS] A [SEP] B). A pre-hook on the top block stops
    the forward pass by raising, so the top block itself does not run.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} second texts")
    if not texts:
        raise ValueError("no texts to cache")
    device = next(model.parameters()).device
    model.eval()
    top_block = top_modules(model)[0]
    entering: dict[str, torch.Tensor] = {}

    def stop_at_top_block(module: nn.Module, args: tuple, kwargs: dict) -> None:
        entering["hidden"] = args[0] if args else kwargs["hidden_states"]
        raise _ReachedTopBlock

    length = _token_length(model, max_length)
    hidden = torch.zeros(len(texts), length, model.config.hidden_size)
    attention_mask = torch.zeros(len(texts), length, dtype=torch.long)
    order = np.argsort([len(text) for text in texts])  # similar lengths together: less padding
    hook = top_block.register_forward_pre_hook(stop_at_top_block, with_kwargs=True)
    try:
        for start in range(0, len(texts), batch_size):
            index = torch.from_numpy(order[start : start + batch_size])
            second = None if pairs is None else [pairs[i] for i in index]
            batch = tokenizer(
                [texts[i] for i in index],
                second,
                truncation=True,
                max_length=length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            try:
                model(**batch)
            except _ReachedTopBlock:
                states = entering["hidden"]
            else:
                raise RuntimeError("the forward pass never reached the top block")
            hidden[index, : states.size(1)] = states.float().cpu()
            attention_mask[index, : states.size(1)] = batch["attention_mask"].cpu()
    finally:
        hook.remove()
    return {"hidden": hidden, "attention_mask": attention_mask}


def token_inputs(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    max_length: int,
    pairs: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to max_length, for the ordinary forward pass."""
    batch = tokenizer(
        list(texts),
        None if pairs is None else list(pairs),
        truncation=True,
        max_length=_token_length(model, max_length),
        padding="max_length",
        return_tensors="pt",
    )
    return {
        name: batch[name]
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in batch
    }


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut right-padded inputs (ids, masks, cached states) to the batch's longest row: exact."""
    length = int(batch["attention_mask"].sum(dim=1).max())
    return {name: value[:, :length] if value.dim() >= 2 else value for name, value in batch.items()}


@torch.no_grad()
def shortcut_error(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    max_length: int,
    pairs: Sequence[str] | None = None,
) -> float:
    """Largest |logit difference| between the cached-activation path and the ordinary forward."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cached = top_block_inputs(model, tokenizer, texts, max_length, pairs)
    shortcut = TopBlockClassifier(model)(**{k: v.to(device) for k, v in cached.items()})
    batch = tokenizer(
        list(texts),
        None if pairs is None else list(pairs),
        truncation=True,
        max_length=_token_length(model, max_length),
        padding=True,
        return_tensors="pt",
    ).to(device)
    plain = model(**batch).logits
    model.train(was_training)
    return float((shortcut.float() - plain.float()).abs().max())
