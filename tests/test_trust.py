"""Tests for llmlab.trust, llmlab.bow and llmlab.federated: redaction, attacks, intervals, the
small classifier, FedAvg, the card."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score

from llmlab import bow, federated, modelcard, registry, trust


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("mail jane.doe+shop@example.co.uk now", "mail [EMAIL] now"),
        ("card 4111 1111 1111 1111 declined", "card [CARD] declined"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("call +44 20 7946 0958 today", "call [PHONE] today"),
        ("call (555) 123-4567", "call [PHONE]"),
        ("order 1234567890123 shipped", "order 1234567890123 shipped"),
        ("4111 1111 1111 1112 fails the checksum", "4111 1111 1111 1112 fails the checksum"),
        ("the ad-2600 played 12 dvds on 2004-01-13", "the ad-2600 played 12 dvds on 2004-01-13"),
    ],
)
def test_redact_masks_pii_and_keeps_the_rest(line, kept):
    assert trust.redact(line) == kept


def test_luhn():
    assert trust.luhn_valid("79927398713") and not trust.luhn_valid("79927398710")


def test_typo_variants_edit_one_word_and_respect_per_kind():
    variants = trust.typo_variants("terrible")
    assert "terrible" not in variants and "TERRIBLE" in variants and "terr ible" in variants
    assert len(trust.typo_variants("terrible", per_kind=1)) == 5
    assert trust.typo_variants("ok") == [] and trust.typo_variants("g3") == []
    text = trust.random_typos("this player is terrible", random.Random(0), rate=1.0)
    assert text != "this player is terrible" and len(text.split(" ")) >= 4


def keyword_model(texts: list[str]) -> np.ndarray:
    """Class 1 with probability 0.9 when the word 'bad' is present, else class 0."""
    return np.array([[0.1, 0.9] if "bad" in t.split() else [0.9, 0.1] for t in texts])


def test_greedy_attack_flips_within_budget_and_stops():
    swaps = {"bad": ["b4d", "awful"]}
    result = trust.greedy_attack(keyword_model, "a bad bad day", 1, lambda w: swaps.get(w, []), 3)
    assert result.success and result.edits == 2 and "bad" not in result.text.split()
    short = trust.greedy_attack(keyword_model, "a bad bad day", 1, lambda w: swaps.get(w, []), 1)
    assert not short.success and short.edits == 1
    none = trust.greedy_attack(keyword_model, "a bad day", 1, lambda w: [], 3)
    assert not none.success and none.queries == 0


def test_neighbour_substitutions_finds_the_closest_other_word():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    neighbours = trust.neighbour_substitutions(["good", "great", "bad"], embeddings, k=1)
    assert neighbours == {"good": ["great"], "great": ["good"], "bad": ["great"]}


def test_mean_interval_covers_the_mean_and_narrows_with_rows():
    rng = np.random.default_rng(0)
    small = trust.mean_interval(rng.normal(1, 1, 30))
    large = trust.mean_interval(rng.normal(1, 1, 3000))
    assert small["low"] < small["value"] < small["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 5
    with pytest.raises(ValueError):
        trust.mean_interval([])


def test_membership_auc_matches_sklearn_and_its_extremes():
    rng = np.random.default_rng(0)
    members, others = rng.normal(0, 1, 200).round(1), rng.normal(0.5, 1, 300).round(1)
    expected = roc_auc_score([1] * 200 + [0] * 300, -np.concatenate([members, others]))
    auc = trust.membership_auc(members, others)
    assert auc["value"] == pytest.approx(expected)
    assert auc["low"] < auc["value"] < auc["high"]
    assert trust.membership_auc([0.1, 0.2], [1.0, 2.0])["value"] == 1.0
    assert trust.membership_auc([1.0, 1.0], [1.0, 1.0])["value"] == 0.5


def test_paired_membership_auc_is_the_difference_with_an_interval_of_the_same_rows():
    rng = np.random.default_rng(0)
    others = rng.normal(1.0, 0.3, 300)
    leaky, private = (rng.normal(0.6, 0.3, 200), others), (rng.normal(0.97, 0.3, 200), others)
    gap = trust.paired_membership_auc(leaky, private)
    expected = trust.membership_auc(*private)["value"] - trust.membership_auc(*leaky)["value"]
    assert gap["difference"] == pytest.approx(expected)
    assert gap["low"] < gap["difference"] < gap["high"] < 0  # less leak, and the interval shows it
    same = trust.paired_membership_auc(leaky, leaky)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}  # same rows: no noise at all
    # A nearly equal pair: the paired interval is far narrower than one model's own.
    close = trust.paired_membership_auc(private, (private[0] + rng.normal(0, 0.02, 200), others))
    single = trust.membership_auc(*private)
    assert close["high"] - close["low"] < single["high"] - single["low"]
    with pytest.raises(ValueError):
        trust.paired_membership_auc(leaky, (leaky[0][:10], others))


def test_slice_accuracy_and_largest_gap():
    correct = [1] * 90 + [0] * 10 + [1] * 50 + [0] * 50
    slices = ["a"] * 100 + ["b"] * 100
    table = trust.slice_accuracy(correct, slices)
    assert table.loc["a", "accuracy"] == 0.9 and table.loc["b", "accuracy"] == 0.5
    gap = trust.largest_gap(correct, slices)
    assert (gap["best"], gap["worst"]) == ("a", "b") and gap["gap"] == pytest.approx(0.4)
    assert 0.25 < gap["low"] < 0.4 < gap["high"] < 0.55


def test_hashed_features_keep_most_of_a_misspelt_word():
    clean, typo, other = bow.hashed_features(["terrible battery", "terrbile battery", "great"])
    assert torch.cosine_similarity(clean, typo, 0) > torch.cosine_similarity(clean, other, 0) + 0.3


def test_fit_learns_a_separable_problem_it_was_not_shown():
    """Labels from a linear rule: held-out rows are classified by the rule (a fit that learned
    nothing scores about 1/3, one that memorised only its rows about the same)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1280, 128, generator=generator)
    labels = (features @ torch.randn(128, 3, generator=generator)).argmax(dim=1)
    model = bow.fit(
        bow.bag_of_words_model(dim=128, hidden=32), features[:1024], labels[:1024], 20, 1e-2
    )
    with torch.no_grad():
        held_out = (model(features[1024:]).argmax(dim=1) == labels[1024:]).float().mean()
    assert held_out > 0.8, f"held-out accuracy {held_out:.2f} on a linear rule"


