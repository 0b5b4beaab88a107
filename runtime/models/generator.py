"""Backend fallback, circuit breakers and counters behind the ``Generator`` deployment.

:class:`GeneratorRouter` tries the backends in ``settings.generator_backends`` order. Before a
backend has produced its first item, an error, a first-token timeout
(``settings.first_token_timeout_s``, queueing included) or saturation (``backend_max_queued``
requests already waiting for it) moves the request to the next backend; a backend whose circuit
breaker is open (``breaker_failures`` consecutive failures, for ``breaker_cooldown_s`` seconds) is
skipped. Neither the timeout nor saturation applies to the last backend, which has nowhere to
fall back to: requests queue there. After the first item nothing moves: a failure then raises
``GenerationFailed`` and no second answer is started. Every move is logged and counted
(``stats()["fallbacks"]``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, cast

from runtime.config import Settings
from runtime.errors import BackendUnavailable, ConfigError, GenerationFailed, InvalidInput
from runtime.metrics import metrics
from runtime.models.backends import Backend
from runtime.models.types import Final, GenerationRequest, StreamItem

logger = logging.getLogger(__name__)

FALLBACK_REASONS = ("error", "timeout", "saturated", "breaker_open", "unsupported")


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures and stays open ``cooldown_s`` seconds.

    After the cooldown requests flow again (half-open); the next failure re-opens it at once and a
    success closes it. ``clock`` returns seconds (monotonic).
    """

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.consecutive = 0
        self.open_until = 0.0
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._clock() < self.open_until

    def allow(self) -> bool:
        return not self.is_open

    def record_success(self) -> None:
        self.consecutive = 0
        self.open_until = 0.0

    def record_failure(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.open_until = self._clock() + self.cooldown_s
            self.opened += 1


def build_backends(settings: Settings) -> tuple[list[Backend], dict[str, str]]:
    """Start the backends named in ``settings.generator_backends`` that can run here.

    Returns (backends in fallback order, {name: why it is unavailable}). A backend that cannot
    start (no GPU for vLLM, no URL for hosted, a missing GGUF) is left out with a warning.
    """
    backends: list[Backend] = []
    unavailable: dict[str, str] = {}
    for name in settings.generator_backends:
        if any(b.name == name for b in backends) or name in unavailable:
            continue
        try:
            backend: Backend
            if name == "llamacpp":
                from runtime.models.backends.llamacpp import LlamaCppBackend

                backend = LlamaCppBackend(settings)
            elif name == "vllm":
                from runtime.models.backends.vllm_backend import (
                    VLLMBackend,
                    vllm_unavailable_reason,
                )

                reason = vllm_unavailable_reason(settings)
                if reason:
                    raise ConfigError(reason)
                backend = VLLMBackend(settings)
            elif name == "hosted":
                from runtime.models.backends.hosted import HostedBackend

                backend = HostedBackend(settings)
            else:
                raise ConfigError(f"unknown generator backend {name!r}")
        except Exception as exc:
            msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            logger.warning("generator backend %s unavailable: %s", name, msg)
            unavailable[name] = msg
            continue
        backends.append(backend)
    return backends, unavailable


class GeneratorRouter:
    """Fallback over backends, with breakers and counters (used by the ``Generator`` deployment,
    and directly by tests and benchmarks).

    ``backends``: explicit backends in fallback order; default: :func:`build_backends`.
    Raises ConfigError when no backend can start.
    """

    def __init__(self, settings: Settings, backends: Sequence[Backend] | None = None) -> None:
        self._settings = settings
        if backends is None:
            built, self.unavailable = build_backends(settings)
        else:
            built, self.unavailable = list(backends), {}
        if not built:
            detail = "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()) or "none named"
            raise ConfigError(f"no generator backend can start ({detail}); "
                              "check CHAT_ENGINE_GENERATOR_BACKENDS")
        self.backends: list[Backend] = built
        self._breakers = {
            b.name: CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
            for b in built
        }
        self._fallbacks = 0
        self._reasons = dict.fromkeys(FALLBACK_REASONS, 0)
        self._served = {b.name: 0 for b in built}
        self._failures = {b.name: 0 for b in built}
        self._failed_after_first = {b.name: 0 for b in built}
        self._unavailable_requests = 0
        self._routes: dict[str, dict[str, Any]] = {}

    # --- facts ------------------------------------------------------------------------------
    def context_window(self) -> int:
        """Smallest context window (tokens) of the backends: a prompt must fit wherever it
        falls back to."""
        return min(b.context_window() for b in self.backends)

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the first backend (the one normally serving)."""
        return await self.backends[0].count_tokens(text)

    def stats(self) -> dict[str, Any]:
        """Counters: fallbacks (moves to a next backend), fallback_reasons, by_backend
        {name: served, failures, failed_after_first_token, queued, active}, breaker_open
        {name: bool}, unavailable {name: reason}, unavailable_requests (BackendUnavailable)."""
        return {
            "fallbacks": self._fallbacks,
            "fallback_reasons": dict(self._reasons),
            "by_backend": {
                b.name: {
                    "served": self._served[b.name],
                    "failures": self._failures[b.name],
                    "failed_after_first_token": self._failed_after_first[b.name],
                    "queued": b.queued(),
                    "active": b.active(),
                }
                for b in self.backends
            },
            "breaker_open": {name: br.is_open for name, br in self._breakers.items()},
            "unavailable": dict(self.unavailable),
            "unavailable_requests": self._unavailable_requests,
            "order": [b.name for b in self.backends],
        }

    def request_info(self, request_id: str) -> dict[str, Any] | None:
        """Route taken by a recent request plus what its serving backend recorded."""
        route = self._routes.get(request_id)
        if route is None:
            return None
        info = dict(route)
        backend = next((b for b in self.backends if b.name == route.get("backend")), None)
        if backend is not None:
            info.update(backend.request_info(request_id) or {})
        return info

    # --- generation -------------------------------------------------------------------------
    def _move_on(
        self, route: dict[str, Any], name: str, reason: str, detail: str, has_next: bool
    ) -> None:
        route["attempts"].append({"backend": name, "reason": reason, "detail": detail})
        if has_next:
            self._fallbacks += 1
            self._reasons[reason] += 1
            metrics().fallback(reason)
            logger.warning("generator fallback from %s (%s: %s) for request %s",
                           name, reason, detail, route["request_id"])
        else:
            logger.warning("generator backend %s failed (%s: %s) for request %s; none left",
                           name, reason, detail, route["request_id"])

    def _remember(self, request_id: str, route: dict[str, Any]) -> None:
        self._routes[request_id] = route
        while len(self._routes) > 512:
            self._routes.pop(next(iter(self._routes)))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Stream ``TokenDelta``... then one ``Final`` from the first backend that starts.

        Raises BackendUnavailable when no backend produced a first item, GenerationFailed when
        the serving backend fails after its first item, InvalidInput for a bad request.
        """
        s = self._settings
        route: dict[str, Any] = {"request_id": request.request_id, "attempts": []}
        self._remember(request.request_id, route)
        last = len(self.backends) - 1
        for i, backend in enumerate(self.backends):
            name, has_next = backend.name, i < last
            breaker = self._breakers[name]
            why = backend.supports(request)
            if why:
                self._move_on(route, name, "unsupported", why, has_next)
                continue
            if not breaker.allow():
                self._move_on(route, name, "breaker_open", "circuit breaker open", has_next)
                continue
            # Saturation spills to the next backend; the last one queues instead of refusing.
            if has_next and backend.saturated(s.backend_max_queued):
                self._move_on(route, name, "saturated",
                              f"{backend.queued()} requests already waiting", has_next)
                continue
            agen = cast(AsyncGenerator[StreamItem, None], backend.stream(request))
            try:
                try:
                    # the last backend has nowhere to fall back to: no first-token limit there
                    # (its own request timeouts still apply)
                    async with asyncio.timeout(s.first_token_timeout_s if has_next else None):
                        first = await anext(agen)
                except InvalidInput:
                    raise
                except TimeoutError:
                    self._failures[name] += 1
                    breaker.record_failure()
                    self._move_on(route, name, "timeout",
                                  f"no first token in {s.first_token_timeout_s}s", has_next)
                    continue
                except Exception as exc:
                    self._failures[name] += 1
                    breaker.record_failure()
                    detail = "stream ended without output" if isinstance(
                        exc, StopAsyncIteration) else f"{type(exc).__name__}: {exc}"
                    self._move_on(route, name, "error", detail, has_next)
                    continue
                route["backend"] = name
                try:
                    yield first
                    if not isinstance(first, Final):
                        async for item in agen:
                            yield item
                except Exception as exc:
                    self._failures[name] += 1
                    self._failed_after_first[name] += 1
                    breaker.record_failure()
                    route["error"] = f"{type(exc).__name__}: {exc}"
                    logger.error("generator backend %s failed after its first token "
                                 "(request %s): %s", name, request.request_id, exc)
                    raise GenerationFailed(
                        f"the {name} backend failed after streaming part of the answer: {exc}",
                        backend=name,
                    ) from exc
                breaker.record_success()
                self._served[name] += 1
                return
            finally:
                await agen.aclose()
        self._unavailable_requests += 1
        detail = "; ".join(f"{a['backend']}: {a['reason']} ({a['detail']})"
                           for a in route["attempts"])
        raise BackendUnavailable(f"no generator backend could serve the request: {detail}")

    async def aclose(self) -> None:
        """Close every backend."""
        for b in self.backends:
            await b.aclose()
