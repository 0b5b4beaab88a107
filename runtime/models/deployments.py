"""Ray Serve deployments ``Embedder`` and ``Generator`` and :func:`build_model_apps`.

Callers reach them only through Serve handles::

    vec = await embedder.embed.remote("text")                      # float32 (384,)
    gen = generator.options(stream=True).generate.remote(request)  # DeploymentResponseGenerator
    async for item in gen: ...                                     # TokenDelta..., Final
    gen.cancel()                                                   # stops within one token

Both constructors take a :class:`~runtime.config.Settings` (default ``get_settings()``) plus
optional field overrides; they read no environment variables themselves.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
from ray import serve
from ray.serve import Application

from runtime.config import Settings, get_settings
from runtime.models.types import GenerationRequest, StreamItem


def _resolve(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    base = settings if settings is not None else get_settings()
    if overrides:
        return Settings(**{**base.model_dump(), **overrides})
    return base


@serve.deployment(name="Embedder", max_ongoing_requests=128)
class Embedder:
    """Sentence embeddings; concurrent ``embed`` calls are batched with ``@serve.batch``
    (``settings.embedding_batch_max`` texts, waiting at most ``embedding_batch_wait_s``).

    Raises ConfigError / EmbeddingDimensionMismatch at construction (the replica fails to start).
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        import torch

        from runtime.models.embedder import SentenceEmbedder

        s = _resolve(settings, overrides)
        threads = s.embedding_threads or max(1, math.ceil(s.embedding_num_cpus))
        torch.set_num_threads(threads)
        self._settings = s
        self._core = SentenceEmbedder(s)
        # one thread: encodes run one at a time, off the replica's event loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        batcher: Any = self._embed_batch
        batcher.set_max_batch_size(s.embedding_batch_max)
        batcher.set_batch_wait_timeout_s(s.embedding_batch_wait_s)
        self._batches = 0
        self._batched_texts = 0
        self._max_batch = 0

    async def _encode(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._core.encode, texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        self._batches += 1
        self._batched_texts += len(texts)
        self._max_batch = max(self._max_batch, len(texts))
        return list(await self._encode(texts))

    async def embed(self, text: str) -> np.ndarray:
        """Embedding of one text: float32 (dim,), L2-normalised (batched with other callers)."""
        return await self._embed_batch(text)

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 (len(texts), dim), rows L2-normalised."""
        return await self._encode(list(texts))

    def dimension(self) -> int:
        """Vector dimension (384 for the default model)."""
        return self._core.dim

    def max_seq_length(self) -> int:
        """Word pieces after which input is truncated (256 for the default model)."""
        return self._core.max_seq_length()

    def tokenizer_count(self, texts: list[str]) -> list[int]:
        """Word pieces of each text (special tokens included), before truncation."""
        return self._core.token_counts(texts)

    async def stats(self) -> dict[str, Any]:
        """Batching counters: batches, batched_texts, max_batch; device; model_dir."""
        return {
            "batches": self._batches,
            "batched_texts": self._batched_texts,
            "max_batch": self._max_batch,
            "device": self._core.device,
            "model_dir": str(self._core.model_dir),
        }


@serve.deployment(name="Generator", max_ongoing_requests=64)
class Generator:
    """Text generation with fallback over backends (see ``runtime.models.generator``).

    Backends: those named by ``settings.generator_backends`` that can start in this replica
    (``stats()["unavailable"]`` says why others did not). Raises ConfigError when none can.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        from runtime.models.generator import GeneratorRouter

        self._settings = _resolve(settings, overrides)
        self._router = GeneratorRouter(self._settings)

    async def generate(
        self, request: GenerationRequest | dict[str, Any]
    ) -> AsyncIterator[StreamItem]:
        """Stream ``TokenDelta``... then exactly one ``Final``; call with
        ``handle.options(stream=True)``. Cancelling the call stops generation within one token.
        Raises BackendUnavailable, GenerationFailed (after text was streamed), InvalidInput."""
        req = GenerationRequest.model_validate(request)
        async for item in self._router.generate(req):
            yield item

    async def info(self) -> dict[str, Any]:
        """``{"backends": [names in fallback order], "primary": name, "capable": bool,
        "unavailable": {name: why}}``; capable: see :func:`runtime.models.capability.is_capable`."""
        from runtime.models.capability import is_capable

        names = [b.name for b in self._router.backends]
        return {"backends": names, "primary": names[0] if names else None,
                "capable": is_capable(self._settings, names), "unavailable": self._router.unavailable}

    async def context_window(self) -> int:
        """Tokens a prompt plus its completion may use (smallest over the backends)."""
        return self._router.context_window()

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the primary backend."""
        return await self._router.count_tokens(text)

    async def stats(self) -> dict[str, Any]:
        """Counters: {"fallbacks", "fallback_reasons", "by_backend", "breaker_open", ...}."""
        return self._router.stats()

    async def request_info(self, request_id: str) -> dict[str, Any] | None:
        """Route and backend record of a recent request (tokens, cancelled,
        tokens_after_cancel, cached_prompt_tokens), or None if unknown."""
        return self._router.request_info(request_id)


def build_model_apps(settings: Settings) -> tuple[Application, Application]:
    """Bound (Embedder, Generator) applications sized from ``settings``.

    Embedder: num_cpus/num_gpus from embedding_num_cpus/embedding_num_gpus, max_ongoing_requests
    four batches. Generator: generator_num_cpus/generator_num_gpus; max_ongoing_requests covers
    the llama.cpp slots, ``backend_max_queued`` waiting requests and the hosted concurrency, so
    saturation is decided by the Generator (and spills to the next backend), not by Serve's queue.
    """
    embedder = cast(Any, Embedder).options(
        ray_actor_options={
            "num_cpus": settings.embedding_num_cpus,
            "num_gpus": settings.embedding_num_gpus,
        },
        max_ongoing_requests=max(32, 4 * settings.embedding_batch_max),
    ).bind(settings)
    generator = cast(Any, Generator).options(
        ray_actor_options={
            "num_cpus": settings.generator_num_cpus,
            "num_gpus": settings.generator_num_gpus,
        },
        max_ongoing_requests=settings.llm_max_concurrency
        + settings.backend_max_queued
        + settings.hosted_max_concurrency
        + 1,
    ).bind(settings)
    return embedder, generator
