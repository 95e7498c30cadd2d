"""Lab 12's view of the one load-test client (`llmlab.serving.loadtest`, built in lab 10): each
text sent once, rows in text order, latency in ms next to what the system's answers say about
themselves (cache hits, retries, replica pid, per-hop timers). Built and used in lab 12."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from llmlab.serving.loadtest import load_test


async def call_all(
    url: str, texts: Sequence[str], concurrency: int = 8, timeout_s: float = 30.0
) -> pd.DataFrame:
    """POST each text once to `url`/predict from `concurrency` clients; one row per text, in
    order: `load_test`'s columns (`answer_fields`) with the latency in ms (`latency_ms`)."""
    rows = await load_test(url, texts, len(texts), concurrency, math.inf, timeout_s)
    rows = rows.sort_values("text_index", ignore_index=True)
    return rows.assign(latency_ms=1000 * rows.pop("latency_s"))
