"""Lab 15's helpers on tiny inputs: masking, the two objectives, the kNN vote, replay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from llmlab.knowledge import (
    IGNORE_INDEX,
    EncoderClassifier,
    PretrainingModel,
    TinyEncoder,
    knn_vote,
    mask_tokens,
    mean_pool,
    most_shifted_group,
    replay_rows,
    token_blocks,
)

VOCAB, MASK_ID = 50, 4
SPECIAL_IDS = (0, 1, 2, 3, 4)  # pad, unk, cls, sep, mask


def masked_batch(rows: int = 400, length: int = 64, seed: int = 0):
    """Random ids with a [CLS] first and a [SEP] last in every row, masked once."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_IDS), VOCAB, (rows, length), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3
    special = torch.isin(ids, torch.tensor(SPECIAL_IDS))
    inputs, labels = mask_tokens(ids, special, MASK_ID, VOCAB, generator=generator)
    return ids, special, inputs, labels


def test_masking_rates_are_bert_s():
    ids, special, inputs, labels = masked_batch()
    chosen = labels != IGNORE_INDEX
    n_chosen = chosen.sum().item()
    # 25,000 candidate tokens: the binomial standard error of 15 % is 0.2 points.
    assert abs(n_chosen / (~special).sum().item() - 0.15) < 0.01
    became_mask = (inputs[chosen] == MASK_ID).float().mean().item()
    unchanged = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(became_mask - 0.8) < 0.03
    # 10 % kept on purpose plus the random draws that hit the same token (1 in 50).
    assert abs(unchanged - (0.1 + 0.1 / VOCAB)) < 0.02


def test_specials_never_masked_and_labels_only_where_chosen():
    ids, special, inputs, labels = masked_batch()
    assert torch.equal(inputs[special], ids[special]), "a special token was changed"
    assert (labels[special] == IGNORE_INDEX).all(), "a special token got a label"
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen]), "a label is not the original token"
    # Outside the chosen positions the input is the original text.
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_masking_is_reproducible_with_a_generator():
    assert torch.equal(masked_batch(seed=3)[2], masked_batch(seed=3)[2])
    assert not torch.equal(masked_batch(seed=3)[2], masked_batch(seed=4)[2])


def tiny_encoder(causal: bool) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(VOCAB, 16, 2, 2, 12, causal=causal).eval()


def test_causal_encoder_does_not_see_later_tokens_but_the_masked_one_does():
    ids = torch.randint(5, VOCAB, (2, 12))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    for causal in (True, False):
        encoder = tiny_encoder(causal)
        with torch.no_grad():
            before, after = encoder(ids), encoder(changed)
        earlier_moved = (before[:, :-1] - after[:, :-1]).abs().max().item()
        if causal:
            assert earlier_moved < 1e-6, "a causal position saw a later token"
        else:
            assert earlier_moved > 1e-4, "a bidirectional position ignored a later token"


def test_padding_changes_nothing_for_real_tokens():
    encoder = tiny_encoder(causal=False)
    ids = torch.randint(5, VOCAB, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = encoder(ids)
        with_padding = encoder(padded, mask)[:, :8]
    assert (alone - with_padding).abs().max().item() < 1e-5


def test_causal_loss_predicts_the_next_token():
    model = PretrainingModel(tiny_encoder(causal=True), VOCAB, "causal")
    ids = torch.randint(5, VOCAB, (2, 12))
    output = model(ids, ids)
    expected = torch.nn.functional.cross_entropy(
        output["logits"].flatten(0, 1), ids[:, 1:].flatten()
    )
    assert torch.isclose(output["loss"], expected)
    assert output["logits"].shape[1] == 11  # the last position predicts nothing we have


def test_masked_loss_counts_only_the_masked_positions():
    model = PretrainingModel(tiny_encoder(causal=False), VOCAB, "masked")
    ids = torch.randint(5, VOCAB, (2, 12))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3] = ids[0, 3]
    logits = model(ids, labels)["logits"]
    expected = -logits[0, 3].log_softmax(-1)[ids[0, 3]]
    assert torch.isclose(model(ids, labels)["loss"], expected)


def test_objective_and_encoder_must_agree():
    with pytest.raises(ValueError, match="causal"):
        PretrainingModel(tiny_encoder(causal=False), VOCAB, "causal")
    with pytest.raises(ValueError, match="objective"):
        PretrainingModel(tiny_encoder(causal=False), VOCAB, "denoising")


def test_classifier_mean_pools_real_tokens_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0
    classifier = EncoderClassifier(tiny_encoder(causal=False), 3)
    logits = classifier(torch.randint(5, VOCAB, (4, 12)), torch.ones(4, 12, dtype=torch.long))
    assert logits.shape == (4, 3)


def test_token_blocks_pack_texts_into_one_stream():
    blocks = token_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(ValueError):
        token_blocks([[1]], 4)


def test_knn_vote_sums_similarities():
    labels = np.array([[0, 1, 1], [2, 2, 0]])
    scores = np.array([[0.9, 0.5, 0.5], [0.1, 0.1, 0.3]])
    assert knn_vote(labels, scores, 3).tolist() == [1, 0]


def test_most_shifted_group_and_replay():
    labels = pd.Series(["a", "a", "b", "b", "a", "b", "a", "a"])
    groups = pd.Series(["x", "x", "y", "y", "z", "z", "z", "z"])
    assert most_shifted_group(labels, groups) == "y"  # only b, against a mostly-a rest
    mixed = replay_rows(np.array([10, 11]), np.arange(5), ratio=1.5, seed=0)
    assert mixed[:2].tolist() == [10, 11] and len(mixed) == 5
    assert len(set(mixed[2:].tolist())) == 3 and set(mixed[2:].tolist()) <= set(range(5))
