"""Knowledge-base sentence vectors shared through Redis (runtime/conversation/source_vectors.py),
on the real MiniLM embedder and the real Redis of the test session: the cached vectors are the
embedder's own, a second turn embeds only what is new, an extractive answer is the same from the
cache, and a dead Redis costs only the cache."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from runtime.answering.extractive import extract_answer
from runtime.conversation.source_vectors import TTL_S, SourceVectors, source_vector_key
from runtime.events import redis_client
from tests.conftest import Services, free_port


@pytest.fixture(scope="module")
def embedder(services: Services) -> Any:
    from ingestion.embed import LocalEmbedder

    emb = LocalEmbedder(threads=1)
    yield emb
    emb.close()


class Counting:
    """The embedder's ``embed_many``, recording which texts it was asked for."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.asked: list[list[str]] = []

    async def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.asked.append(list(texts))
        return np.asarray(await self.embedder.embed_many(list(texts)), dtype=np.float32)


@dataclass
class Chunk:
    text: str
    title: str = "Shipping"
    section: str = "Shipping"
    source: str = "https://shop.example/help/shipping"
    similarity: float = 0.8
    page: int | None = None


async def test_vectors_come_back_from_redis_exactly_and_only_new_texts_are_embedded(
    services: Services, embedder: Any,
) -> None:
    redis = redis_client(services.redis_url)
    model = f"test-model-{uuid.uuid4().hex[:8]}"  # a fresh key space for this test
    direct = Counting(embedder)
    cached_embed = Counting(embedder)
    vectors = SourceVectors(redis, model, cached_embed)
    first = ["Standard shipping takes 3 to 5 business days.", "Express orders arrive the next day."]
    try:
        got = await vectors(first)
        want = await direct(first)
        assert got.dtype == np.float32 and got.shape == (2, 384)
        np.testing.assert_array_equal(got, want)
        assert cached_embed.asked == [first] and (vectors.hits, vectors.misses) == (0, 2)
        key = source_vector_key(model, first[0])
        assert 0 < await redis.ttl(key) <= TTL_S

        # The next turn: two texts seen before and one new; only the new one is embedded.
        second = [first[1], "Returns are free within 30 days.", first[0]]
        got2 = await vectors(second)
        np.testing.assert_array_equal(got2, await direct(second))
        assert cached_embed.asked[1:] == [["Returns are free within 30 days."]]
        assert (vectors.hits, vectors.misses) == (2, 3)

        # Another model name shares nothing.
        other = SourceVectors(redis, model + "-b", Counting(embedder))
        await other(first[:1])
        assert (other.hits, other.misses) == (0, 1)
    finally:
        await redis.aclose()


async def test_an_extractive_answer_is_the_same_from_the_cache(services: Services, embedder: Any) -> None:
    redis = redis_client(services.redis_url)
    embed = Counting(embedder)
    vectors = SourceVectors(redis, f"test-model-{uuid.uuid4().hex[:8]}", embed)
    chunks = [Chunk("Standard shipping takes 3 to 5 business days. Express shipping arrives the next "
                    "business day. Orders placed before noon leave our warehouse the same day.")]
    question = "How long does standard shipping take?"
    qvec = np.asarray(await embedder.embed(question), dtype=np.float32).reshape(-1)
    try:
        cold = await extract_answer(question, qvec, chunks, vectors)
        warm = await extract_answer(question, qvec, chunks, vectors)
        uncached = await extract_answer(question, qvec, chunks, Counting(embedder))
        assert cold is not None and warm is not None and uncached is not None
        assert "3 to 5 business days" in warm.text
        assert cold.text == warm.text == uncached.text
        assert len(embed.asked) == 1 and vectors.hits == vectors.misses > 0
    finally:
        await redis.aclose()


async def test_redis_unreachable_costs_only_the_cache(embedder: Any) -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    embed = Counting(embedder)
    vectors = SourceVectors(dead, "test-model", embed)
    texts = ["Standard shipping takes 3 to 5 business days."]
    try:
        got = await vectors(texts)
        np.testing.assert_array_equal(got, await Counting(embedder)(texts))
        assert embed.asked == [texts]
    finally:
        await dead.aclose()
