"""A session actor's process: its model handles and intent classifier, made once per process,
and what a spare process can prepare of them before any actor is placed in it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.answering.intents import IntentClassifier
from runtime.config import get_settings
from runtime.constants import APP_NAME, EMBEDDER_DEPLOYMENT, GENERATOR_DEPLOYMENT
from runtime.conversation.ports import ServeModels
from runtime.events import redis_client

log = logging.getLogger(__name__)

_INTENTS: IntentClassifier | None = None
_MODELS: ServeModels | None = None


class _IntentVectors:
    """``embed_many`` for the intent examples, remembered: in this process, and in Redis for
    every other (``chat:intents:vec:<hash of the model and texts>``, a day), so a new session's
    process reads ~100 vectors instead of having the Embedder compute them again. ``embed``:
    the Embedder (None: a spare warming up, which makes no Ray calls: Redis or nothing)."""

    TTL_S = 24 * 3600

    def __init__(self, embed: Any) -> None:
        self.embed = embed
        self.memo: dict[str, np.ndarray] = {}

    async def __call__(self, texts: Sequence[str]) -> np.ndarray:
        settings = get_settings()
        digest = hashlib.sha256("\x00".join([settings.embedding_model, *texts]).encode()).hexdigest()
        key = f"chat:intents:vec:{digest[:32]}"
        if key in self.memo:
            return self.memo[key]
        client = redis_client(str(settings.redis_url)) if settings.redis_url else None
        try:
            raw = await client.get(key) if client is not None else None
            if raw is not None:
                vecs = np.frombuffer(base64.b64decode(raw), dtype=np.float32).reshape(len(texts), -1)
            elif self.embed is None:
                raise LookupError("intent example vectors not cached yet")
            else:
                vecs = np.asarray(await self.embed(texts), dtype=np.float32)
                if client is not None:
                    await client.set(key, base64.b64encode(vecs.tobytes()), ex=self.TTL_S)
        finally:
            if client is not None:
                await client.close()
        self.memo[key] = vecs
        return vecs


def process_models() -> tuple[ServeModels, IntentClassifier]:
    """This process's model handles and intent classifier (made once: a process hosts one
    session actor, or is a spare waiting for the next one)."""
    global _INTENTS, _MODELS
    if _MODELS is None:
        from ray import serve

        # Not asked of Serve's controller now (a round trip on every new session's start, and
        # an error where the ingress runs without models): a missing deployment shows in a call.
        _MODELS = ServeModels(
            serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=APP_NAME, _check_exists=False),
            serve.get_deployment_handle(GENERATOR_DEPLOYMENT, app_name=APP_NAME, _check_exists=False))
    if _INTENTS is None:  # its example embeddings are computed once per process
        _INTENTS = IntentClassifier(_IntentVectors(_MODELS.embed_many))
    return _MODELS, _INTENTS


def warm_process(timeout_s: float = 10.0) -> bool:
    """In a spare worker, off any customer's time (a thread of the setup hook): the intent
    examples' vectors from Redis, when some session computed them already. No Ray calls: an
    idle worker must not submit any. True when the classifier is ready; never raises."""
    global _INTENTS
    try:
        intents = IntentClassifier(_IntentVectors(None))  # its own: its lock binds to this loop
        asyncio.run(asyncio.wait_for(intents.prepare(), timeout_s))
        if _INTENTS is None or not _INTENTS.ready:
            _INTENTS = intents
        return True
    except Exception:  # noqa: BLE001 - the actor prepares it
        log.info("session worker's intents not prepared ahead", exc_info=True)
        return False


