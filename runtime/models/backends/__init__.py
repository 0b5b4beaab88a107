"""Generation backends behind the ``Generator`` deployment.

Every backend implements :class:`Backend`: ``stream(request)`` is an async iterator of
``TokenDelta`` items and then exactly one ``Final``; closing or cancelling the iterator stops the
generation within one token and frees the backend's slot. The heavy libraries (llama_cpp, vllm,
openai) are imported only by the module of the backend that uses them, so importing this package is
cheap.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from runtime.models.types import GenerationRequest, StreamItem

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("llamacpp", "vllm", "hosted")


class Backend(abc.ABC):
    """One way of generating text (llama.cpp, vLLM, a hosted OpenAI-compatible endpoint).

    Errors raised by ``stream`` before its first item make the Generator try the next backend;
    ``runtime.errors.InvalidInput`` (e.g. a prompt longer than the context window, a bad grammar)
    is the caller's fault and is raised to the caller without any fallback.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # --- capacity -------------------------------------------------------------------------
    def queued(self) -> int:
        """Requests waiting for a slot of this backend right now (saturation check)."""
        return 0

    def active(self) -> int:
        """Requests being generated right now."""
        return 0

    def capacity(self) -> int:
        """Requests this backend generates at once; more wait (``queued``)."""
        return 1 << 30

    def saturated(self, max_queued: int) -> bool:
        """True when a new request would have to wait behind ``max_queued`` or more others."""
        return self.active() >= self.capacity() and self.queued() >= max_queued

    def supports(self, request: GenerationRequest) -> str | None:
        """``None`` when this backend can serve ``request``, else the reason it cannot."""
        return None

    # --- model facts ----------------------------------------------------------------------
    @abc.abstractmethod
    def context_window(self) -> int:
        """Context length in tokens (prompt plus completion)."""

    @abc.abstractmethod
    async def count_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (no special tokens added)."""

    # --- generation -----------------------------------------------------------------------
    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Generate: yields ``TokenDelta``... then one ``Final``. Cancellable at any await."""

    async def aclose(self) -> None:
        """Release the backend's resources (models, connections, threads)."""
        return None

    # --- per-request records (read by tests and metrics) ------------------------------------
    def _record(self, request_id: str, **info: Any) -> None:
        with self._recent_lock:
            entry = self._recent.setdefault(request_id, {"backend": self.name})
            entry.update(info)
            self._recent.move_to_end(request_id)
            while len(self._recent) > 512:
                self._recent.popitem(last=False)

    def request_info(self, request_id: str) -> dict[str, Any] | None:
        """What this backend recorded about a recent request (tokens, cancellation), or None."""
        with self._recent_lock:
            entry = self._recent.get(request_id)
            return dict(entry) if entry is not None else None


class StopMatcher:
    """Finds stop strings in streamed text, holding back text that may start a stop string.

    ``feed(piece)`` returns ``(text_safe_to_emit, stopped)``; after ``stopped`` is True nothing more
    may be emitted. ``flush()`` returns the held-back text at the end of the stream.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._buf = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        if not self._stops:
            return piece, False
        self._buf += piece
        hits = [i for i in (self._buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            out = self._buf[: min(hits)]
            self._buf = ""
            return out, True
        hold = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self._buf) - hold
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


__all__ = ["BACKEND_NAMES", "Backend", "StopMatcher"]
