"""Streaming ETL: the arriving files, atomic writes, and a tiny stream restarted exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlab.spark import java_available, spark_session
from llmlab.streaming import (
    batch_job,
    feedback_events,
    plan_feed,
    read_events,
    start_stream,
    word_characters,
    write_atomically,
)


def test_plan_feed_resends_recent_lines_and_adds_dirty_ones():
    events = feedback_events(40)
    plan = plan_feed(events, n_files=3, resend_per_file=2, seed=0)
    assert set().union(*plan.new_ids) == set(events.id)
    assert sum(len(ids) for ids in plan.new_ids) == len(events), "a file repeats another's id"
    lines = [line for batch in plan.batches for line in batch]
    assert len(lines) == len(events) + plan.resent + plan.dirty
    assert plan.resent == 2 * 2 + 3 and plan.dirty == 3 * 3
    assert len(lines) - len(set(lines)) == plan.resent, "resent lines must be exact copies"
    whole = [json.loads(line) for line in plan.batches[1] if line.endswith("}")]  # not cut off
    second_file_ids = {row["id"] for row in whole}
    assert len(second_file_ids & plan.new_ids[0]) == 2, "file 2 must resend 2 lines of file 1"
    assert all(word_characters(text) >= 3 for text in events.text)


def test_plan_feed_rejects_too_few_rows():
    with pytest.raises(ValueError, match="need >= 2 files"):
        plan_feed(feedback_events(5), n_files=2, resend_per_file=1, seed=0)
    with pytest.raises(ValueError, match="rows must be positive"):
        feedback_events(0)


def test_write_atomically_leaves_only_the_finished_file(tmp_path: Path):
    target = write_atomically(["a", "b"], tmp_path / "inbox", "one.jsonl")
    assert target.read_text() == "a\nb\n"
    assert [path.name for path in (tmp_path / "inbox").iterdir()] == ["one.jsonl"]


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One small local SparkSession for the module's stream tests."""
    if not java_available():
        pytest.skip("Spark needs Java 17+ (not found on PATH)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMLAB_BUILD_DIR", str(tmp_path_factory.mktemp("spark-build")))
        session = spark_session("local[1]", app_name="llmlab-streaming-test")
    session.conf.set("spark.sql.shuffle.partitions", "1")
    session.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "false")
    yield session
    session.stop()


def test_restarted_stream_lands_every_row_exactly_once(spark, tmp_path: Path):
    plan = plan_feed(feedback_events(16), n_files=2, resend_per_file=2, seed=0)
    inbox = tmp_path / "inbox"
    table, checkpoint = (tmp_path / "table").as_uri(), (tmp_path / "checkpoint").as_uri()

    def run() -> list[dict]:
        query = start_stream(read_events(spark, inbox.as_uri()), table, checkpoint)
        query.awaitTermination()
        return query.recentProgress

    write_atomically(plan.batches[0], inbox, "feedback-0.jsonl")
    first = run()
    assert spark.read.parquet(table).count() == len(plan.new_ids[0])
    write_atomically(plan.batches[1], inbox, "feedback-1.jsonl")  # while the query is down
    second = run()
    assert [progress["batchId"] for progress in first + second] == [0, 1], "one per file"

    landed = spark.read.parquet(table).toPandas()
    assert sorted(landed.id) == sorted(set().union(*plan.new_ids)), "rows lost or duplicated"
    assert not landed.text.str.contains("\u200b|\t|  ").any(), "texts were not cleaned"
    dropped = second[0]["stateOperators"][0]["customMetrics"]["numDroppedDuplicateRows"]
    assert dropped == 3, "the restarted query must remember the ids of the first run"
    batch = batch_job(spark, inbox.as_uri()).toPandas()
    columns = sorted(landed.columns)
    assert (
        landed[columns]
        .sort_values("id")
        .reset_index(drop=True)
        .equals(batch[columns].sort_values("id").reset_index(drop=True))
    ), "the stream's table differs from the batch job on the same files"
