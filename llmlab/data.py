"""Shipped data: checksummed loading, cleaning, deduplication, stable splits and manifests."""

from __future__ import annotations

import gzip
import hashlib
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import pandas as pd

from llmlab.config import data_dir

# SHA-256 of every shipped file, also listed in data/README.md (a test keeps the two in sync).
SHIPPED_FILES = {
    "customer_feedback.csv": "d469fce47cfa99e93e032a4e089638e2478fbb7422e4b58698743ace731bd74d",
    "austen.txt.gz": "71a1377705d4547366e879b71711bd6f2d0c93f9a95919d094bb680dbfecfb66",
}
FEEDBACK_FILE = "customer_feedback.csv"
CORPUS_FILE = "austen.txt.gz"
LABELS = ["negative", "neutral", "positive"]
HUB_DATASET = "mteb/banking77"  # 77 real banking-support intents, for users with a network
SOURCES = ("shipped", "hub")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
MIN_CHARS = 3


class DataIntegrityError(RuntimeError):
    """A shipped file differs from the checksum recorded in the data card."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_path(name: str) -> Path:
    """Path of shipped file `name` after checking it exists and matches its recorded checksum."""
    if name not in SHIPPED_FILES:
        raise KeyError(f"{name!r} is not a shipped file: choose one of {sorted(SHIPPED_FILES)}")
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: it ships with the repository; restore it with "
            f"`git checkout -- data/{name}`"
        )
    actual, expected = sha256_file(path), SHIPPED_FILES[name]
    if actual != expected:
        raise DataIntegrityError(
            f"{path} has sha256 {actual[:12]}..., but the data card (data/README.md) records "
            f"{expected[:12]}...: the file changed. Restore it with `git checkout -- data/{name}`, "
            "or, if the change is intended, update data/README.md and llmlab.data.SHIPPED_FILES"
        )
    return path


def check_all() -> dict[str, str]:
    """Check every shipped file: {name: 'ok' or what is wrong}."""
    status = {}
    for name in SHIPPED_FILES:
        try:
            verified_path(name)
            status[name] = "ok"
        except (FileNotFoundError, DataIntegrityError) as error:
            status[name] = str(error)
    return status


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")


def load_intents(source: str = "shipped") -> pd.DataFrame:
    """Raw labelled texts as DataFrame[text, label]: shipped customer feedback, or BANKING77."""
    _check_source(source)
    if source == "hub":
        return _load_hub()
    frame = pd.read_csv(verified_path(FEEDBACK_FILE), dtype=str, keep_default_na=False)
    return frame[["text", "label"]]


def _load_hub() -> pd.DataFrame:
    """All splits of HUB_DATASET, with label names instead of ids."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(HUB_DATASET)
    except Exception as error:
        raise ConnectionError(
            f"could not load {HUB_DATASET} from the Hugging Face Hub ({error}); "
            "offline, use source='shipped'"
        ) from error
    frame = pd.concat([dataset[split].to_pandas() for split in dataset], ignore_index=True)
    return frame.rename(columns={"label": "label_id", "label_text": "label"})[["text", "label"]]


def label_names(source: str = "shipped") -> list[str]:
    """Class names in a fixed order (index = class id)."""
    _check_source(source)
    if source == "shipped":
        return list(LABELS)
    return sorted(load_intents(source).label.unique())


INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2060\ufeff]")  # soft hyphen, zero-width marks
SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def clean_text(text: str) -> str:
    """Unicode NFKC, invisible marks dropped, whitespace and control runs collapsed to a space."""
    text = unicodedata.normalize("NFKC", text)
    return SPACE_OR_CONTROL.sub(" ", INVISIBLE.sub("", text)).strip()


def near_duplicate_key(text: str) -> str:
    """What two texts share when they differ only in case, punctuation or spacing."""
    return " ".join(re.findall(r"\w+", clean_text(text).casefold()))


