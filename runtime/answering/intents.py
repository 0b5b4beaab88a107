"""Intent signals beyond keywords: refund, billing dispute, legal threat, wants a human, off-topic.

Each intent has example phrases (``intents.toml``) matched by nearest-neighbour similarity in the
Embedder's space (MiniLM, the model already loaded: no new one), a per-intent threshold, and a few
precise rules. The question's embedding is computed for retrieval anyway, so classifying costs a
dot product; the examples are embedded once per process (:meth:`IntentClassifier.prepare`).

Escalating intents carry a priority (billing dispute and refund ``high``, legal threat
``critical``, a human request ``normal``); ``off_topic`` gets a polite refusal that says what the
bot can help with. A question *about* a policy ("what is your refund policy?") is a question for
the knowledge base, not a refund request: the examples are requests, and the thresholds were
checked against ordinary support questions (tests/test_intents.py).
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runtime.text import normalize

EmbedMany = Callable[[Sequence[str]], Awaitable[np.ndarray]]
INTENTS_FILE = Path(__file__).with_name("intents.toml")
# The best intent must beat the runner-up's best example by this much to count (embedding path).
MARGIN = 0.03


@dataclass(frozen=True)
class IntentSpec:
    """One intent from the data file."""

    name: str
    threshold: float
    priority: str | None
    rules: tuple[re.Pattern[str], ...]
    examples: tuple[str, ...]
    not_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class IntentMatch:
    """intent: its name; score: cosine to the nearest example (1.0 for a rule); example: the
    matched example or rule; via: "rule" | "embedding"; priority: for escalating intents."""

    intent: str
    score: float
    example: str
    via: str
    priority: str | None


@lru_cache(maxsize=4)
def load_intents(path: Path = INTENTS_FILE) -> tuple[IntentSpec, ...]:
    """The intents of ``path`` (TOML), rules compiled. Raises ValueError on a bad file."""
    data: dict[str, Any] = tomllib.loads(path.read_text())
    specs = []
    for name, body in data.items():
        examples = tuple(body.get("examples", []))
        if not examples:
            raise ValueError(f"{path}: intent {name!r} has no examples")
        specs.append(IntentSpec(
            name=name, threshold=float(body["threshold"]), priority=body.get("priority"),
            rules=tuple(re.compile(r, re.IGNORECASE) for r in body.get("rules", [])),
            examples=examples, not_examples=tuple(body.get("not_examples", [])),
        ))
    return tuple(specs)


class IntentClassifier:
    """Classifies a customer message. ``embed_many`` embeds the examples (once, in
    :meth:`prepare`); :meth:`classify` needs the message's own embedding."""

    def __init__(self, embed_many: EmbedMany, intents: Sequence[IntentSpec] | None = None) -> None:
        self._embed_many = embed_many
        self.intents = tuple(intents or load_intents())
        self._vecs: np.ndarray | None = None
        self._owner: np.ndarray | None = None
        self._neg_vecs: np.ndarray | None = None
        self._neg_owner: np.ndarray | None = None
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Whether the examples are embedded."""
        return self._vecs is not None

    async def prepare(self) -> None:
        """Embed every example (one call; idempotent)."""
        if self._vecs is not None:
            return
        async with self._lock:
            if self._vecs is None:
                texts = [e for spec in self.intents for e in spec.examples]
                owner = [i for i, spec in enumerate(self.intents) for _ in spec.examples]
                negs = [e for spec in self.intents for e in spec.not_examples]
                neg_owner = [i for i, spec in enumerate(self.intents) for _ in spec.not_examples]
                vecs = np.asarray(await self._embed_many(texts + negs), dtype=np.float32)
                self._neg_vecs = vecs[len(texts):]
                self._neg_owner = np.asarray(neg_owner, dtype=np.int64)
                self._owner = np.asarray(owner)
                self._vecs = vecs[:len(texts)]

    def classify(self, text: str, text_vec: np.ndarray | None = None) -> IntentMatch | None:
        """The intent of ``text`` or None. Rules first; then, when :meth:`prepare` has run and
        ``text_vec`` (float32 (dim,), L2-normalised) is given, the nearest examples."""
        norm = normalize(text)
        for spec in self.intents:
            for rule in spec.rules:
                m = rule.search(norm)
                if m:
                    return IntentMatch(spec.name, 1.0, m.group(0), "rule", spec.priority)
        if self._vecs is None or self._owner is None or text_vec is None:
            return None
        sims = self._vecs @ np.asarray(text_vec, dtype=np.float32)
        best_per = np.full(len(self.intents), -1.0, dtype=np.float32)
        arg_per = np.zeros(len(self.intents), dtype=np.int64)
        for i in range(len(self.intents)):
            idx = np.nonzero(self._owner == i)[0]
            j = idx[int(np.argmax(sims[idx]))]
            best_per[i], arg_per[i] = sims[j], j
        order = np.argsort(-best_per)
        top = int(order[0])
        runner_up = float(best_per[order[1]]) if len(order) > 1 else -1.0
        spec = self.intents[top]
        score = float(best_per[top])
        if score >= spec.threshold and score - runner_up >= MARGIN:
            if self._near_counterexample(top, text_vec, score):
                return None
            examples = [e for s in self.intents for e in s.examples]
            return IntentMatch(spec.name, score, examples[int(arg_per[top])], "embedding", spec.priority)
        return None

    def _near_counterexample(self, intent: int, text_vec: np.ndarray, score: float) -> bool:
        """Whether one of the intent's ``not_examples`` (questions *about* the topic, e.g. "Do
        you have a refund policy?") is at least as close as its nearest example."""
        if self._neg_vecs is None or self._neg_owner is None or not len(self._neg_owner):
            return False
        idx = np.nonzero(self._neg_owner == intent)[0]
        if not len(idx):
            return False
        return float((self._neg_vecs[idx] @ np.asarray(text_vec, dtype=np.float32)).max()) >= score


def refusal_text(business_name: str, topics: Sequence[str] = ()) -> str:
    """The polite off-topic refusal, saying what the bot can help with."""
    about = ", ".join(topics[:4]) if topics else "its products and services, your account and billing"
    return (f"Sorry, I can't help with that: I'm here for questions about {business_name}, such as "
            f"{about}. What would you like to know?")
