"""`make gpu-check`: the gpu profile's GPU-only paths, run small on one CUDA GPU in one command.

`python -m llmlab.gpucheck --out report.json` pretrains a GPT (bf16, torch.compile, fused
AdamW, MFU), fine-tunes MiniLM, times 2:4 semi-structured sparsity, load-tests the service with
batching off and on, all-reduces over NCCL, and runs lab 14's generation checks
(`llmlab.gpucheck_generation`: a dynamic against a static, compiled KV cache; continuous against
static batching). Each check returns measured values and claims; one JSON report (with the
machine and its measured matmul peak) and a table come out, and the exit code is 1 when a claim
fails or a check raises. `--device cpu` skips the CUDA-only checks and runs the others at tiny
sizes. `tools/gpu-check.sh` runs it on a bare GPU machine without network.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llmlab.checkreport import (
    CheckResult,
    Claim,
    Sizes,
    Skipped,
    format_table,
    machine_info,
    matmul_peak,
    sizes_for,
    write_report,
)
from llmlab.checkreport import run_check as run_isolated
from llmlab.config import REPO_ROOT, seed_everything
from llmlab.gpucheck_generation import check_batching, check_generation
from llmlab.train import TrainConfig, TrainResult, classification_loss, shuffled_batches, train

# MiniLM with bf16 weights (`make gpu-wheels`), for a GPU machine without the packaged model.
MINILM_COPY_DIR = REPO_ROOT / ".whl" / "minilm"
MFU_TARGET = 0.45  # lab 04's gpu claim, against the data-sheet bf16 peak
SERVE_BATCH = 32  # the batching-on server's max_batch_size; the other serves one text a pass
SPARSE_DIM, SPARSE_BATCHES = 4096, (64, 256, 1024, 4096)  # a 2:4 Linear layer, its inputs
NCCL_MB = 256  # all-reduced tensor
# Seconds each check may take on a CUDA GPU, compile included: together 7 minutes, so that one
# run and a second try fit in the 10 minutes of a lent GPU machine's command.
GPU_BUDGET_S = {
    "pretrain": 120,
    "finetune": 45,
    "sparsity24": 30,
    "serve": 75,
    "nccl": 30,
    "generation": 90,
    "batching": 30,
}


def _short_run(steps: int, device: str, **knobs: Any) -> TrainConfig:
    """TrainConfig of a short run: 10% warm-up, five logged intervals, no progress bar."""
    warmup, every = max(1, steps // 10), max(1, steps // 5)
    return TrainConfig(
        steps, warmup_steps=warmup, log_every=every, device=device, progress=False, **knobs
    )


def _loss_claim(result: TrainResult) -> tuple[dict[str, float], Claim]:
    """First and last logged training loss, and the claim that training lowered it."""
    losses = result.history.train_loss
    first, last = float(losses.iloc[0]), float(losses.iloc[-1])
    claim = ("loss decreased", last < first, f"{first:.3f} -> {last:.3f}")
    return {"first_loss": first, "last_loss": last}, claim


def _minilm(labels: list[str]) -> tuple[Any, Any, str]:
    """MiniLM as a classifier of `labels` (fp32), its tokenizer, and where it came from: the
    packaged model, else (a GPU machine without that 87 MB package) the bf16 copy that
    `make gpu-wheels` puts in .whl/minilm."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmlab.text import pretrained_model_dir

    try:
        folder, source = pretrained_model_dir(), "package"
    except FileNotFoundError:
        if not (MINILM_COPY_DIR / "model.safetensors").is_file():
            raise
        folder, source = MINILM_COPY_DIR, "bf16 copy"
    # Our label names on the classifier head, as lab 05 gives them.
    head = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    seed_everything(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32, **head)
    return model, AutoTokenizer.from_pretrained(folder), source