def test_fit_overfits_random_labels_and_weight_decay_holds_it_back():
    """Random labels can only be memorised: without regularisation the training loss goes to
    about zero (the gap a membership attack reads); strong weight decay keeps it far above."""
    torch.manual_seed(0)
    features = torch.randn(64, 128)
    labels = torch.randint(0, 3, (64,))
    losses = {
        decay: trust.per_row_loss(
            bow.fit(bow.bag_of_words_model(dim=128, hidden=32), features, labels, 60, 1e-2, decay),
            features,
            labels,
        ).mean()
        for decay in (0.0, 1.0)
    }
    assert losses[0.0] < 0.05 and losses[1.0] > 10 * losses[0.0], losses


def test_product_ranges_recover_contiguous_ranges_from_mentions():
    frame = pd.DataFrame(
        {
            "source_id": ["1_1", "1_2", "2_1", "3_1", "3_2", "4_1", "5_1"],
            "text": ["apex", "the apex", "apex again", "canon g3", "apex vs canon", "nokia", "x"],
        }
    )
    products = {"apex": ("apex",), "canon": ("canon", "g3"), "nokia": ("nokia",)}
    assert federated.product_ranges(frame, products) == {
        "apex": (1, 2),
        "canon": (3, 3),
        "nokia": (4, 5),
    }


def test_weighted_average_weights_by_rows():
    average = federated.weighted_average([torch.tensor([0.0]), torch.tensor([3.0])], [2, 1])
    assert average.item() == pytest.approx(1.0)


def _average_on_rank(rank: int, store: str, rows: list[int], out: str) -> None:
    """One client of a 2-rank gloo group: weights all equal to rank + 1, `rows[rank]` rows."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(rank + 1.0)
        federated.federated_average(model, rows=rows[rank])
        values = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(values, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_federated_average_weights_each_client_by_its_rows(tmp_path):
    """Two ranks with 3 and 9 rows: every weight becomes (1 * 3 + 2 * 9) / 12 on both. Catches
    an unweighted mean (1.5), a sum (weights times rows, not divided) and a no-op (1 and 2)."""
    import torch.multiprocessing as mp

    rows, out = [3, 9], str(tmp_path / "weights")
    mp.spawn(_average_on_rank, args=(str(tmp_path / "store"), rows, out), nprocs=2, join=True)
    expected = (1 * rows[0] + 2 * rows[1]) / sum(rows)
    for rank in range(2):
        values = torch.load(f"{out}.{rank}")
        assert torch.allclose(values, torch.full_like(values, expected)), (rank, values)


def test_model_card_has_the_sections_people_write(monkeypatch):
    # The registry itself is tested in test_registry.py; here only the card's text.
    entry = registry.RegisteredVersion(
        "clf", 1, Path("."), {"accuracy": 0.8}, {"data_hash": "h"}, ["champion"]
    )
    monkeypatch.setattr(registry, "resolve", lambda ref, uri=None: entry)
    monkeypatch.setattr(registry, "versions", lambda name, uri=None: [entry])
    uri = None
    bare = modelcard.model_card("clf", "champion", uri)
    assert bare.count("_Not documented for this version._") == 6
    card = modelcard.model_card(
        "clf",
        "champion",
        uri,
        intended_use="Triage of feedback.",
        out_of_scope=["medical advice"],
        evaluation_data="536 test rows.",
        slices={"largest gap": "0.10"},
        privacy={"epsilon": "2.95"},
        limitations=["English only"],
    )
    for line in (
        "## Intended use",
        "Triage of feedback.",
        "- medical advice",
        "- **largest gap**: 0.10",
        "- **epsilon**: 2.95",
        "- English only",
        "- **accuracy**: 0.8000",
    ):
        assert line in card
    assert "_Not documented" not in card
