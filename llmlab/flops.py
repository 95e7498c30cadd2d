"""Counting FLOPs and the peaks that MFU divides by: the data sheet's and the one measured here."""

from __future__ import annotations

import math
import re
import time

import torch

# Dense (no sparsity) tensor-core peaks in FLOP/s: bf16 for bf16 autocast runs, TF32 for fp32
# runs (train() lets fp32 matmuls use TF32 on CUDA). Data sheets quote "with sparsity": halved.
# The PCIe-card NVL parts run at lower clocks and power than SXM. Order matters: the first name
# found as whole words in torch.cuda.get_device_name() wins ("NVIDIA H100 80GB HBM3" is SXM).
PEAK_BF16_FLOPS = {
    "H200 NVL": 835.5e12,  # H200 data sheet: 1,671 sparse
    "H200": 989.4e12,  # H200 data sheet, SXM: 1,979 sparse
    "GH200": 989.4e12,  # GH200 data sheet: 990 dense
    "H100 NVL": 835.5e12,  # H100 data sheet, per GPU: 1,671 sparse
    "H100 PCIe": 756.5e12,  # Hopper architecture whitepaper, table 3
    "H100": 989.4e12,  # Hopper architecture whitepaper, table 3, SXM5
    "A100": 312e12,  # A100 data sheet (SXM4 and PCIe alike)
    "L4": 121e12,  # L4 data sheet: 242 sparse
}
PEAK_TF32_FLOPS = {
    "H200 NVL": 417.5e12,  # H200 data sheet: 835 sparse
    "H200": 494.7e12,  # H200 data sheet, SXM: 989 sparse
    "GH200": 494.7e12,  # GH200 data sheet: 494 dense
    "H100 NVL": 417.5e12,  # H100 data sheet, per GPU: 835 sparse
    "H100 PCIe": 378e12,  # Hopper architecture whitepaper, table 3
    "H100": 494.7e12,  # Hopper architecture whitepaper, table 3, SXM5
    "A100": 156e12,  # A100 data sheet
    "L4": 60e12,  # L4 data sheet: 120 sparse
}
PEAK_FLOPS = {torch.bfloat16: PEAK_BF16_FLOPS, torch.float32: PEAK_TF32_FLOPS}


def flops_per_token(
    n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int
) -> float:
    """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM, appendix B): matmuls plus attention."""
    return 6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the hardware's peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_token * tokens_per_s / peak_flops


def peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of a known GPU for matmuls in `dtype`, else None (no MFU reported)."""
    for name, peak in PEAK_FLOPS.get(dtype, {}).items():
        if re.search(rf"\b{re.escape(name)}\b", device_name):
            return peak
    return None


def achievable_matmul_flops(
    device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 10
) -> float:
    """Best FLOP/s of a large square matmul on `device` in `dtype`: the peak a run can reach."""
    size = size or (8192 if device.startswith("cuda") else 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    calls = 10 if device.startswith("cuda") else 1  # a GPU matmul is too short to time alone

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    a @ b  # warm-up: kernel selection, caches
    synchronize()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            a @ b
        synchronize()
        best = min(best, (time.perf_counter() - started) / calls)
    return 2 * size**3 / best
