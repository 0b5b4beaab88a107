"""Does the knowledge base cover a question? Decided from the retrieved chunks' scores.

MiniLM cosine similarities are compressed: a passage that answers a short question often scores
0.35-0.5, unrelated text 0.1-0.3. A single cosine threshold therefore either escalates answerable
questions (a billing PDF's "payment methods" section against "Can I pay by bank wire transfer?")
or answers unrelated ones. The full-text leg is the second witness: a chunk that holds every
word of the question (``text_all``) is accepted a margin below the cosine threshold; a chunk that
shares only some words ("transfer" for a kayak rental) is no witness.

Calibration (benchmarks/answers.py, fixture help site + billing PDF, top 8 by hybrid retrieval):
answerable questions' best cosine 0.38-0.84 (0.38: "How long is the free trial?", rescued by a
chunk with all its words at 0.32); unanswerable ones 0.26-0.38, never with an all-words chunk.
Hence ``EscalationRules.min_similarity`` defaults to 0.40, with a margin of 0.10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# A chunk holding all the question's words may score this much below min_similarity and count.
TEXT_LEG_MARGIN = 0.10
# Covered, but within this much of min_similarity: a weak answer (counts toward repeated failure).
WEAK_MARGIN = 0.08


class ScoredChunk(Protocol):
    """What coverage reads of a retrieved chunk (runtime.retrieval.RetrievedChunk has it)."""

    similarity: float
    text_all: bool


@dataclass(frozen=True)
class Coverage:
    """covered: answer from the chunks; weak: covered but close to the threshold; reason: a
    sentence for the escalation when not covered; detail: scores for the inbox (JSON-safe)."""

    covered: bool
    weak: bool
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def assess_coverage(chunks: Sequence[ScoredChunk], *, min_similarity: float) -> Coverage:
    """Coverage of a question by its retrieved ``chunks`` (best first).

    min_similarity: cosine in [0, 1] (tenant's EscalationRules.min_similarity). Covered when
    the best cosine reaches it, or when a chunk holding all the question's words (``text_all``)
    reaches ``min_similarity - TEXT_LEG_MARGIN``."""
    if not chunks:
        return Coverage(False, False, "nothing in the knowledge base matches the question",
                        {"best_similarity": None, "min_similarity": min_similarity})
    best = max(c.similarity for c in chunks)
    text_hits = [c.similarity for c in chunks if c.text_all]
    best_text = max(text_hits) if text_hits else None
    detail: dict[str, Any] = {
        "best_similarity": round(best, 4),
        "best_all_words_similarity": None if best_text is None else round(best_text, 4),
        "min_similarity": min_similarity,
    }
    if best >= min_similarity:
        return Coverage(True, best < min_similarity + WEAK_MARGIN, "", detail | {"via": "vector"})
    if best_text is not None and best_text >= min_similarity - TEXT_LEG_MARGIN:
        return Coverage(True, True, "", detail | {"via": "text"})
    return Coverage(False, False, "the knowledge base has no good answer to this question", detail)
