import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from tokenizers.trainers import WordPieceTrainer

from llmlab.data import load_corpus
from llmlab.text import BERT_SPECIAL_TOKENS, pretrained_model_dir, train_bpe, train_wordpiece

CORPUS = [
    "my card has not arrived yet",
    "the refund has not arrived",
    "my card was charged twice",
    "where is my refund",
    "the card payment was declined",
] * 5


def test_wordpiece_round_trip_and_bert_framing():
    tokenizer = train_wordpiece(CORPUS, vocab_size=60, min_frequency=1)
    ids = tokenizer("My Refund was declined")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "[UNK]" not in tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == "my refund was declined"


def test_wordpiece_splits_unseen_words_and_marks_unknown_characters():
    tokenizer = train_wordpiece(CORPUS, vocab_size=60, min_frequency=1)
    tokens = tokenizer.tokenize("cardrefund ☃")
    assert tokens[0] == "card" and tokens[1].startswith("##")
    assert tokens[-1] == "[UNK]"


def test_wordpiece_learns_and_numbers_the_same_tokens_every_time():
    # Many words of equal frequency: merges tie, and the trainer alone breaks the ties (and
    # numbers its "##" tokens) in hash-map order, differently from one call to the next.
    words = [f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "lmnrst"]
    corpus = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)] * 3
    first = train_wordpiece(corpus, vocab_size=200).get_vocab()
    assert all(train_wordpiece(corpus, vocab_size=200).get_vocab() == first for _ in range(5))


def test_wordpiece_learns_what_the_plain_trainer_learns_but_for_ties():
    corpus = [" ".join(p.split()) for p in load_corpus()[:100_000].split("\n\n") if p.strip()]
    ours = train_wordpiece(corpus, vocab_size=500)
    plain = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    plain.normalizer = normalizers.BertNormalizer(lowercase=True)
    plain.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(vocab_size=500, min_frequency=2, special_tokens=BERT_SPECIAL_TOKENS)
    plain.train_from_iterator(corpus, trainer)
    # Declaring the "##" tokens first numbers them below the alphabet, which decides equally
    # frequent merges the other way round: a few tokens differ, no more (measured: 1 of 500).
    differ = set(ours.get_vocab()) ^ set(plain.get_vocab())
    assert len(differ) <= 0.02 * 500, f"{len(differ)} tokens differ: {sorted(differ)[:20]}"
    assert sorted(ours.all_special_tokens) == sorted(BERT_SPECIAL_TOKENS), ours.all_special_tokens


def test_bpe_round_trips_any_text_without_unknown_tokens():
    tokenizer = train_bpe(CORPUS, vocab_size=300, min_frequency=1)
    text = "Refund NOT arrived, naïve ☃ 💳!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id is not None


def test_learned_merges_shorten_sequences():
    small = train_bpe(CORPUS, vocab_size=270, min_frequency=1)
    large = train_bpe(CORPUS, vocab_size=400, min_frequency=1)
    assert len(small) <= 270 and len(large) <= 400
    text = "my card payment has not arrived"
    assert len(large(text)["input_ids"]) < len(small(text)["input_ids"])


def test_vocab_size_must_leave_room_for_tokens():
    with pytest.raises(ValueError, match="special tokens"):
        train_wordpiece(CORPUS, vocab_size=5)


def test_pretrained_model_dir_holds_weights_and_tokenizer():
    path = pretrained_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (path / name).is_file(), name
    assert len((path / "vocab.txt").read_text().splitlines()) == 30522
