import shutil
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from llmlab import data
from llmlab.config import REPO_ROOT


@pytest.fixture
def copied_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of data/ that a test may damage; llmlab.data reads it instead of the real one."""
    for name in data.SHIPPED_FILES:
        shutil.copy(REPO_ROOT / "data" / name, tmp_path / name)
    monkeypatch.setattr(data, "data_dir", lambda: tmp_path)
    return tmp_path


def test_shipped_files_pass_their_checks():
    assert data.check_all() == {name: "ok" for name in data.SHIPPED_FILES}


def test_data_card_records_every_checksum():
    card = (REPO_ROOT / "data" / "README.md").read_text()
    for name, sha in data.SHIPPED_FILES.items():
        assert f"`{name}`" in card and sha in card, f"data/README.md lacks {name} {sha}"


def test_missing_file_fails_with_how_to_restore(copied_data: Path):
    (copied_data / data.FEEDBACK_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="missing.*git checkout -- data/customer_feedback"):
        data.load_intents()
    assert "missing" in data.check_all()[data.FEEDBACK_FILE]
    assert data.check_all()[data.CORPUS_FILE] == "ok"


def test_changed_file_fails_with_checksum_error(copied_data: Path):
    path = copied_data / data.FEEDBACK_FILE
    path.write_text(path.read_text().replace("negative", "positive", 1))
    with pytest.raises(data.DataIntegrityError, match=r"sha256.*data/README\.md"):
        data.load_splits()
    with pytest.raises(data.DataIntegrityError):
        data.load_intents()


def test_changed_corpus_fails_with_checksum_error(copied_data: Path):
    (copied_data / data.CORPUS_FILE).write_bytes(b"not the corpus")
    with pytest.raises(data.DataIntegrityError, match="austen"):
        data.load_corpus()


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="shipped, hub"):
        data.load_splits("kaggle")


def test_shipped_intents_have_known_labels():
    frame = data.load_intents()
    assert list(frame.columns) == ["text", "label"]
    assert len(frame) == 3708
    assert sorted(frame.label.unique()) == data.label_names()


def test_clean_text_normalizes_unicode_and_whitespace():
    assert data.clean_text("  ﬁne\u00a0\tcafe\u0301\u200b !\n") == "fine café !"


def test_clean_counts_each_kind_of_removed_row():
    frame = pd.DataFrame(
        {
            "text": [
                "Great phone.",
                "Great phone.",
                "great  phone!",
                "!",
                "Bad battery",
                "BAD battery",
            ],
            "label": ["positive", "positive", "positive", "neutral", "negative", "neutral"],
        }
    )
    cleaned, report = data.clean(frame)
    assert cleaned.text.tolist() == ["Great phone.", "Bad battery"]
    assert report == {
        "rows_in": 6,
        "too_short": 1,
        "exact_duplicates": 1,
        "near_duplicates": 2,
        "conflicting_labels": 1,
        "rows_out": 2,
    }


def test_split_of_old_rows_does_not_change_when_rows_are_added():
    old = pd.DataFrame({"text": [f"order {i} never arrived" for i in range(300)], "label": "x"})
    new = pd.DataFrame({"text": [f"refund {i} is late" for i in range(300)], "label": "x"})
    before = data.stable_split(old)
    after = data.stable_split(pd.concat([new, old], ignore_index=True))
    for name in data.SPLIT_FRACTIONS:
        assert set(before[name].text) <= set(after[name].text)
    assert sum(len(split) for split in after.values()) == 600


def test_split_fractions_must_sum_to_one():
    frame = pd.DataFrame({"text": ["a b c"], "label": ["x"]})
    with pytest.raises(ValueError, match="sum to 1"):
        data.stable_split(frame, {"train": 0.8, "test": 0.1})


def test_shipped_splits_do_not_leak_and_keep_proportions():
    splits = data.load_splits()
    hashes = {name: set(split.text.map(data.row_hash)) for name, split in splits.items()}
    assert not hashes["train"] & hashes["test"]
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["validation"] & hashes["test"]
    total = sum(len(split) for split in splits.values())
    overall = pd.concat(splits.values()).label.value_counts(normalize=True)
    for name, fraction in data.SPLIT_FRACTIONS.items():
        assert abs(len(splits[name]) / total - fraction) < 0.03, name
        share = splits[name].label.value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.05, name


def test_load_splits_returns_copies():
    train = data.load_splits()["train"]
    train.loc[0, "label"] = "changed"
    assert "changed" not in set(data.load_splits()["train"].label)


def test_manifest_identifies_content_not_order():
    splits = data.load_splits()
    manifest = data.data_manifest(splits)
    assert set(manifest["splits"]) == {"train", "validation", "test"}
    assert manifest["splits"]["test"]["rows"] == len(splits["test"])
    shuffled = {name: split.sample(frac=1, random_state=0) for name, split in splits.items()}
    assert data.data_manifest(shuffled)["hash"] == manifest["hash"]
    first = splits["test"].label[0]
    splits["test"].loc[0, "label"] = "neutral" if first == "positive" else "positive"
    changed = data.data_manifest(splits)
    assert changed["hash"] != manifest["hash"]
    assert changed["splits"]["train"] == manifest["splits"]["train"]


def test_corpus_is_the_six_novels():
    corpus = data.load_corpus()
    assert corpus.startswith("SENSE AND SENSIBILITY")
    assert "It is a truth universally acknowledged" in corpus
    assert len(corpus) > 3_000_000


def test_hub_source_converts_label_ids_to_names(monkeypatch: pytest.MonkeyPatch):
    class FakeSplit:
        def __init__(self, rows: dict):
            self.rows = rows

        def to_pandas(self) -> pd.DataFrame:
            return pd.DataFrame(self.rows)

    hub = {
        "train": FakeSplit({"text": ["card?"], "label": [11], "label_text": ["card_arrival"]}),
        "test": FakeSplit({"text": ["pin?"], "label": [20], "label_text": ["change_pin"]}),
    }
    fake = types.SimpleNamespace(load_dataset=lambda name: hub)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    frame = data.load_intents("hub")
    assert frame.to_dict("list") == {
        "text": ["card?", "pin?"],
        "label": ["card_arrival", "change_pin"],
    }
    assert data.label_names("hub") == ["card_arrival", "change_pin"]


def test_hub_source_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch):
    def offline(name: str):
        raise OSError("network unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(ConnectionError, match="source='shipped'"):
        data.load_intents("hub")
