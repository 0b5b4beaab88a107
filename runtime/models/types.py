"""Wire types of the model-serving layer (pickled across Ray; pydantic v2 models).

The Generator streams ``TokenDelta`` items and then exactly one ``Final``. Units: token counts are
model tokens of the backend that served the request; times are milliseconds measured inside the
Generator replica (``ttft_ms`` from the moment the backend accepted the request, queueing included,
to its first text; ``total_ms`` to the end).
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    """One chat message: ``role`` is system, user or assistant; ``content`` is plain text."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class GenerationRequest(BaseModel):
    """One generation.

    messages: the whole prompt, oldest first (the caller builds and trims it).
    max_tokens / temperature: ``None`` means the Generator's configured defaults.
    grammar: optional GBNF grammar constraining the output (llama.cpp; vLLM; hosted only where the
      endpoint accepts a llama.cpp-style ``grammar`` field).
    stop: stop strings; the matched string is not emitted.
    repetition_penalty: > 1.0 discourages repeating tokens (answers that loop); None: off.
    request_id: unique id used for cancellation/abort and for ``Generator.request_info``.
    prefix_messages: how many leading messages form the fixed, cacheable prefix (e.g. a tenant's
      system prompt); the llama.cpp backend keeps the KV cache of that prefix for later requests.
    """

    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    grammar: str | None = None
    stop: list[str] = Field(default_factory=list)
    repetition_penalty: float | None = Field(
        default=None, ge=1.0, le=2.0,
        description="penalise repeated tokens (1.0: off; llama.cpp repeat_penalty, vLLM "
        "repetition_penalty, hosted: mapped to frequency_penalty)",
    )
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    prefix_messages: int = Field(default=1, ge=0)


class TokenDelta(BaseModel):
    """A piece of generated text; ``index`` counts deltas of this request from 0."""

    text: str
    index: int


class Usage(BaseModel):
    """Token counts and timings of one finished generation.

    cached_prompt_tokens: prompt tokens whose KV cache was reused rather than recomputed (> 0 on a
    prefix-cache hit). ttft_ms: time to first token; total_ms: time to the end (milliseconds).
    """

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    ttft_ms: float = 0.0
    total_ms: float = 0.0


class Final(BaseModel):
    """Last item of every successful stream: usage, the backend that served it ("llamacpp",
    "vllm" or "hosted") and why it stopped ("stop", "length")."""

    usage: Usage
    backend: str
    finish_reason: str


StreamItem = TokenDelta | Final

__all__ = [
    "ChatMessage",
    "Final",
    "GenerationRequest",
    "Role",
    "StreamItem",
    "TokenDelta",
    "Usage",
]