def row_hash(text: str) -> str:
    """Content hash of a text, insensitive to case, punctuation and spacing."""
    return hashlib.sha256(near_duplicate_key(text).encode()).hexdigest()


def clean(frame: pd.DataFrame, min_chars: int = MIN_CHARS) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalize texts; drop too-short ones, exact and near duplicates (first copy kept).

    Returns the cleaned frame and how many rows each step removed; `conflicting_labels`
    counts removed duplicates whose label differed from the kept copy.
    """
    frame = frame.assign(text=frame.text.map(clean_text))
    report = {"rows_in": len(frame)}
    keys = frame.text.map(near_duplicate_key)
    # Too short = fewer than `min_chars` word characters, e.g. "!" or "...".
    too_short = keys.str.len() < min_chars
    frame, keys = frame[~too_short], keys[~too_short]
    exact = frame.text.duplicated()
    near = keys.duplicated() & ~exact
    kept_label = frame.label.groupby(keys).transform("first")
    report.update(
        too_short=int(too_short.sum()),
        exact_duplicates=int(exact.sum()),
        near_duplicates=int(near.sum()),
        conflicting_labels=int((keys.duplicated() & (frame.label != kept_label)).sum()),
    )
    frame = frame[~keys.duplicated()].reset_index(drop=True)
    report["rows_out"] = len(frame)
    return frame, report


def split_of(text: str, fractions: dict[str, float] = SPLIT_FRACTIONS) -> str:
    """Split a text belongs to: a pure function of its content, so old rows never move."""
    # The first 8 bytes of the hash are a uniform number in [0, 1).
    position = int(row_hash(text)[:16], 16) / 2**64
    edge = 0.0
    for name, fraction in fractions.items():
        edge += fraction
        if position < edge:
            return name
    return name


def stable_split(
    frame: pd.DataFrame, fractions: dict[str, float] = SPLIT_FRACTIONS
) -> dict[str, pd.DataFrame]:
    """Hash-based train/validation/test split; class proportions match in expectation."""
    if abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    assigned = frame.text.map(lambda text: split_of(text, fractions))
    return {name: frame[assigned == name].reset_index(drop=True) for name in fractions}


@lru_cache(maxsize=2)
def _cached_splits(source: str) -> dict[str, pd.DataFrame]:
    frame, _ = clean(load_intents(source))
    return stable_split(frame)


def load_splits(source: str = "shipped") -> dict[str, pd.DataFrame]:
    """Cleaned, deduplicated train/validation/test frames with columns text and label."""
    _check_source(source)
    if source == "shipped":
        verified_path(FEEDBACK_FILE)  # cheap, and catches a file changed since the cache filled
    return {name: split.copy() for name, split in _cached_splits(source).items()}


def content_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's (label, text) rows, independent of row order."""
    lines = sorted(f"{label}\t{text}" for text, label in zip(frame.text, frame.label, strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def data_manifest(
    splits: dict[str, pd.DataFrame] | None = None, source: str = "shipped"
) -> dict[str, object]:
    """{'source', 'splits': {name: {'rows', 'sha256'}}, 'hash'}: which data exactly, by content."""
    splits = load_splits(source) if splits is None else splits
    per_split = {
        name: {"rows": len(split), "sha256": content_hash(split)} for name, split in splits.items()
    }
    overall = "\n".join(f"{name}:{entry['sha256']}" for name, entry in sorted(per_split.items()))
    return {
        "source": source,
        "splits": per_split,
        "hash": hashlib.sha256(overall.encode()).hexdigest(),
    }


@lru_cache(maxsize=1)
def _corpus_text() -> str:
    return gzip.decompress(verified_path(CORPUS_FILE).read_bytes()).decode("utf-8")


def load_corpus() -> str:
    """Plain English text for language-model pretraining: Jane Austen's six novels (~4 MB)."""
    verified_path(CORPUS_FILE)
    return _corpus_text()
