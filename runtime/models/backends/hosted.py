"""Hosted backend: any OpenAI-compatible chat-completions endpoint, through ``openai.AsyncOpenAI``.

Streams ``chat.completions`` with ``stream=True``; cancelling the iterator closes the HTTP response,
which makes the server stop generating (llama_cpp.server and vLLM's server abort a request whose
client went away). Grammars are sent as a llama.cpp-style ``grammar`` field only when
``settings.hosted_grammar`` says the endpoint accepts it; otherwise a request with a grammar is not
served here (``supports`` says why) so that unconstrained text is never returned for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from openai import AsyncOpenAI, Timeout

from runtime.config import Settings
from runtime.errors import ConfigError
from runtime.models.backends import Backend
from runtime.models.types import Final, GenerationRequest, StreamItem, TokenDelta, Usage

logger = logging.getLogger(__name__)


class HostedBackend(Backend):
    """OpenAI-compatible endpoint (settings: hosted_base_url, hosted_api_key, hosted_model,
    hosted_max_concurrency, hosted_timeout_s, hosted_context_window, hosted_grammar).

    Raises ConfigError when no base URL is configured. Token counts come from the endpoint's
    ``usage`` when it sends one, else the number of streamed pieces; ``count_tokens`` is an
    estimate (4 characters a token) since the endpoint's tokenizer is not known here.
    """

    name = "hosted"

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__()
        url = base_url or (str(settings.hosted_base_url) if settings.hosted_base_url else None)
        if not url:
            raise ConfigError("hosted backend needs CHAT_ENGINE_HOSTED_BASE_URL")
        key = api_key or (
            settings.hosted_api_key.get_secret_value() if settings.hosted_api_key else "unused"
        )
        self._settings = settings
        self.base_url = url
        self.model = model or settings.hosted_model
        self._client = AsyncOpenAI(
            base_url=url,
            api_key=key,
            max_retries=0,
            timeout=Timeout(settings.hosted_timeout_s, connect=5.0),
        )
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0
        self._active = 0

    def context_window(self) -> int:
        return self._settings.hosted_context_window

    async def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / 4)

    def queued(self) -> int:
        return self._waiting

    def active(self) -> int:
        return self._active

    def capacity(self) -> int:
        return self._settings.hosted_max_concurrency

    def supports(self, request: GenerationRequest) -> str | None:
        if request.grammar and not self._settings.hosted_grammar:
            return "the hosted endpoint is not configured to accept a grammar"
        return None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        t0 = time.perf_counter()
        s = self._settings
        if self._sem is None:
            self._sem = asyncio.Semaphore(s.hosted_max_concurrency)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in request.messages],
            "stream": True,
            "max_tokens": request.max_tokens or s.llm_max_tokens,
            "temperature": s.llm_temperature if request.temperature is None
            else request.temperature,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            kwargs["stop"] = request.stop[:4]
        extra: dict[str, Any] = {}
        if request.repetition_penalty:
            # OpenAI's API knows frequency_penalty (-2..2); llama.cpp's server also repeat_penalty.
            kwargs["frequency_penalty"] = round(min(2.0, (request.repetition_penalty - 1.0) * 2), 2)
            extra["repeat_penalty"] = request.repetition_penalty
        if request.grammar:
            extra["grammar"] = request.grammar
        if extra:
            kwargs["extra_body"] = extra
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        deltas = 0
        finish = "stop"
        usage: Any = None
        t_first: float | None = None
        completed = False
        try:
            stream = await self._client.chat.completions.create(**kwargs)
            try:
                async for chunk in stream:
                    if getattr(chunk, "usage", None):
                        usage = chunk.usage
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            if t_first is None:
                                t_first = time.perf_counter()
                            deltas += 1  # before the yield: a close there still counts it
                            yield TokenDelta(text=text, index=deltas - 1)
                        if choice.finish_reason:
                            finish = choice.finish_reason
                completed = True
            finally:
                await stream.close()
        finally:
            self._active -= 1
            self._sem.release()
            self._record(request.request_id, completion_tokens=deltas,
                         cancelled=not completed, finish_reason=finish if completed else None)
        t_end = time.perf_counter()
        cached = 0
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        if details is not None and getattr(details, "cached_tokens", None):
            cached = int(details.cached_tokens)
        total_ms = (t_end - t0) * 1000.0
        yield Final(
            usage=Usage(
                prompt_tokens=int(usage.prompt_tokens) if usage else 0,
                completion_tokens=int(usage.completion_tokens) if usage else deltas,
                cached_prompt_tokens=cached,
                ttft_ms=(t_first - t0) * 1000.0 if t_first is not None else total_ms,
                total_ms=total_ms,
            ),
            backend=self.name,
            finish_reason=finish,
        )

    async def aclose(self) -> None:
        await self._client.close()
