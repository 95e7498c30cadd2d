"""Speculative decoding (lab 14): a small draft proposes k tokens, the target checks them at once.

Greedy only, so the output is exactly the target's own greedy output: every proposed token is
kept only while it equals the token the target would have chosen, and the first mismatch is
replaced by the target's choice. Both models keep a KV cache (`past_key_values`) that is cut
back to the accepted tokens after each round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache


@dataclass
class SpeculativeStats:
    """What one speculative generation did: rounds, proposals, acceptances, forward passes."""

    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Share of the draft's proposals that the target kept."""
        return self.accepted / max(self.proposed, 1)


class _CachedModel:
    """A causal LM with its KV cache: feeds the tokens its cache lacks, cuts the cache back."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.cache = DynamicCache()
        self.calls = 0

    @property
    def length(self) -> int:
        """Tokens held in the cache."""
        return self.cache.get_seq_length()

    def logits(self, sequence: Tensor) -> Tensor:
        """Feed sequence[length:] (batch 1); (new tokens, vocab) logits of those positions."""
        new = sequence[:, self.length :]
        out = self.model(input_ids=new, past_key_values=self.cache, use_cache=True)
        self.cache, self.calls = out.past_key_values, self.calls + 1
        return out.logits[0].float()

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens of the cache."""
        if self.length > length:
            # A negative count removes that many tokens in every transformers 5 release.
            self.cache.crop(length - self.length)


def _check_room(model: nn.Module, input_ids: Tensor, max_new_tokens: int, k: int) -> None:
    """Refuse requests that would run past the model's context (positions are learned)."""
    if input_ids.dim() != 2 or input_ids.size(0) != 1:
        raise ValueError(f"input_ids must be one sequence (1, n), got {tuple(input_ids.shape)}")
    room = getattr(model.config, "n_positions", None)
    if room is not None and input_ids.size(1) + max_new_tokens + k > room:
        raise ValueError(
            f"{input_ids.size(1)} prompt + {max_new_tokens} new + {k} proposed tokens exceed "
            f"the context of {room}"
        )


def _finish(sequence: Tensor, prompt_length: int, max_new_tokens: int, eos: int | None) -> Tensor:
    """Cut the generated part at max_new_tokens and just after the first EOS."""
    generated = sequence[0, prompt_length : prompt_length + max_new_tokens]
    if eos is not None and (generated == eos).any():
        generated = generated[: int((generated == eos).nonzero()[0]) + 1]
    return torch.cat([sequence[0, :prompt_length], generated])[None]


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int) -> Tensor:
    """The target alone: one cached forward per token, greedy (the baseline, same code path)."""
    _check_room(model, input_ids, max_new_tokens, 0)
    cached, sequence = _CachedModel(model), input_ids
    eos = model.config.eos_token_id
    for _ in range(max_new_tokens):
        token = cached.logits(sequence)[-1].argmax()
        sequence = torch.cat([sequence, token.view(1, 1)], dim=1)
        if eos is not None and token.item() == eos:
            break
    return sequence


@torch.no_grad()
def speculative_generate(
    target: nn.Module, draft: nn.Module, input_ids: Tensor, max_new_tokens: int, k: int
) -> tuple[Tensor, SpeculativeStats]:
    """Greedy speculative decoding: the same tokens as `greedy_generate(target, ...)`, fewer
    target passes when the draft guesses well. Returns (1, prompt + new) ids and the stats."""
    if k < 1:
        raise ValueError(f"k must be >= 1 proposed tokens, got {k}")
    _check_room(target, input_ids, max_new_tokens, k)
    big, small, stats = _CachedModel(target), _CachedModel(draft), SpeculativeStats()
    eos, prompt_length, sequence = target.config.eos_token_id, input_ids.size(1), input_ids
    while sequence.size(1) - prompt_length < max_new_tokens:
        # The draft proposes k tokens, one cached forward each.
        proposal = sequence
        for _ in range(k):
            token = small.logits(proposal)[-1].argmax()
            proposal = torch.cat([proposal, token.view(1, 1)], dim=1)
        proposed = proposal[0, sequence.size(1) :]
        # The target scores the last accepted token and all k proposals in one forward pass:
        # its logits at each position say which token it would have chosen there.
        start = big.length
        chosen = big.logits(proposal)[sequence.size(1) - 1 - start :].argmax(-1)
        agree = (chosen[:k] == proposed).long().cumprod(0)
        n_accepted = int(agree.sum())
        # Keep the accepted proposals and the target's own next token (a fix or a bonus).
        kept = torch.cat([proposed[:n_accepted], chosen[n_accepted : n_accepted + 1]])
        sequence = torch.cat([sequence, kept[None]], dim=1)
        big.truncate(sequence.size(1) - 1)
        small.truncate(sequence.size(1) - 1)
        stats.rounds += 1
        stats.proposed += k
        stats.accepted += n_accepted
        if eos is not None and (kept == eos).any():
            break
    stats.target_calls, stats.draft_calls = big.calls, small.calls
    return _finish(sequence, prompt_length, max_new_tokens, eos), stats
