"""`make gpu-check`'s generation checks (lab 14): generate() with a dynamic and a static KV
cache, and continuous against static batching of lab 14's schedulers on one request trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from llmlab.config import seed_everything

if TYPE_CHECKING:
    from llmlab.checkreport import CheckResult, Sizes

BATCHING_REQUESTS, BATCHING_MAX_BATCH, BATCHING_ROUNDS = 48, 8, 3


def _generation_calls(model: Any, prompts: torch.Tensor, sizes: Sizes) -> dict[str, Callable]:
    """Greedy generate() of one and of `new_tokens` tokens, with a dynamic and a static cache."""
    mask = torch.ones_like(prompts)

    def generate(new_tokens: int, cache: str | None) -> Callable[[], Any]:
        return lambda: model.generate(
            prompts,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # every row decodes every token, even past an EOS
            cache_implementation=cache,
        )

    return {
        f"{cache}_{tokens}": generate(tokens, None if cache == "dynamic" else cache)
        for cache in ("dynamic", "static")
        for tokens in (1, sizes.new_tokens)
    }


def check_generation(device: str, sizes: Sizes) -> CheckResult:
    """Lab 14's decoding: prefill and decode tokens/s of generate() with a dynamic KV cache and
    with a static one, which transformers compiles (CUDA graphs) for the decode steps on CUDA."""
    from llmlab.bench import time_calls
    from llmlab.models import build_gpt, gpt_config

    seed_everything(0)
    cuda = device == "cuda"
    config = gpt_config(sizes.gpt_profile, vocab_size=sizes.generation_vocab, eos_token_id=0)
    model = build_gpt(config).to(device, torch.bfloat16 if cuda else torch.float32).eval()
    model.generation_config.pad_token_id = 0
    shape = (sizes.generation_batch, sizes.prompt_tokens)
    prompts = torch.randint(1, sizes.generation_vocab, shape, device=device)
    calls = _generation_calls(model, prompts, sizes)
    # Warm-up compiles the static cache's decode step and records its CUDA graphs; the rounds
    # then interleave the four calls, so a busy moment hits all of them alike.
    timings = time_calls(calls, repeats=sizes.generation_repeats, warmup=2)
    seconds = {name: timing.p50 for name, timing in timings.items()}
    rows, new = sizes.generation_batch, sizes.new_tokens
    values: dict[str, Any] = {"batch": rows, "prompt": sizes.prompt_tokens, "new_tokens": new}
    for cache in ("dynamic", "static"):
        one, all_tokens = seconds[f"{cache}_1"], seconds[f"{cache}_{new}"]
        values[f"prefill_tokens_per_s_{cache}"] = rows * sizes.prompt_tokens / one
        values[f"decode_tokens_per_s_{cache}"] = rows * (new - 1) / max(all_tokens - one, 1e-9)
    values["static_compiled"] = hasattr(model, "_compiled_call")  # transformers' compiled forward
    decode_ratio = values["decode_tokens_per_s_static"] / values["decode_tokens_per_s_dynamic"]
    generate_ratio = seconds[f"dynamic_{new}"] / seconds[f"static_{new}"]
    values |= {"static_decode_speedup": decode_ratio, "static_generate_speedup": generate_ratio}
    dynamic, static = (calls[f"{cache}_{new}"]() for cache in ("dynamic", "static"))
    lengths = {dynamic.shape[1], static.shape[1]}
    claims = [(f"{new} new tokens a row", lengths == {sizes.prompt_tokens + new}, str(lengths))]
    if len(lengths) == 1:  # bf16 kernels differ between the two, so greedy tokens may too
        values["same_greedy_tokens"] = (dynamic == static).float().mean().item()
    if cuda:  # lab 14's claim on the gpu profile, and the decode steps the compile is for
        name = "static cache + compile generates faster than dynamic (lab 14)"
        claims.append((name, generate_ratio > 1, f"{generate_ratio:.2f}x"))
        name = "static cache + compile decodes >= dynamic tokens/s"
        claims.append((name, decode_ratio >= 1, f"{decode_ratio:.2f}x"))
    return values, claims


def check_batching(device: str, sizes: Sizes) -> CheckResult:
    """Lab 14's continuous batching against static batching: the same trace of requests (all
    arrived, output lengths up to 8 times apart), interleaved rounds; throughput and TTFT."""
    from llmlab import batching
    from llmlab.models import BlockGPT, gpt_config

    seed_everything(0)
    config = gpt_config(sizes.gpt_profile, vocab_size=sizes.generation_vocab, eos_token_id=0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = BlockGPT(config).to(device, dtype).eval()
    stream = torch.randint(1, sizes.generation_vocab, (4096,), device=device)
    longest = min(config.n_positions - sizes.prompt_tokens, 2 * sizes.new_tokens)
    trace = batching.request_trace(
        BATCHING_REQUESTS,
        rate_per_s=1e6,  # every request is waiting: throughput measures the scheduler
        tokens=stream,
        prompt_lengths=(sizes.prompt_tokens // 2, sizes.prompt_tokens),
        output_lengths=(max(1, longest // 8), longest),
    )
    schedulers = {"static": batching.static_batching, "continuous": batching.continuous_batching}
    summaries: dict[str, list[dict[str, float]]] = {name: [] for name in schedulers}
    complete = True
    schedulers["static"](model, trace[:BATCHING_MAX_BATCH], BATCHING_MAX_BATCH)  # warm-up
    for _ in range(BATCHING_ROUNDS):  # interleaved: a busy moment hits both alike
        for name, schedule in schedulers.items():
            served = schedule(model, trace, BATCHING_MAX_BATCH)
            complete &= all(len(s.tokens) == s.request.max_new_tokens for s in served)
            summaries[name].append(batching.summarize(batching.served_frame(served)))
    ratios = [
        float(continuous["tokens_per_s"] / static["tokens_per_s"])
        for static, continuous in zip(summaries["static"], summaries["continuous"], strict=True)
    ]
    values: dict[str, Any] = {
        "requests": BATCHING_REQUESTS,
        "max_batch": BATCHING_MAX_BATCH,
        "output_tokens": [max(1, longest // 8), longest],
        "continuous_throughput_ratios": ratios,
    }
    for name, rows in summaries.items():
        values[f"{name}_tokens_per_s"] = float(sorted(row["tokens_per_s"] for row in rows)[1])
        values[f"{name}_ttft_p50_s"] = float(sorted(row["ttft_s_p50"] for row in rows)[1])
    claims = [("every request got all its tokens, both schedulers", complete, f"{len(trace)}")]
    if device == "cuda":  # lab 14's claim; a tiny CPU model's forward is mostly overhead
        name = "continuous batching's throughput > static's in every round (lab 14)"
        claims.append((name, min(ratios) > 1, ", ".join(f"{r:.2f}x" for r in ratios)))
    return values, claims
