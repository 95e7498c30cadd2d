"""Streaming ETL with Spark Structured Streaming: arriving feedback files -> a Parquet table."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmlab.data import FEEDBACK_FILE, LABELS, MIN_CHARS, clean_text, verified_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

# The file source needs the schema up front: it cannot infer one from files that do not exist yet.
EVENT_SCHEMA = "id STRING, event_time TIMESTAMP, rating DOUBLE, label STRING, text STRING"
EVENT_SPACING = pd.Timedelta(minutes=5)  # synthetic event times, one row every five minutes
START_TIME = pd.Timestamp("2026-11-02 08:00:00")


@dataclass
class FeedPlan:
    """The arriving files: their lines, and which ids a correct pipeline must keep."""

    batches: list[list[str]]  # JSON lines per file, in arrival order
    new_ids: list[set[str]]  # the valid ids each file brings for the first time
    resent: int  # lines that repeat an earlier line (at-least-once delivery)
    dirty: int  # lines a correct pipeline must drop (cut off, blank, unknown label)
    repaired: int  # valid lines whose text needs cleaning


def word_characters(text: str) -> int:
    """How many word characters a text keeps after lab 02's cleaning (the too-short test)."""
    return len(re.sub(r"\W", "", clean_text(text)))


def feedback_events(rows: int) -> pd.DataFrame:
    """The first `rows` shipped feedback rows as events: id, event_time, rating, label, text."""
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    frame = pd.read_csv(verified_path(FEEDBACK_FILE), dtype={"source_id": str}, nrows=rows)
    frame = frame[frame.text.map(word_characters) >= MIN_CHARS].reset_index(drop=True)
    return pd.DataFrame(
        {
            "id": frame.source_id,
            "event_time": START_TIME + EVENT_SPACING * np.arange(len(frame)),
            "rating": frame.rating.astype(float),
            "label": frame.label,
            "text": frame.text,
        }
    )


def _line(row: dict) -> str:
    return json.dumps({**row, "event_time": pd.Timestamp(row["event_time"]).isoformat()})


def plan_feed(events: pd.DataFrame, n_files: int, resend_per_file: int, seed: int) -> FeedPlan:
    """Cut `events` into files; each later file resends recent lines and carries dirty ones."""
    if n_files < 2 or len(events) < 4 * n_files or resend_per_file < 0:
        raise ValueError(f"need >= 2 files of >= 4 rows each: {len(events)} rows, {n_files} files")
    rng = np.random.default_rng(seed)
    batches: list[list[str]] = []
    new_ids: list[set[str]] = []
    previous: list[str] = []
    resent = dirty = repaired = 0
    for number, chunk in enumerate(np.array_split(events.to_dict("records"), n_files)):
        rows = [dict(row) for row in chunk]
        for row in rows[:: max(1, len(rows) // 3)]:  # invisible marks and runs of whitespace
            row["text"] = "\u200b " + row["text"].replace(" ", "  \t") + "\u00ad"
            repaired += 1
        fresh = [_line(row) for row in rows]
        # At-least-once delivery: the last lines of the previous file arrive again, and one
        # line of this file arrives twice.
        again = previous[max(0, len(previous) - resend_per_file) :] + fresh[:1]
        resent += len(again)
        broken = {**rows[0], "id": f"cut-{number}"}
        junk = [
            _line(broken).split('"rating"')[0],  # a line cut off mid-write: no label, no text
            _line({**broken, "id": f"blank-{number}", "text": " \u200b\t... "}),
            _line({**broken, "id": f"label-{number}", "label": "angry"}),
        ]
        dirty += len(junk)
        lines = fresh + again + junk
        batches.append([lines[i] for i in rng.permutation(len(lines))])
        new_ids.append({row["id"] for row in rows})
        previous = fresh
    return FeedPlan(batches, new_ids, resent, dirty, repaired)


def write_atomically(lines: list[str], folder: Path, name: str) -> Path:
    """Write a file under a hidden temporary name, then rename it into `folder` in one step."""
    folder.mkdir(parents=True, exist_ok=True)
    # Spark skips names starting with "." or "_", so it never sees the half-written file.
    temporary = folder / f".{name}.tmp"
    temporary.write_text("\n".join(lines) + "\n")
    target = folder / name
    os.replace(temporary, target)  # atomic on one file system
    return target


def clean_events(events: DataFrame) -> DataFrame:
    """Drop broken rows and unknown labels, clean texts with lab 02's step, drop too-short ones."""
    import pyspark.sql.functions as F
    from pyspark.sql.types import StringType

    clean = F.udf(lambda text: clean_text(text), StringType())
    return (
        events.where(F.col("id").isNotNull() & F.col("event_time").isNotNull())
        .where(F.col("label").isin(LABELS))
        .withColumn("text", clean(F.coalesce("text", F.lit(""))))
        .where(F.length(F.regexp_replace("text", r"(?U)\W", "")) >= MIN_CHARS)
        .withColumn("event_date", F.to_date("event_time"))
    )


def read_events(spark: SparkSession, source: str) -> DataFrame:
    """The JSON-lines files arriving under `source` (file://, hdfs:// or s3a://), one per batch."""
    return spark.readStream.schema(EVENT_SCHEMA).option("maxFilesPerTrigger", 1).json(source)


def start_stream(
    events: DataFrame, table: str, checkpoint: str, watermark: str = "1 day"
) -> StreamingQuery:
    """Clean, deduplicate by id within the watermark, append to a Parquet table by event_date."""
    deduplicated = (
        clean_events(events)
        .withWatermark("event_time", watermark)
        .dropDuplicatesWithinWatermark(["id"])
    )
    return (
        deduplicated.writeStream.format("parquet")
        .option("path", table)
        .option("checkpointLocation", checkpoint)
        .partitionBy("event_date")
        .outputMode("append")
        .trigger(availableNow=True)  # process what has arrived, in bounded micro-batches, then stop
        .start()
    )


def batch_job(spark: SparkSession, source: str) -> DataFrame:
    """The same ETL as one batch job over every file under `source`."""
    events = spark.read.schema(EVENT_SCHEMA).json(source)
    return clean_events(events).dropDuplicates(["id"])
