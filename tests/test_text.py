import pytest

from llmlab.data import load_corpus
from llmlab.text import pretrained_model_dir, train_bpe, train_wordpiece

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


def test_wordpiece_numbers_its_tokens_the_same_way_every_time():
    # The trainer alone numbers the same learned tokens differently from one call to the next.
    corpus = [" ".join(p.split()) for p in load_corpus()[:100_000].split("\n\n") if p.strip()]
    first = train_wordpiece(corpus, vocab_size=500).get_vocab()
    assert all(train_wordpiece(corpus, vocab_size=500).get_vocab() == first for _ in range(4))


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
