"""llmlab.speculative on tiny random GPTs: the target's greedy tokens, fewer target passes."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.models import build_gpt, gpt_config
from llmlab.speculative import greedy_generate, speculative_generate

VOCAB, EOS, NEW = 300, 299, 24


def tiny_gpt(seed: int, eos: int = EOS):
    torch.manual_seed(seed)
    return build_gpt(gpt_config("smoke", VOCAB, eos_token_id=eos)).eval()


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 290, (1, 9), generator=torch.Generator().manual_seed(5))


def hf_greedy(model, prompt, new=NEW):
    return model.generate(prompt, max_new_tokens=new, do_sample=False, pad_token_id=0)


def test_greedy_generate_equals_transformers(prompt):
    target = tiny_gpt(0)
    assert torch.equal(greedy_generate(target, prompt, NEW), hf_greedy(target, prompt))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_output_is_the_targets_whatever_the_draft(prompt, k):
    """Catches accepting a proposal without comparing it with the target's choice."""
    target, draft = tiny_gpt(0), tiny_gpt(1)
    out, stats = speculative_generate(target, draft, prompt, NEW, k)
    assert torch.equal(out, hf_greedy(target, prompt))
    assert stats.acceptance_rate < 0.5  # a random draft rarely agrees with a random target


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_perfect_draft_saves_target_passes(prompt, k):
    """Catches a verifier that scores proposals one pass each, or drops the bonus token."""
    target = tiny_gpt(0)
    out, stats = speculative_generate(target, target, prompt, NEW, k)
    assert torch.equal(out, hf_greedy(target, prompt))
    assert stats.acceptance_rate == 1.0
    assert stats.target_calls == math.ceil(NEW / (k + 1))


def test_a_close_draft_agrees_partly_and_stays_exact(prompt):
    """A draft near the target (weights off by 20 %) is partly accepted: catches cache cuts
    that keep a rejected proposal's keys (the output would then drift from the target's)."""
    target, draft = tiny_gpt(0), tiny_gpt(0)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.mul_(1 + 0.2 * torch.randn(weight.shape, generator=noise))
    out, stats = speculative_generate(target, draft, prompt, 40, 3)
    assert torch.equal(out, hf_greedy(target, prompt, 40))
    assert 0 < stats.accepted < stats.proposed


def test_stops_at_eos_like_transformers(prompt):
    reference = hf_greedy(tiny_gpt(0), prompt)
    eos = int(reference[0, prompt.size(1) + 5])  # the token greedy decoding emits sixth
    target, draft = tiny_gpt(0, eos=eos), tiny_gpt(1, eos=eos)
    out, _ = speculative_generate(target, draft, prompt, NEW, 4)
    assert torch.equal(out, hf_greedy(target, prompt))
    assert out.size(1) <= prompt.size(1) + 6


def test_refuses_to_run_past_the_context(prompt):
    target = tiny_gpt(0)
    room = target.config.n_positions
    with pytest.raises(ValueError, match="exceed the context"):
        speculative_generate(target, target, prompt, room - prompt.size(1), 2)
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(target, target, prompt, 4, 0)
