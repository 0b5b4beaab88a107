"""An in-process embedder with the Embedder deployment's method names, for the CLI, benchmarks
and tools that run without Serve. Loads sentence-transformers (torch): heavy, so only processes
that choose it import it; everything else uses the ``Embedder`` Serve handle."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from runtime.config import Settings, get_settings


class LocalEmbedder:
    """``await embed(text)`` -> float32 (dim,); ``await embed_many(texts)`` -> (n, dim); rows
    L2-normalised. Encodes one call at a time on a private thread. Raises ConfigError /
    EmbeddingDimensionMismatch at construction (see runtime.models.embedder)."""

    def __init__(self, settings: Settings | None = None, threads: int | None = None) -> None:
        import torch

        from runtime.models.embedder import SentenceEmbedder

        if threads:
            torch.set_num_threads(threads)
        self._core: Any = SentenceEmbedder(settings or get_settings())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-embedder")

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._core.dim)

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 (len(texts), dim)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._core.encode, list(texts))

    async def embed(self, text: str) -> np.ndarray:
        """Embedding of one text: float32 (dim,)."""
        return (await self.embed_many([text]))[0]

    def close(self) -> None:
        """Stop the encoding thread."""
        self._executor.shutdown(wait=False)
