"""The prediction cache on a real redis-server: keyed by model version, so a promoted model
never answers from the old version's entries."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from llmlab.system.cache import PredictionCache, RedisServer, cache_key

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


def answer(version: str, label: str) -> dict:
    """A prediction as the model deployment returns it."""
    return {"label": label, "score": 0.9, "model_version": version}


def test_keys_differ_by_version_and_text() -> None:
    assert cache_key("v1", "hi") != cache_key("v2", "hi") != cache_key("v2", "hi!")
    assert "hi" not in cache_key("v1", "hi"), "the key must not hold the text itself"


def test_a_new_version_never_reads_the_old_entries() -> None:
    async def scenario(url: str) -> tuple:
        cache = PredictionCache(url)
        try:
            await cache.put("v1", "card lost", answer("v1", "card_lost"))
            before = await cache.get("v1", "card lost")
            after_promotion = await cache.get("v2", "card lost")
            await cache.put("v2", "card lost", answer("v2", "balance"))
            return before, after_promotion, await cache.get("v2", "card lost")
        finally:
            await cache.close()

    with RedisServer() as server:
        before, after_promotion, refilled = asyncio.run(scenario(server.url))
    assert before["model_version"] == "v1"
    assert after_promotion is None, "v2 must miss where only v1 answered"
    assert refilled["model_version"] == "v2"


def test_an_answer_of_another_version_is_refused() -> None:
    async def offer(url: str) -> None:
        cache = PredictionCache(url)
        try:
            await cache.put("v2", "hi", answer("v1", "greeting"))
        finally:
            await cache.close()

    with RedisServer() as server, pytest.raises(ValueError, match="offered for v2"):
        asyncio.run(offer(server.url))


def test_server_stops_and_missing_binary_is_explained() -> None:
    server = RedisServer().start()
    server.stop()
    assert server.process.poll() is not None
    with pytest.raises(FileNotFoundError, match="make redis"):
        RedisServer(binary="no-such-redis-server")
