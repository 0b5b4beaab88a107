"""Embeddings of knowledge-base text, shared through Redis by every session process.

Each answer embeds sentences of its sources: the extractive answer scores the retrieved chunks'
sentences against the question, and the grounding check of a generated answer embeds its
sources' sentences and sentence pairs. The same chunks come back turn after turn and session
after session (a help centre's popular pages), so their vectors are kept in Redis under a hash of
the embedding model and the text, ``chat:srcvec:<sha256[:32]>`` (float32 bytes, base64), for
:data:`TTL_S`. A turn then reads them back in one ``MGET`` instead of queueing ~50-150 texts at
the Embedder, which on a CPU node is most of an extractive answer's time to first token.

Only knowledge-base text goes through it (never a customer's message or a generated sentence:
those rarely repeat). Vectors are stored exactly, so a cached answer scores as an uncached one.
Redis being unreachable costs nothing but the cache: the texts are embedded as before.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runtime.answering.intents import EmbedMany

log = logging.getLogger(__name__)

TTL_S = 3600
"""How long a source text's vector stays in Redis (~2 KB each at 384 dimensions): an hour keeps
the pages customers ask about now, and bounds Redis memory by what is asked, not by the size of
every knowledge base."""
KEY_PREFIX = "chat:srcvec:"


def source_vector_key(model: str, text: str) -> str:
    """Redis key of ``text``'s vector under embedding model ``model``."""
    return KEY_PREFIX + hashlib.sha256(f"{model}\x00{text}".encode()).hexdigest()[:32]


class SourceVectors:
    """An :data:`EmbedMany` for knowledge-base text: vectors from Redis where another turn (any
    session, any process) computed them, the rest from ``embed_many`` in one call, then stored.

    redis: a ``decode_responses`` client; model: the embedding model's name (part of the key).
    Calling returns float32 (len(texts), dim) rows in the order of ``texts``, L2-normalised as
    ``embed_many`` gives them. Raises what ``embed_many`` raises; never a Redis error.
    """

    def __init__(self, redis: aioredis.Redis, model: str, embed_many: EmbedMany) -> None:
        self.redis = redis
        self.model = model
        self.embed_many = embed_many
        self.hits = 0
        self.misses = 0

    async def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.asarray(await self.embed_many(texts), dtype=np.float32)
        keys = [source_vector_key(self.model, t) for t in texts]
        try:
            cached = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            log.debug("source vectors not read from Redis (%s)", type(exc).__name__)
            return np.asarray(await self.embed_many(texts), dtype=np.float32)
        rows: list[np.ndarray | None] = []
        for raw in cached:
            try:
                rows.append(None if raw is None else np.frombuffer(base64.b64decode(raw), dtype=np.float32))
            except ValueError:
                rows.append(None)  # not ours, or cut short: computed again
        if len({r.shape[0] for r in rows if r is not None}) > 1:
            rows = [None] * len(rows)  # vectors of two shapes under one model name: trust none
        missing = [i for i, r in enumerate(rows) if r is None]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(await self.embed_many([texts[i] for i in missing]), dtype=np.float32)
            stale = [i for i, r in enumerate(rows) if r is not None and r.shape[0] != fresh.shape[1]]
            if stale:  # the model behind the name changed: the cached rows are no good either
                fresh = np.concatenate([fresh, np.asarray(
                    await self.embed_many([texts[i] for i in stale]), dtype=np.float32)])
                missing += stale
                self.hits -= len(stale)
                self.misses += len(stale)
            for i, vec in zip(missing, fresh, strict=True):
                rows[i] = vec
            await self._store([keys[i] for i in missing], fresh)
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    async def _store(self, keys: list[str], vecs: np.ndarray) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, vec in zip(keys, vecs, strict=True):
                    pipe.set(key, base64.b64encode(np.ascontiguousarray(vec, dtype=np.float32).tobytes()),
                             ex=TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("source vectors not stored in Redis (%s)", type(exc).__name__)
