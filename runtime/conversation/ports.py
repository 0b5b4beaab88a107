"""What a conversation needs of the models, and the adapter over the Serve deployments.

The turn pipeline talks to :class:`ModelPorts`; the session actor passes :class:`ServeModels`
(the Embedder and Generator deployment handles: actors reach models only through Serve), and
tests without Ray pass local objects with the same methods.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import numpy as np

from runtime.models.types import GenerationRequest, StreamItem

log = logging.getLogger(__name__)


class GenerationStream(Protocol):
    """The Generator's stream: ``TokenDelta`` items then one ``Final``; ``cancel()`` stops the
    backend (at most one more token)."""

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...

    def cancel(self) -> None: ...


class ModelPorts(Protocol):
    """Embeddings (float32, L2-normalised: ``embed`` -> (dim,), ``embed_many`` -> (n, dim)) and
    generation."""

    async def embed(self, text: str) -> np.ndarray: ...

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray: ...

    def generate(self, request: GenerationRequest) -> GenerationStream: ...

    async def context_window(self) -> int: ...

    async def generator_capable(self) -> bool: ...


class ServeModels:
    """:class:`ModelPorts` over the ``Embedder`` and ``Generator`` deployment handles."""

    def __init__(self, embedder: Any, generator: Any) -> None:
        self.embedder = embedder
        self.generator = generator
        self._context_window: int | None = None
        self._capable: bool | None = None

    async def embed(self, text: str) -> np.ndarray:
        """One text's embedding: float32 (dim,)."""
        return np.asarray(await self.embedder.embed.remote(text), dtype=np.float32).reshape(-1)

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 (len(texts), dim)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray(await self.embedder.embed_many.remote(list(texts)), dtype=np.float32)

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """A streaming call to ``Generator.generate``; ``cancel()`` cancels it through Serve."""
        stream: GenerationStream = self.generator.options(stream=True).generate.remote(request)
        return stream

    async def context_window(self) -> int:
        """The Generator's context window in tokens (asked once)."""
        if self._context_window is None:
            self._context_window = int(await self.generator.context_window.remote())
        return self._context_window

    async def generator_capable(self) -> bool:
        """Whether the operator's generator is capable of grounded generative answers (asked once;
        False if the deployment cannot say)."""
        if self._capable is None:
            try:
                info = await self.generator.info.remote()
                self._capable = bool(info.get("capable", False))
            except Exception:  # noqa: BLE001 - an older Generator without info(): be careful
                log.warning("Generator.info() unavailable; answering extractively")
                self._capable = False
        return self._capable
