"""The training loop on tiny models: it learns, resumes exactly, writes loadable checkpoints."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from llmlab.batches import count_tokens
from llmlab.bench import torch_threads
from llmlab.checkpoints import list_checkpoints, load_weights, unwrap
from llmlab.flops import achievable_matmul_flops, flops_per_token, mfu, peak_flops
from llmlab.train import (
    SimulatedCrash,
    TrainConfig,
    classification_loss,
    evaluate,
    lr_at,
    make_optimizer,
    run_peak_flops,
    shuffled_batches,
    train,
)

VOCAB, CONTEXT = 12, 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine does not stall them."""
    with torch_threads(1):
        yield


class TinyLM(nn.Module):
    """Bigram-ish LM with dropout (so resume must restore the RNG) and a tied output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Linear(16, 16)
        self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids, labels=None):
        hidden = self.dropout(torch.tanh(self.hidden(self.embed(input_ids))))
        logits = hidden @ self.embed.weight.T
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"logits": logits, "loss": loss}


class TokenDataset(torch.utils.data.Dataset):
    """A cyclic sequence (next token = token + 1 mod VOCAB) cut into windows."""

    def __init__(self, count: int) -> None:
        self.tokens = torch.arange(count + CONTEXT + 1) % VOCAB

    def __len__(self) -> int:
        return len(self.tokens) - CONTEXT - 1

    def __getitem__(self, index):
        window = self.tokens[index : index + CONTEXT + 1]
        return {"input_ids": window[:-1], "labels": window[1:]}


def lm_setup(tmp_path, **overrides):
    torch.manual_seed(0)
    settings = dict(
        max_steps=12,
        lr=3e-2,
        warmup_steps=2,
        grad_accum_steps=2,
        log_every=1,
        eval_every=3,
        checkpoint_dir=tmp_path and tmp_path / "ckpt",
        checkpoint_every=4,
        device="cpu",
        progress=False,
    )
    config = TrainConfig(**(settings | overrides))
    batches = shuffled_batches(TokenDataset(40), batch_size=4, seed=1)
    val = list(torch.utils.data.DataLoader(TokenDataset(16), batch_size=8))
    return TinyLM(), batches, val, config


def test_loss_decreases_on_a_tiny_classifier():
    torch.manual_seed(0)
    features = torch.randn(64, 4)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    batches = [{"x": features[i : i + 16], "labels": labels[i : i + 16]} for i in range(0, 64, 16)]

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x)

    model = Classifier()
    before = evaluate(model, batches, classification_loss)
    config = TrainConfig(max_steps=40, lr=0.1, warmup_steps=2, log_every=5, progress=False)
    logged = []

    class Recorder:  # stands in for llmlab.track.Tracker
        def log(self, metrics, step):
            logged.append((step, metrics))

    result = train(
        model,
        batches,
        config,
        loss_fn=classification_loss,
        val_batches=batches,
        tracker=Recorder(),
    )
    assert result.steps == 40
    assert [step for step, _ in logged] == result.history["step"].tolist() == list(range(5, 41, 5))
    assert "val_loss" in logged[-1][1] and "train_loss" in logged[0][1]
    assert result.final_metrics["val_loss"] < 0.5 * before
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    assert result.tokens_per_s > 0


def test_classification_loss_reads_dict_tuple_and_list_batches_alike():
    """A dict batch feeds the model keywords, a (inputs, labels) pair or a DataLoader's list feeds
    it positionally; all three give the plain cross-entropy. A helper that dropped the labels of
    one kind, or fed it the wrong inputs, would differ."""
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    features, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])

    class Keywords(nn.Module):
        def forward(self, x):
            return {"logits": linear(x)}  # a Hugging Face style output

    expected = nn.functional.cross_entropy(linear(features), labels)
    assert classification_loss(Keywords(), {"x": features, "labels": labels}) == expected
    assert classification_loss(linear, (features, labels)) == expected
    assert classification_loss(linear, [features, labels]) == expected
    assert classification_loss(linear, (features, labels.roll(1))) != expected


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    model, batches, val, config = lm_setup(tmp_path / "a")
    full = train(model, batches, config, val_batches=val)

    model, batches, val, config = lm_setup(tmp_path / "b", stop_after_steps=6)
    with pytest.raises(SimulatedCrash):
        train(model, batches, config, val_batches=val)
    assert [p.name for p in list_checkpoints(config.checkpoint_dir)] == ["step_0000004"]

    torch.manual_seed(123)  # a freshly initialised model: everything must come from the checkpoint
    config.stop_after_steps = None
    resumed = train(TinyLM(), batches, config, val_batches=val)

    assert resumed.resumed_from == 4
    assert full.history["step"].tolist() == resumed.history["step"].tolist()
    for column in ("train_loss", "val_loss", "lr"):
        a, b = full.history[column].to_numpy(), resumed.history[column].to_numpy()
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True), column
    assert full.history["train_loss"].iloc[-1] < full.history["train_loss"].iloc[0]


def test_checkpoints_are_safetensors_and_weights_only_loadable(tmp_path):
    model, batches, val, config = lm_setup(tmp_path)
    result = train(model, batches, config, val_batches=val)
    folders = list_checkpoints(config.checkpoint_dir)
    assert [p.name for p in folders] == ["step_0000004", "step_0000008", "step_0000012"]
    assert result.checkpoint == folders[-1]
    assert not list(config.checkpoint_dir.glob(".tmp-*")), "a temp folder was left behind"

    state = torch.load(folders[-1] / "trainer_state.pt", weights_only=True)
    assert state["step"] == 12 and len(state["optimizer"]["state"]) > 0
    weights = load_file(folders[-1] / "model.safetensors")
    assert torch.equal(weights["hidden.weight"], model.hidden.weight.detach())

    fresh = load_weights(TinyLM(), folders[0])
    assert not torch.equal(fresh.hidden.weight, model.hidden.weight)
    load_weights(fresh, folders[-1])
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_existing_checkpoints_need_resume(tmp_path):
    model, batches, val, config = lm_setup(tmp_path, max_steps=4)
    train(model, batches, config)
    config.resume = False
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(model, batches, config)


def test_unseeded_shuffle_is_rejected_when_checkpointing(tmp_path):
    model, _, _, config = lm_setup(tmp_path)
    loader = torch.utils.data.DataLoader(TokenDataset(16), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="reproducible shuffle"):
        train(model, loader, config)


def test_one_shot_iterator_fails_clearly():
    batches = iter([{"input_ids": torch.zeros(2, 3, dtype=torch.long)}] * 2)
    config = TrainConfig(max_steps=5, device="cpu", progress=False)
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        train(TinyLM(), batches, config, loss_fn=lambda m, b: m(**b)["logits"].sum())


def test_early_stopping_restores_the_best_weights():
    model, batches, _, _ = lm_setup(None)
    snapshots = []

    def worsening(model):
        snapshots.append(model.hidden.weight.detach().clone())
        return {"score": -float(len(snapshots))}  # best at the first evaluation

    config = TrainConfig(
        max_steps=50,
        eval_every=2,
        early_stopping_metric="score",
        early_stopping_mode="max",
        patience=2,
        restore_best=True,
        device="cpu",
        progress=False,
    )
    result = train(model, batches, config, eval_fn=worsening)
    assert result.stopped_early and result.steps == 6
    assert result.best_step == 2 and result.best_metric == -1.0
    assert torch.equal(model.hidden.weight, snapshots[0])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(100, config) == pytest.approx(0.1)


def test_flops_and_mfu_arithmetic():
    # 6N + 12 L H Q T with N=1000, L=2, H=4, Q=8, T=16: 6000 + 12288.
    assert flops_per_token(1000, 2, 4, 8, 16) == 18288
    # A 1e9-parameter model at 50k tokens/s does 3e14 FLOP/s: 30.3% of an H100 SXM in bf16.
    sxm_bf16 = peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert mfu(6e9, 5e4, sxm_bf16) == pytest.approx(0.30321, abs=1e-4)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


def test_peak_flops_by_gpu_name_and_compute_dtype():
    bf16, fp32 = torch.bfloat16, torch.float32
    assert peak_flops("NVIDIA H100 80GB HBM3", bf16) == 989.4e12  # SXM
    assert peak_flops("NVIDIA H200", bf16) == 989.4e12  # SXM
    assert peak_flops("NVIDIA H100 NVL", bf16) == 835.5e12  # PCIe card, lower clocks and power
    assert peak_flops("NVIDIA H200 NVL", bf16) == 835.5e12
    assert peak_flops("NVIDIA H100 PCIe", bf16) == 756.5e12
    # An fp32 run uses the TF32 tensor cores: half the bf16 rate.
    assert peak_flops("NVIDIA H100 80GB HBM3", fp32) == 494.7e12
    assert peak_flops("NVIDIA H200 NVL", fp32) == 417.5e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", fp32) == 156e12
    assert peak_flops("NVIDIA L40S", bf16) is None  # not the L4
    assert peak_flops("Some Laptop GPU", bf16) is None
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float16) is None


def test_mfu_peak_follows_the_runs_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVL")
    assert run_peak_flops(TrainConfig(precision="auto"), "cuda") == 835.5e12
    assert run_peak_flops(TrainConfig(precision="fp32"), "cuda:0") == 417.5e12
    assert run_peak_flops(TrainConfig(precision="fp32", peak_flops=1e12), "cuda") == 1e12
    assert run_peak_flops(TrainConfig(), "cpu") is None


def test_train_keeps_deterministic_mode_on():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model, batches, _, config = lm_setup(None, max_steps=1, grad_accum_steps=1)
        train(model, batches, config)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_helpers_on_batches_and_wrappers():
    assert count_tokens({"input_ids": torch.zeros(4, 7)}) == 28
    assert count_tokens({"x": torch.zeros(5, 3)}) == 5
    model = TinyLM()
    assert unwrap(torch.compile(model)) is model
    assert unwrap(nn.DataParallel(model)) is model


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=3)


def test_bf16_autocast_path_runs_on_cpu():
    model, batches, _, _ = lm_setup(None)
    config = TrainConfig(max_steps=2, precision="bf16", log_every=1, device="cpu", progress=False)
    result = train(model, batches, config)
    assert result.history["train_loss"].notna().all()
    assert model.hidden.weight.dtype == torch.float32, "autocast must keep fp32 master weights"


def test_the_achievable_matmul_peak_is_measured_and_bounds_a_matmul():
    measured = achievable_matmul_flops("cpu", torch.float32, size=256, repeats=3)
    assert 1e8 < measured < 1e14, f"{measured:.3g} FLOP/s is not a CPU's matmul throughput"
    a = torch.randn(256, 256)
    import time

    started = time.perf_counter()
    a @ a
    one_call = 2 * 256**3 / (time.perf_counter() - started)
    assert one_call <= 3 * measured, "the best of several calls must not be far below one call"


def one_step(batch_size: int, accum: int, **overrides) -> TinyLM:
    """TinyLM (no dropout) after one optimizer step on the same 8 shuffled examples."""
    torch.manual_seed(0)
    model = TinyLM()
    model.dropout.p = 0.0
    config = TrainConfig(
        max_steps=1,
        lr=3e-2,
        warmup_steps=0,
        grad_accum_steps=accum,
        log_every=1,
        device="cpu",
        progress=False,
        **overrides,
    )
    train(model, shuffled_batches(TokenDataset(8), batch_size=batch_size, seed=1), config)
    return model


def gradients_at_step(monkeypatch, *runs: tuple[int, int]) -> list[list[torch.Tensor]]:
    """The gradients the optimizer sees at its one step, for each (batch size, accumulation)."""
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for batch_size, accum in runs:
        one_step(batch_size, accum, grad_clip=None)
    return seen


def test_accumulating_micro_batches_equals_one_large_batch(monkeypatch):
    """Gradients, not weights (AdamW's update barely changes when every gradient doubles): catches
    a loss not divided by grad_accum_steps and a zero_grad between micro-batches."""
    large, accumulated, half = gradients_at_step(monkeypatch, (8, 1), (4, 2), (4, 1))
    for a, b in zip(large, accumulated, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(large, half, strict=True))


def test_clipping_bounds_the_global_gradient_norm(monkeypatch):
    """The norm of all gradients together, at the optimizer step, is at most grad_clip."""
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad.norm() for g in self.param_groups for p in g["params"]]
        seen.append(torch.linalg.vector_norm(torch.stack(grads)).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    one_step(8, 1, grad_clip=None)
    one_step(8, 1, grad_clip=1e-3)
    unclipped, clipped = seen
    assert unclipped > 1e-2, "the test needs a gradient larger than the clip"
    assert clipped <= 1e-3 * (1 + 1e-4), f"clipped norm {clipped:.3g} above 1e-3"


def test_weight_decay_spares_biases_and_one_dimensional_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    groups = make_optimizer(model, TrainConfig(max_steps=1, weight_decay=0.1), "cpu").param_groups
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in decay) == (parameter.dim() >= 2), name


def test_bf16_autocast_is_engaged_inside_the_forward():
    """Catches a precision setting that never enters autocast: activations would stay fp32."""
    model, batches, _, _ = lm_setup(None)
    dtypes = []
    model.hidden.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    config = TrainConfig(max_steps=2, precision="bf16", log_every=1, device="cpu", progress=False)
    train(model, batches, config)
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes


class TornWrite(Exception):
    """The process dying in the middle of writing a file."""


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    """The second checkpoint's state file is half written when the run dies: step 4 stays the
    latest complete checkpoint and a resume starts from it. Writing straight into step_*
    (atomic_dir without its temp folder and rename) fails it: the torn step 8 is listed."""
    from llmlab import checkpoints

    save, calls = torch.save, []

    def torn_second_state(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) < 2:
            return save(state, path, *args, **kwargs)
        save(state, path, *args, **kwargs)
        with open(path, "r+b") as handle:  # keep the first half of the file, as a dying write
            handle.truncate(handle.seek(0, 2) // 2)
        raise TornWrite(path)

    model, batches, _, config = lm_setup(tmp_path, max_steps=8)
    monkeypatch.setattr(checkpoints.torch, "save", torn_second_state)
    with pytest.raises(TornWrite):
        train(model, batches, config)
    monkeypatch.setattr(checkpoints.torch, "save", save)
    assert len(calls) == 2, calls
    assert [p.name for p in list_checkpoints(config.checkpoint_dir)] == ["step_0000004"]
    state = checkpoints.load_checkpoint(config.checkpoint_dir / "step_0000004", TinyLM())
    assert state["step"] == 4
    resumed = train(TinyLM(), batches, config)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert [p.name for p in list_checkpoints(config.checkpoint_dir)][-1] == "step_0000008"
    assert not list(config.checkpoint_dir.glob(".tmp-*")), "the torn temp folder was left"


def test_compile_on_cpu_gives_the_eager_losses():
    """Same seed, same batches: torch.compile's losses match eager ones to 1e-4 (fp32 kernels
    fused differently, not a different model) and dynamo did compile a graph. Compiling a copy
    of the model (so the optimizer updates weights the compiled forward never reads) fails it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    losses = {}
    for compiled in (False, True):
        model, batches, _, _ = lm_setup(None)
        model.dropout.p = 0.0  # dropout masks need not match between eager and compiled
        config = TrainConfig(
            max_steps=4,
            lr=3e-2,
            warmup_steps=0,
            log_every=1,
            compile=compiled,
            device="cpu",
            progress=False,
        )
        losses[compiled] = train(model, batches, config).history["train_loss"].to_numpy()
    assert counters["stats"]["unique_graphs"] >= 1, "compile=True compiled nothing"
    assert losses[False][-1] < losses[False][0], "the eager run must learn for the check to bite"
    assert losses[True] == pytest.approx(losses[False], abs=1e-4), losses
