"""Top-block fine-tuning: what it freezes, and the cached-activation path matches the plain one."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from llmlab.bench import torch_threads
from llmlab.finetune import (
    TopBlockClassifier,
    freeze_below_top,
    shortcut_error,
    token_inputs,
    top_block_inputs,
    top_modules,
    trim_padding,
)
from llmlab.text import pretrained_model_dir
from llmlab.train import TrainConfig, classification_loss, train

TEXTS = ["great camera, love it", "the battery died after a week and support never answered", "ok"]
SECOND = ["terrible", "works fine for the price", "would buy again, arrived quickly"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(pretrained_model_dir())


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(pad_token_id: int) -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=30522, n_positions=32, n_embd=16, n_layer=2, n_head=2, num_labels=3
    )
    config.pad_token_id = pad_token_id
    return GPT2ForSequenceClassification(config).eval()


def test_shortcut_matches_plain_forward_for_bert_texts_and_pairs(tokenizer):
    model = tiny_bert()
    assert shortcut_error(model, tokenizer, TEXTS, max_length=24) < 1e-5
    assert shortcut_error(model, tokenizer, TEXTS, max_length=24, pairs=SECOND) < 1e-5


def test_shortcut_matches_plain_forward_for_gpt2(tokenizer):
    model = tiny_gpt2(tokenizer.pad_token_id)
    assert shortcut_error(model, tokenizer, TEXTS, max_length=24) < 1e-5


def test_shortcut_can_fail_when_the_top_block_is_skipped(tokenizer):
    """The check is not vacuous: zeroing the cache (a wrong input) moves the logits."""
    model = tiny_bert()
    cached = top_block_inputs(model, tokenizer, TEXTS, max_length=24)
    right = TopBlockClassifier(model)(**cached)
    wrong = TopBlockClassifier(model)(torch.zeros_like(cached["hidden"]), cached["attention_mask"])
    assert (right - wrong).abs().max() > 1e-3


def test_shortcut_holds_with_lora_inside_the_top_block(tokenizer):
    model = tiny_bert()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*layer\.2\..*(query|key|value|dense)",
        task_type="SEQ_CLS",
    )
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    inner = peft_model.base_model.model
    assert shortcut_error(inner, tokenizer, TEXTS, max_length=24) < 1e-5
    merged = peft_model.merge_and_unload()
    assert shortcut_error(merged, tokenizer, TEXTS, max_length=24) < 1e-5


def test_freeze_below_top_trains_only_the_top_block_and_head(tokenizer):
    model = tiny_bert()
    trainable = freeze_below_top(model)
    expected = sum(p.numel() for module in top_modules(model) for p in module.parameters())
    assert trainable == expected
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = token_inputs(model, tokenizer, TEXTS, max_length=16)
    batches = [{**inputs, "labels": torch.tensor([0, 1, 2])}]
    train(
        model.train(),
        batches,
        TrainConfig(max_steps=2, lr=1e-2, warmup_steps=1, progress=False),
        loss_fn=classification_loss,
    )
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(
        name.startswith(("bert.encoder.layer.2.", "bert.pooler.", "classifier."))
        for name in changed
    )


def test_cached_training_moves_the_weights_the_plain_forward_reads(tokenizer):
    """Training on cached inputs updates the model itself: the plain forward sees the change."""
    model = tiny_bert()
    freeze_below_top(model)
    cached = top_block_inputs(model, tokenizer, TEXTS, max_length=24)
    batches = [{**cached, "labels": torch.tensor([0, 1, 2])}]
    config = TrainConfig(max_steps=3, lr=1e-2, warmup_steps=1, progress=False)
    train(TopBlockClassifier(model), batches, config, loss_fn=classification_loss)
    assert shortcut_error(model, tokenizer, TEXTS, max_length=24) < 1e-5


def test_bad_input_gets_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="supports"):
        freeze_below_top(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="second texts"):
        top_block_inputs(tiny_bert(), tokenizer, TEXTS, max_length=16, pairs=SECOND[:1])
    with pytest.raises(ValueError, match="no texts"):
        top_block_inputs(tiny_bert(), tokenizer, [], max_length=16)


def test_trim_padding_cuts_to_the_longest_row_and_keeps_labels():
    batch = {
        "input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
        "hidden": torch.ones(2, 4, 3),
        "labels": torch.tensor([1, 0]),
    }
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (2, 2) and trimmed["hidden"].shape == (2, 2, 3)
    assert torch.equal(trimmed["labels"], batch["labels"])