def check_pretrain(device: str, sizes: Sizes) -> CheckResult:
    """Lab 04's path: a GPT on Austen's bytes, bf16 autocast, compiled on CUDA; tokens/s, MFU."""
    from llmlab.data import load_corpus
    from llmlab.flops import achievable_matmul_flops, peak_flops
    from llmlab.models import build_gpt, gpt_config, gpt_flops_per_token

    config = gpt_config(sizes.gpt_profile, vocab_size=256)
    context = config.n_positions
    needed = sizes.pretrain_steps * sizes.gpt_batch * context + context
    ids = torch.frombuffer(bytearray(load_corpus()[:needed].encode()), dtype=torch.uint8).long()
    blocks = ids[: len(ids) // context * context].view(-1, context)
    examples = [{"input_ids": block, "labels": block} for block in blocks]
    seed_everything(0)
    model = build_gpt(config)
    flops = gpt_flops_per_token(model, context)
    cuda = device == "cuda"
    # Lab 04's gpu and smoke learning rates; the package compiles only for the gpu profile.
    run = _short_run(sizes.pretrain_steps, device, lr=6e-4 if cuda else 3e-3, compile=cuda)
    batches = shuffled_batches(examples, sizes.gpt_batch, seed=0)
    result = train(model, batches, run, model_flops_per_token=flops)
    values, loss_claim = _loss_claim(result)
    achievable = achievable_matmul_flops(device, torch.bfloat16 if cuda else torch.float32)
    achievable_mfu = flops * result.tokens_per_s / achievable
    values |= {"tokens_per_s": result.tokens_per_s, "mfu": result.mfu, "compiled": cuda}
    values |= {"achievable_flops": achievable, "achievable_mfu": achievable_mfu}
    values |= {"parameters": sum(p.numel() for p in model.parameters()), "steps": result.steps}
    claims = [loss_claim, ("tokens/s > 0", result.tokens_per_s > 0, f"{result.tokens_per_s:.3g}")]
    if cuda:
        values["datasheet_flops"] = peak_flops(torch.cuda.get_device_name(), torch.bfloat16)
    claims += mfu_claims(result.mfu, achievable_mfu, cuda)
    return values, claims


def mfu_claims(datasheet_mfu: float | None, achievable_mfu: float, cuda: bool) -> list[Claim]:
    """MFU below the measured matmul peak; on CUDA, lab 04's target against the data sheet's peak,
    or against the measured peak (and saying so) on a GPU whose data sheet we do not know."""
    sane = 0 < achievable_mfu < 1
    claims = [("MFU of the measured matmul peak in (0, 1)", sane, f"{achievable_mfu:.3f}")]
    if not cuda:
        return claims
    if datasheet_mfu is not None:
        name, mfu = f"MFU >= {MFU_TARGET:.0%} of the data-sheet bf16 peak", datasheet_mfu
    else:
        name = f"MFU >= {MFU_TARGET:.0%} of the measured bf16 peak (no data-sheet peak known)"
        mfu = achievable_mfu
    return [*claims, (name, mfu >= MFU_TARGET, f"{mfu:.1%}")]


def check_finetune(device: str, sizes: Sizes) -> CheckResult:
    """Lab 05's path: fine-tune every layer of the packaged MiniLM on feedback rows."""
    from torch.utils.data import StackDataset

    from llmlab.data import label_names, load_splits

    labels = label_names()
    model, tokenizer, source = _minilm(labels)
    rows = load_splits()["train"].sample(n=sizes.finetune_rows, random_state=0)
    encoded = tokenizer(
        rows.text.tolist(), padding="max_length", truncation=True, max_length=sizes.max_length
    )
    targets = torch.tensor(rows.label.map(labels.index).to_numpy())
    dataset = StackDataset(**{k: torch.tensor(v) for k, v in encoded.items()}, labels=targets)
    # Lab 05's AdamW settings, with twice its gpu lr: a short run should show the loss fall.
    run = _short_run(sizes.finetune_steps, device, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999))
    batches = shuffled_batches(dataset, sizes.finetune_batch, seed=0)
    result = train(model, batches, run, loss_fn=classification_loss)
    where = next(model.parameters()).device.type
    values, loss_claim = _loss_claim(result)
    values |= {"rows": len(rows), "steps": result.steps, "tokens_per_s": result.tokens_per_s}
    values["minilm"] = source
    return values, [loss_claim, (f"model runs on {device}", where == device, where)]


def check_sparsity24(device: str, sizes: Sizes) -> CheckResult:
    """Lab 08's 2:4 semi-structured sparsity: a Linear layer against dense fp16, per batch size."""
    if device != "cuda":
        raise Skipped("2:4 semi-structured kernels need a CUDA GPU")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        raise Skipped(f"sparse tensor cores need compute capability >= 8.0, not {capability}")
    from llmlab.bench import semi_structured_speedup

    values = semi_structured_speedup(SPARSE_DIM, SPARSE_BATCHES)
    worst, largest = values["max_rel_diff"], values[f"speedup_b{SPARSE_BATCHES[-1]}"]
    return values, [
        ("max diff < 1e-2 of the output scale", worst < 1e-2, f"{worst:.2e}"),
        (f"speed-up >= 1.1 at batch {SPARSE_BATCHES[-1]}", largest >= 1.1, f"{largest:.2f}x"),
    ]


