"""PII redaction, text attacks, membership inference, slice metrics (built in lab 13, used by 13).

The small model that lab 13 attacks and defends with these is `llmlab.bow`'s.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

# ---------------------------------------------------------------- PII redaction

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# 13-19 digits, optionally grouped by single spaces or dashes: the shape of a payment card.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# An optional country code, then 9-11 digits in groups (a phone number as people write it).
PHONE = re.compile(
    r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,3}(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """True if `digits` passes the Luhn checksum that every payment card number carries."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def redact(text: str) -> str:
    """`text` with e-mail addresses, card-like numbers (Luhn-valid) and phone numbers masked."""
    text = EMAIL.sub("[EMAIL]", text)

    def card(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "[CARD]" if luhn_valid(digits) else match.group(0)

    text = CARD.sub(card, text)

    def phone(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        # An international number may have up to 15 digits; without a "+" a long run of digits is
        # more likely an order or account number than a phone.
        longest = 15 if match.group(0).startswith("+") else 11
        return "[PHONE]" if 9 <= len(digits) <= longest else match.group(0)

    return PHONE.sub(phone, text)


# ---------------------------------------------------------------- adversarial attacks


def typo_variants(word: str, per_kind: int | None = None) -> list[str]:
    """Character-level edits of one word: swapped neighbours, a dropped or a doubled letter, upper
    case, a space inside; at most `per_kind` of each kind (middle of the word first)."""
    if len(word) < 3 or not word.isalpha():
        return []
    middle = sorted(range(1, len(word) - 1), key=lambda i: abs(i - len(word) / 2))
    kinds = [
        [word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in middle if i < len(word) - 2],
        [word[:i] + word[i + 1 :] for i in middle],
        [word[:i] + word[i] + word[i:] for i in middle],
        [word.upper()],
        [word[: len(word) // 2] + " " + word[len(word) // 2 :]],
    ]
    variants: list[str] = []
    for kind in kinds:
        fresh = [v for v in dict.fromkeys(kind) if v != word and v not in variants]
        variants += fresh[:per_kind]
    return variants


def random_typos(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """`text` with each word replaced by a random typo variant with probability `rate`."""
    words = text.split(" ")
    for index, word in enumerate(words):
        variants = typo_variants(word)
        if variants and rng.random() < rate:
            words[index] = rng.choice(variants)
    return " ".join(words)


def neighbour_substitutions(
    words: Sequence[str], embeddings: torch.Tensor, k: int = 5
) -> dict[str, list[str]]:
    """Each word's `k` nearest words by cosine similarity of `embeddings` (one row per word)."""
    unit = nn.functional.normalize(embeddings.float(), dim=1)
    nearest = (unit @ unit.T).fill_diagonal_(-1).topk(k, dim=1).indices
    return {
        word: [words[j] for j in row] for word, row in zip(words, nearest.tolist(), strict=True)
    }


@dataclass(frozen=True)
class AttackResult:
    """One attacked sentence: the final text, whether the label flipped, edits and queries used."""

    original: str
    text: str
    success: bool
    edits: int
    queries: int


def greedy_attack(
    probabilities: Callable[[list[str]], np.ndarray],
    text: str,
    label: int,
    candidates: Callable[[str], list[str]],
    budget: int,
) -> AttackResult:
    """Edit up to `budget` words, each step keeping the edit that most lowers `label`'s probability.

    `probabilities(texts)` returns one row of class probabilities per text; `candidates(word)`
    the replacements for one word. A word is edited at most once; the attack stops at success.
    """
    words, edited, queries = text.split(" "), set(), 0
    for step in range(budget):
        options = [
            (index, replacement)
            for index, word in enumerate(words)
            if index not in edited
            for replacement in candidates(word)
        ]
        if not options:
            break
        texts = [" ".join(words[:i] + [r] + words[i + 1 :]) for i, r in options]
        scores = probabilities(texts)
        queries += len(texts)
        best = int(np.argmin(scores[:, label]))
        index, replacement = options[best]
        words[index] = replacement
        edited.add(index)
        if int(scores[best].argmax()) != label:
            return AttackResult(text, texts[best], True, step + 1, queries)
    return AttackResult(text, " ".join(words), False, len(edited), queries)


# ---------------------------------------------------------------- intervals


def mean_interval(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of per-row `values` with a bootstrap confidence interval over the rows."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to average")
    rows = np.random.default_rng(seed).integers(0, len(values), (n_resamples, len(values)))
    low, high = np.quantile(values[rows].mean(1), [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": float(values.mean()), "low": float(low), "high": float(high)}


def _auc(members: np.ndarray, non_members: np.ndarray) -> np.ndarray:
    """Rank AUC per row of two (resamples, n) score arrays: P(member scores higher), ties half."""
    scores = np.concatenate([members, non_members], axis=1)
    order = scores.argsort(axis=1, kind="stable")
    ranks = np.empty_like(scores)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1, dtype=float)[None], axis=1)
    # Average the ranks of ties so that equal scores count as a coin flip.
    for row in range(scores.shape[0]):
        values, inverse, counts = np.unique(scores[row], return_inverse=True, return_counts=True)
        if len(values) < scores.shape[1]:
            sums = np.bincount(inverse, weights=ranks[row])
            ranks[row] = (sums / counts)[inverse]
    m, n = members.shape[1], non_members.shape[1]
    return (ranks[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)


def _resampled_rows(
    n_members: int, n_others: int, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap row indices for members and non-members (resampled apart, same for any model)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, n_members, (n_resamples, n_members)),
        rng.integers(0, n_others, (n_resamples, n_others)),
    )


def _attack_aucs(
    member_losses: Sequence[float],
    non_member_losses: Sequence[float],
    rows: tuple[np.ndarray, np.ndarray],
) -> tuple[float, np.ndarray]:
    """The attack's AUC on all rows and on each resample of `rows` (low loss -> member)."""
    members, others = -np.asarray(member_losses, float), -np.asarray(non_member_losses, float)
    return float(_auc(members[None], others[None])[0]), _auc(members[rows[0]], others[rows[1]])


def membership_auc(
    member_losses: Sequence[float],
    non_member_losses: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """AUC of the loss-threshold membership attack (low loss -> member), with a bootstrap interval.

    0.5 means the attacker cannot tell training rows from others; 1.0 means it always can.
    """
    rows = _resampled_rows(len(member_losses), len(non_member_losses), n_resamples, seed)
    value, samples = _attack_aucs(member_losses, non_member_losses, rows)
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": value, "low": float(low), "high": float(high)}


def paired_membership_auc(
    losses_a: tuple[Sequence[float], Sequence[float]],
    losses_b: tuple[Sequence[float], Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """AUC(b) - AUC(a) of the attack on the same rows, with a paired bootstrap interval.

    Each of `losses_a`, `losses_b` is (member losses, non-member losses) of one model on the same
    rows; every resample draws the same rows for both models, as `metrics.paired_bootstrap` does.
    """
    if [len(x) for x in losses_a] != [len(x) for x in losses_b]:
        raise ValueError("both models must be scored on the same members and non-members")
    rows = _resampled_rows(len(losses_a[0]), len(losses_a[1]), n_resamples, seed)
    value_a, samples_a = _attack_aucs(*losses_a, rows)
    value_b, samples_b = _attack_aucs(*losses_b, rows)
    low, high = np.quantile(samples_b - samples_a, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"difference": value_b - value_a, "low": float(low), "high": float(high)}


# ---------------------------------------------------------------- slices


def slice_accuracy(
    correct: Sequence[bool], slices: Sequence, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Accuracy per slice with a 95% bootstrap interval, one row per slice (largest first)."""
    frame = pd.DataFrame({"correct": np.asarray(correct, float), "slice": list(slices)})
    rows = []
    for name, group in frame.groupby("slice", sort=False):
        interval = mean_interval(group.correct, n_resamples=n_resamples, seed=seed)
        rows.append({"slice": name, "rows": len(group), "accuracy": interval["value"]} | interval)
    table = pd.DataFrame(rows).drop(columns="value").set_index("slice")
    return table.sort_values("rows", ascending=False)


def largest_gap(
    correct: Sequence[bool], slices: Sequence, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float | str]:
    """The best minus the worst slice's accuracy, with a 95% interval (slices resampled apart)."""
    frame = pd.DataFrame({"correct": np.asarray(correct, float), "slice": list(slices)})
    accuracy = frame.groupby("slice").correct.mean()
    best, worst = accuracy.idxmax(), accuracy.idxmin()
    rng = np.random.default_rng(seed)

    def resampled(name) -> np.ndarray:
        values = frame.correct[frame.slice == name].to_numpy()
        return values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(1)

    differences = resampled(best) - resampled(worst)
    low, high = np.quantile(differences, [0.025, 0.975])
    return {
        "best": str(best),
        "worst": str(worst),
        "gap": float(accuracy[best] - accuracy[worst]),
        "low": float(low),
        "high": float(high),
    }


# ---------------------------------------------------------------- membership inference


@torch.inference_mode()
def per_row_loss(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each row: what a loss-threshold membership attack looks at."""
    return nn.functional.cross_entropy(model(features), labels, reduction="none").numpy()
