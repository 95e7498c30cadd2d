"""Federated averaging over gloo, one process per product (built in lab 13, used by labs 13, 15).

`python -m llmlab.federated --rounds 10 --result out.json` is the worker; launch it with
`llmlab.ranks.torchrun(module="llmlab.federated", nproc=len(PRODUCTS), ...)`. Each rank holds
one product's training rows, trains the small classifier of `llmlab.bow` locally, and the ranks
average their weights (weighted by rows) with one all-reduce per round; data is never pooled.
Lab 15 reuses the product of each review (`product_ranges`, `product_of`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from llmlab.bow import bag_of_words_model, fit, hashed_features
from llmlab.ranks import is_main_process, rank, world_size

# The five products of Hu and Liu's reviews, in the order their review ids run, and the words
# that name each in the text.
PRODUCTS = {
    "Apex DVD player": ("apex",),
    "Canon G3": ("canon", "g3"),
    "Nikon Coolpix 4300": ("nikon", "coolpix", "4300"),
    "Nokia 6610": ("nokia", "6610"),
    "Creative Zen Xtra": ("creative", "zen", "jukebox", "nomad"),
}


def review_ids(source_ids: Sequence[str]) -> np.ndarray:
    """The review number of each `review_sentence` source id."""
    return np.array([int(str(source).split("_")[0]) for source in source_ids])


def product_ranges(frame: pd.DataFrame, products: dict[str, Sequence[str]] = PRODUCTS) -> dict:
    """Contiguous review-id ranges, one per product in order, that best agree with the mentions.

    Dynamic programming over the sorted review ids: each review scores the mentions of the product
    whose range holds it; the cut points maximise the total score.
    """
    reviews = review_ids(frame.source_id)
    ids = np.unique(reviews)
    text = frame.text.str.lower()
    score = np.zeros((len(ids), len(products)))
    position = {review: i for i, review in enumerate(ids)}
    for p, words in enumerate(products.values()):
        pattern = r"\b(?:" + "|".join(words) + r")\b"
        for review in reviews[text.str.contains(pattern, regex=True).to_numpy()]:
            score[position[review], p] += 1
    cumulative = np.vstack([np.zeros(len(products)), score.cumsum(0)])
    # best[p, i]: the best score of the first i reviews split among the first p + 1 products.
    best = np.full((len(products), len(ids) + 1), -np.inf)
    cut = np.zeros((len(products), len(ids) + 1), dtype=int)
    best[0] = cumulative[:, 0]
    for p in range(1, len(products)):
        for i in range(len(ids) + 1):
            options = best[p - 1, : i + 1] + cumulative[i, p] - cumulative[: i + 1, p]
            cut[p, i] = int(options.argmax())
            best[p, i] = options[cut[p, i]]
    bounds, end = [], len(ids)
    for p in range(len(products) - 1, -1, -1):
        start = cut[p, end] if p else 0
        bounds.append((int(ids[start]), int(ids[end - 1])))
        end = start
    return dict(zip(products, reversed(bounds), strict=True))


def feedback_with_ids() -> pd.DataFrame:
    """The shipped feedback file with its `source_id` column (review_sentence), texts cleaned."""
    from llmlab.data import FEEDBACK_FILE, clean_text, verified_path

    frame = pd.read_csv(verified_path(FEEDBACK_FILE), dtype=str, keep_default_na=False)
    return frame.assign(text=frame.text.map(clean_text))


def product_of(texts: Sequence[str], ranges: dict[str, tuple[int, int]]) -> np.ndarray:
    """The product of each (cleaned) text, from its review id and the `ranges` found above."""
    frame = feedback_with_ids()
    review = dict(zip(frame.text, review_ids(frame.source_id), strict=True))
    products = np.full(len(texts), "", dtype=object)
    for row, text in enumerate(texts):
        for name, (first, last) in ranges.items():
            if first <= review.get(text, -1) <= last:
                products[row] = name
    return products


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """FedAvg's rule on one process: the average of `tensors` weighted by `weights` (rows)."""
    total = float(sum(weights))
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))


def federated_average(model: nn.Module, rows: int) -> None:
    """Replace `model`'s weights by their average over all ranks, weighted by each rank's rows."""
    total = torch.tensor([float(rows)])
    dist.all_reduce(total)
    for parameter in model.parameters():
        parameter.data.mul_(rows / total.item())
        dist.all_reduce(parameter.data)


@torch.inference_mode()
def predictions(model: nn.Module, features: torch.Tensor) -> list[int]:
    """Predicted class ids."""
    return model(features).argmax(1).tolist()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Worker flags."""
    parser = argparse.ArgumentParser(description="FedAvg worker: one product per rank.")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranges", type=str, required=True, help="product_ranges() as JSON")
    parser.add_argument("--result", type=Path, required=True, help="JSON file rank 0 writes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Worker: FedAvg over `rounds`, then the same budget on this client's data alone."""
    from llmlab.data import label_names, load_splits

    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    try:
        ranges = json.loads(args.ranges)
        product = list(ranges)[rank()]
        splits = load_splits()
        label_id = {name: index for index, name in enumerate(label_names())}
        train = splits["train"][product_of(splits["train"].text.tolist(), ranges) == product]
        features = hashed_features(train.text.tolist(), args.dim)
        labels = torch.tensor(train.label.map(label_id).to_numpy())
        test_features = hashed_features(splits["test"].text.tolist(), args.dim)

        torch.manual_seed(args.seed)  # the same initial weights on every client
        model = bag_of_words_model(args.dim, args.hidden)
        round_seconds, sent_bytes = [], 0
        for round_index in range(args.rounds):
            start = time.perf_counter()
            fit(model, features, labels, args.local_epochs, seed=args.seed + round_index)
            federated_average(model, len(labels))
            round_seconds.append(time.perf_counter() - start)
            sent_bytes += 4 * sum(p.numel() for p in model.parameters())
        torch.manual_seed(args.seed)
        local = bag_of_words_model(args.dim, args.hidden)
        fit(local, features, labels, args.rounds * args.local_epochs, seed=args.seed)
        mine = {
            "product": product,
            "train_rows": len(labels),
            "upload_bytes_per_round": sent_bytes / args.rounds,
            "round_seconds": round_seconds,
            "local_predictions": predictions(local, test_features),
        }
        gathered: list[Any] = [None] * world_size()
        dist.all_gather_object(gathered, mine)
        if is_main_process():
            report = {
                "clients": gathered,
                "fedavg_predictions": predictions(model, test_features),
                "parameters": sum(p.numel() for p in model.parameters()),
                "world_size": world_size(),
                "backend": dist.get_backend(),
            }
            tmp = args.result.with_suffix(".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(args.result)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
