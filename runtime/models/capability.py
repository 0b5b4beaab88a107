"""Which answer strategy a tenant gets (DESIGN.md, Answering: ``auto``).

The packaged CPU model (SmolLM2-135M on llama.cpp) invents facts, so ``auto`` answers
extractively on it; a generator the operator marks capable (vLLM on a GPU, a hosted API, or any
backend with CHAT_ENGINE_GENERATOR_CAPABLE=true) writes generative, grounding-checked answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from runtime.config import Settings

CAPABLE_BACKENDS = frozenset({"vllm", "hosted"})
Strategy = Literal["generative", "extractive"]


def is_capable(settings: Settings, backends: Sequence[str]) -> bool:
    """The operator's mark (``generator_capable``), else whether the primary backend (the first
    that started) is one of :data:`CAPABLE_BACKENDS`."""
    if settings.generator_capable is not None:
        return settings.generator_capable
    return bool(backends) and backends[0] in CAPABLE_BACKENDS


def resolve_strategy(configured: str, capable: bool) -> Strategy:
    """The strategy a turn uses: ``configured`` (auto | generative | extractive) with ``auto``
    resolved by ``capable``."""
    if configured == "generative":
        return "generative"
    if configured == "extractive":
        return "extractive"
    return "generative" if capable else "extractive"


def describe(configured: str, capable: bool, primary: str | None) -> str:
    """One line for `chat-engine up`, e.g. ``answer strategy: auto -> extractive (llamacpp is not
    marked capable; CHAT_ENGINE_GENERATOR_CAPABLE=true to generate)``."""
    chosen = resolve_strategy(configured, capable)
    why = (f"{primary or 'no generator'} is marked capable" if capable else
           f"{primary or 'no generator'} is not marked capable; CHAT_ENGINE_GENERATOR_CAPABLE=true "
           "to generate")
    return f"answer strategy: {configured} -> {chosen} ({why})"