async def _closed_loop(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    """Warm the server up, then `clients` closed-loop users for `seconds`: lab 10's summary."""
    from llmlab.serving.loadtest import load_test, summarize

    await load_test(url, texts, requests=4 * clients, concurrency=clients)
    load = await load_test(url, texts, 10**9, concurrency=clients, time_limit_s=seconds)
    return summarize(load)


def check_serve(device: str, sizes: Sizes) -> CheckResult:
    """Lab 10's service on `device` serving the packaged MiniLM: batching off vs on."""
    from llmlab.data import label_names, load_splits
    from llmlab.serving.manager import BackgroundServer

    texts = load_splits()["test"].text.tolist()
    with tempfile.TemporaryDirectory(prefix="gpucheck-classifier-") as folder:
        # The same model on every machine: the registry of a fresh GPU machine is empty.
        model, tokenizer, source = _minilm(label_names())
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        Path(folder, "meta.json").write_text(json.dumps({"max_length": sizes.max_length}))
        options = ("--device", device, "--max-batch-size")
        servers = {size: BackgroundServer(folder, *options, str(size)) for size in (1, SERVE_BATCH)}
        try:
            for server in servers.values():
                server.start()  # both load their model at once
            for server in servers.values():
                server.wait_ready()
            runs = {
                size: asyncio.run(
                    _closed_loop(server.url, texts, sizes.serve_clients, sizes.serve_seconds)
                )
                for size, server in servers.items()
            }
        finally:
            for server in servers.values():
                server.stop()
    ratio = runs[SERVE_BATCH]["throughput_rps"] / runs[1]["throughput_rps"]
    failed = sum(run["failed"] for run in runs.values())
    requests = sum(run["requests"] for run in runs.values())
    values: dict[str, Any] = {"clients": sizes.serve_clients, "throughput_ratio": ratio}
    values["minilm"] = source
    for size, run in runs.items():
        values |= {f"{key}_b{size}": run[key] for key in ("throughput_rps", "p50_ms", "p99_ms")}
    values["failed"] = failed
    claims = [("0 failed requests", failed == 0, f"{failed} of {requests}")]
    if device == "cuda":
        claims.append(("batching >= 2x throughput", ratio >= 2, f"{ratio:.2f}x"))
    return values, claims


def check_nccl(device: str, sizes: Sizes) -> CheckResult:
    """An all-reduce over NCCL on every GPU of this machine: correct sum, bus bandwidth."""
    if device != "cuda":
        raise Skipped("NCCL needs CUDA GPUs")
    if not torch.distributed.is_nccl_available():
        raise Skipped("this PyTorch build has no NCCL")
    from llmlab.bench import all_reduce_bandwidth

    values = all_reduce_bandwidth("nccl", torch.cuda.device_count(), NCCL_MB)
    ranks, busbw = values["world_size"], values["busbw_GBps"]
    claims = [("all-reduce sums right on every rank", values["sum_correct"], f"{ranks} rank(s)")]
    if ranks > 1:
        claims.append(("bus bandwidth > 0", busbw > 0, f"{busbw:.1f} GB/s"))
    return values, claims


CHECKS: dict[str, Callable[[str, Sizes], CheckResult]] = {
    "pretrain": check_pretrain,
    "finetune": check_finetune,
    "sparsity24": check_sparsity24,
    "serve": check_serve,
    "nccl": check_nccl,
    "generation": check_generation,
    "batching": check_batching,
}


def run_check(name: str, device: str, sizes: Sizes) -> dict[str, Any]:
    """Run check `name` on its own: a skip, a raise or a failed claim is recorded, never raised."""
    budget = GPU_BUDGET_S.get(name) if device == "cuda" else None
    return run_isolated(name, CHECKS[name], device, sizes, budget_s=budget)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks, write the report, print the table: 0, 1 if a check failed, 2 if no CUDA."""
    parser = argparse.ArgumentParser(description="Check the gpu profile's GPU-only paths.")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a handful of steps per check")
    parser.add_argument(
        "--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS), help="default: all"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; --device cpu runs the checks' logic", file=sys.stderr)
        return 2
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # "newly initialized classifier" is expected
    transformers_logging.disable_progress_bar()
    report: dict[str, Any] = machine_info(args.device)
    report["started"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report |= {"quick": args.quick, "matmul_peak": matmul_peak(args.device, args.quick)}
    report["checks"] = {}
    sizes = sizes_for(args.device, args.quick)
    for name in args.checks:
        print(f"gpu-check: {name} ...", flush=True)
        report["checks"][name] = run_check(name, args.device, sizes)
        write_report(args.out, report)  # after every check: a crash keeps what finished
    print(format_table(report))
    print(f"report: {args.out}")
    return int(any(check["status"] == "failed" for check in report["checks"].values()))


if __name__ == "__main__":
    sys.exit(main())
