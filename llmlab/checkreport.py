"""`make gpu-check`'s sizes and report: the machine, each check run on its own, the JSON, the table.

`llmlab.gpucheck` holds the checks themselves; this module runs one so that a skip, a raise or
a failed claim is recorded with its traceback and the next check still runs.
"""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

Claim = tuple[str, bool, str]
MACHINE_KEYS = ("device", "gpu", "capability", "driver", "python", "torch", "cuda", "transformers")
CheckResult = tuple[dict[str, Any], list[Claim]]


@dataclass(frozen=True)
class Sizes:
    """How much work each check does: full on a GPU, tiny on a CPU, a handful with --quick."""

    gpt_profile: str  # model size from llmlab.models.GPT_SIZES
    gpt_batch: int
    pretrain_steps: int
    finetune_rows: int
    finetune_batch: int
    finetune_steps: int
    max_length: int  # tokens per text when fine-tuning and serving
    serve_clients: int
    serve_seconds: float
    generation_vocab: int  # the generation check's GPT has gpt_profile's shape and this vocabulary
    generation_batch: int
    prompt_tokens: int
    new_tokens: int
    generation_repeats: int


def sizes_for(device: str, quick: bool = False) -> Sizes:
    """The sizes for `device` (cuda or cpu); `quick` shrinks steps and load to a handful."""
    if device == "cuda":  # lab 04's gpu model, lab 05's max_length, lab 10's concurrency
        sizes = Sizes("gpu", 16, 60, 200, 32, 30, 64, 32, 10.0, 50257, 8, 256, 128, 5)
    else:
        sizes = Sizes("smoke", 8, 30, 32, 8, 8, 32, 4, 3.0, 256, 2, 16, 8, 3)
    if not quick:
        return sizes
    return replace(
        sizes, pretrain_steps=6, finetune_steps=4, serve_seconds=1.0, generation_repeats=2
    )


class Skipped(Exception):
    """A check that cannot run on this device; the message says why."""


def _package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version from nvidia-smi, else from /proc, else None."""
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        answer = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
        return answer.stdout.split("\n")[0].strip() or None
    except (OSError, subprocess.SubprocessError):
        proc = Path("/proc/driver/nvidia/version")
        return proc.read_text().split("\n")[0].strip() if proc.exists() else None


def machine_info(device: str) -> dict[str, Any]:
    """Device name, driver, Python, torch, CUDA and transformers versions of this machine."""
    info: dict[str, Any] = {"device": device, "gpu": None, "torch": torch.__version__}
    info |= {"cuda": torch.version.cuda, "python": platform.python_version()}
    info |= {name: _package_version(name) for name in ("transformers", "fastapi", "pydantic")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_count": torch.cuda.device_count()}
        info |= {"capability": f"{props.major}.{props.minor}", "driver": _nvidia_driver()}
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def matmul_peak(device: str, quick: bool) -> dict[str, Any]:
    """The best FLOP/s of a big bf16 matmul measured here (fp32 on a CPU), and the data sheet's."""
    from llmlab.flops import achievable_matmul_flops, peak_flops

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    size = 8192 if cuda else (512 if quick else 1024)
    peak: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "size": size}
    try:
        peak["measured_flops"] = achievable_matmul_flops(device, dtype, size)
    except Exception as error:  # the report still comes out; the checks still run
        peak["error"] = f"{type(error).__name__}: {error}"
    name = torch.cuda.get_device_name() if cuda else ""
    peak["datasheet_flops"] = peak_flops(name, dtype) if cuda else None
    return peak


def run_check(
    name: str,
    check: Callable[..., CheckResult],
    *args: Any,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Run `check(*args)`; a skip, an exception or a failed claim is recorded, never raised."""
    entry: dict[str, Any] = {"status": "skipped", "values": {}, "claims": [], "reason": None}
    started = time.perf_counter()
    try:
        values, claims = check(*args)
    except Skipped as why:
        entry["reason"] = str(why)
    except Exception as error:
        entry |= {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        entry["traceback"] = traceback.format_exc(limit=-8)
    else:
        seconds = time.perf_counter() - started
        if budget_s is not None:
            detail = f"{seconds:.0f} of {budget_s} s"
            claims.append(("within time budget", seconds <= budget_s, detail))
        entry["values"] = values
        entry["claims"] = [{"name": n, "passed": bool(p), "detail": d} for n, p, d in claims]
        entry["status"] = "passed" if all(c["passed"] for c in entry["claims"]) else "failed"
    finally:
        gc.collect()  # the next check gets the GPU's memory back
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    entry["seconds"] = time.perf_counter() - started
    return entry


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report through a temporary file, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def _format_value(key: str, value: Any) -> str:
    """key=value with floats to three significant digits."""
    return f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"


def format_table(report: dict[str, Any]) -> str:
    """The machine, one line per check (status, seconds, values), then reasons and failed claims."""
    machine = [_format_value(k, report[k]) for k in MACHINE_KEYS if report.get(k) is not None]
    lines, peak = [" ".join(machine)], report.get("matmul_peak", {})
    if "measured_flops" in peak:
        sheet = peak["datasheet_flops"]
        sheet_text = f"{sheet / 1e12:.0f} TFLOP/s" if sheet else "not known"
        lines.append(
            f"{peak['dtype']} matmul peak: {peak['measured_flops'] / 1e12:.1f} TFLOP/s measured"
            f" ({peak['size']}^3), data sheet {sheet_text}"
        )
    lines.append(f"{'check':<11} {'status':<8} {'seconds':>8}  values")
    notes = []
    for name, check in report["checks"].items():
        values = " ".join(_format_value(k, v) for k, v in check["values"].items())
        lines.append(f"{name:<11} {check['status']:<8} {check['seconds']:>8.1f}  {values}")
        failed = [f"FAILED {c['name']} ({c['detail']})" for c in check["claims"] if not c["passed"]]
        notes += [f"  {name}: {note}" for note in [check["reason"], *failed] if note]
    return "\n".join(lines + notes)
