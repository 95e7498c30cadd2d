"""Scaling out: data-parallel worker (llmlab.distributed), launcher and rank helpers
(llmlab.ranks, a real 2-process gloo run), the feedback classifier (llmlab.models) and the local
Spark session (llmlab.spark)."""

from collections import Counter

import pytest
import torch
from torch.utils.data import TensorDataset

from llmlab.distributed import (
    DataParallelConfig,
    hashed_token_ids,
    parse_args,
    sharded_batches,
    train_data_parallel,
)
from llmlab.models import FeedbackClassifier
from llmlab.ranks import average_over_ranks, torchrun
from llmlab.spark import java_available, spark_session

TINY = DataParallelConfig(steps=3, global_batch=8, dim=16, seq_len=8, vocab_size=64)
TINY_FLAGS = ["--steps", "3", "--global-batch", "8", "--dim", "16", "--seq-len", "8"]
TINY_FLAGS += ["--vocab-size", "64"]


def test_hashed_token_ids_are_stable_padded_and_in_range():
    ids = hashed_token_ids(["Good screen, good battery", "bad"], vocab_size=50, seq_len=6)
    assert ids.shape == (2, 6)
    assert ids[0, 0] == ids[0, 2], "the same word (case-insensitive) must get the same id"
    assert (ids[0, :4] > 0).all() and (ids[0, 4:] == 0).all() and (ids[1, 1:] == 0).all()
    assert ids.max() < 50
    assert torch.equal(ids, hashed_token_ids(["Good screen, good battery", "bad"], 50, 6))


def test_classifier_ignores_padding():
    torch.manual_seed(0)
    model = FeedbackClassifier(vocab_size=20, seq_len=12, dim=8, n_layers=1, n_classes=3)
    short = torch.tensor([[3, 4, 5, 0, 0, 0]])
    longer = torch.cat([short, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(short), model(longer))


def test_ranks_batches_together_are_the_single_process_batch():
    dataset = TensorDataset(torch.arange(23))
    single = [b[0] for b in sharded_batches(dataset, 8, seed=1, num_replicas=1, replica=0)(2)]
    ranks = [sharded_batches(dataset, 8, seed=1, num_replicas=2, replica=r)(2) for r in (0, 1)]
    together = [torch.cat([a[0], b[0]]) for a, b in zip(*ranks, strict=True)]
    assert len(together) == len(single) == 2
    for joint, alone in zip(together, single, strict=True):
        assert sorted(joint.tolist()) == sorted(alone.tolist())


def test_global_batch_must_split_over_ranks():
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        sharded_batches(TensorDataset(torch.arange(10)), 8, seed=0, num_replicas=3, replica=0)


def test_average_over_ranks_is_the_identity_in_one_process():
    assert average_over_ranks([1.5, 2.0]) == [1.5, 2.0]


def test_worker_flags_mirror_the_config():
    args = parse_args([*TINY_FLAGS, "--strategies", "ddp", "fsdp", "--result", "out.json"])
    assert (args.steps, args.dim, args.strategies) == (3, 16, ["ddp", "fsdp"])
    with pytest.raises(SystemExit):
        parse_args(["--strategies", "zero", "--result", "out.json"])


def test_single_process_run_reports_one_loss_per_step():
    report = train_data_parallel(TINY)
    assert report["strategy"] == "single" and report["world_size"] == 1
    assert len(report["loss"]) == TINY.steps
    assert report["parameters_on_rank"] == report["parameters"]


def test_two_process_ddp_and_fsdp_reproduce_the_single_process_run():
    single = train_data_parallel(TINY)
    report = torchrun(
        args=[*TINY_FLAGS, "--strategies", "ddp", "fsdp", "--all-reduce-example"], nproc=2
    )
    assert report["backend"] == "gloo" and report["ddp"]["world_size"] == 2
    for strategy in ("ddp", "fsdp"):
        torch.testing.assert_close(report[strategy]["loss"], single["loss"], atol=1e-5, rtol=0)
    assert report["fsdp"]["parameters_on_rank"] < report["fsdp"]["parameters"]
    example = report["all_reduce_example"]
    summed = torch.tensor(example["inputs"]).sum(0)
    torch.testing.assert_close(torch.tensor(example["all_reduce"]), summed)


def test_torchrun_reports_a_failing_worker():
    with pytest.raises(RuntimeError, match="No module named llmlab.no_such_worker"):
        torchrun("llmlab.no_such_worker", nproc=1)


def test_spark_session_explains_missing_java(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(RuntimeError, match="Spark needs a Java runtime"):
        spark_session()


@pytest.mark.skipif(not java_available(), reason="Spark needs Java 17+ (not found on PATH)")
def test_spark_word_count_matches_python():
    lines = ["the cat sat", "the dog", "", "cat and the hat"]
    spark = spark_session("local[1]", app_name="llmlab-test")
    try:
        rdd = spark.sparkContext.parallelize(lines, 2)
        counts = dict(
            rdd.flatMap(str.split).map(lambda w: (w, 1)).reduceByKey(int.__add__).collect()
        )
    finally:
        spark.stop()
    assert counts == Counter(word for line in lines for word in line.split())
