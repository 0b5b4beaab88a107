"""The grounding check: every sentence of a generative answer must be supported by its sources.

A sentence is supported when

1. its best cosine similarity to a source unit (a sentence or list item of the sources, or a
   window of two adjacent ones) reaches :data:`SUPPORT_THRESHOLD`;
2. every number in it (prices, percentages, counts, dates' digits) appears among the sources'
   numbers, and every named item (a capitalised word inside the sentence, e.g. a plan or product
   name) appears in the sources' text;
3. it does not flip the polarity of the unit that supports it (a sentence without a negation
   supported by a unit that has one: "Weekly reports come with PDF attachments" against "There
   are no attachments, no PDFs ...", and the reverse).

Embedding similarity alone cannot see a changed number or a dropped "no"; the two lexical checks
can. Thresholds were calibrated on the fixture help site and billing PDF (tests/test_answering.py
holds the pairs).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.answering.sentences import segment, split_sentences
from runtime.text import normalize

EmbedMany = Callable[[Sequence[str]], Awaitable[np.ndarray]]

SUPPORT_THRESHOLD = 0.62
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_NAME = re.compile(r"(?<=[a-z,;:]\s)([A-Z][A-Za-z0-9+&-]{2,})")
_NEGATION = re.compile(r"\b(?:no|not|never|none|nothing|without|cannot|can't|won't|don't|doesn't|"
                       r"isn't|aren't|didn't|neither|nor|n't)\b", re.IGNORECASE)
# Capitalised words that name nothing in particular.
_COMMON = frozenset({"You", "Your", "Yes", "The", "This", "That", "These", "Those", "We", "Our",
                     "If", "Please", "Also", "And", "But", "Or", "It", "Its", "They", "There",
                     "Here", "When", "Then", "For", "To", "In", "On", "At", "By", "Of", "Note",
                     "Settings", "Account", "Dashboard", "I", "Monday", "Tuesday", "Wednesday",
                     "Thursday", "Friday", "Saturday", "Sunday"})


def numbers(text: str) -> set[float]:
    """The numeric values written in ``text`` ("1,200" and "1200.00" are the same)."""
    out: set[float] = set()
    for m in _NUMBER.finditer(text):
        try:
            out.add(float(m.group(0).replace(",", "")))
        except ValueError:
            continue
    return out


def named_items(sentence: str) -> set[str]:
    """Capitalised words inside ``sentence`` (not its first word, not common ones)."""
    return {m.group(1) for m in _NAME.finditer(sentence) if m.group(1) not in _COMMON}


def negated(text: str) -> bool:
    """Whether ``text`` contains a negation."""
    return bool(_NEGATION.search(text))


@dataclass(frozen=True)
class SentenceVerdict:
    """supported: the sentence may be delivered; similarity: best cosine to a source unit;
    missing_items: numbers/names not found in the sources; polarity_flip: it contradicts the
    negation of its best unit; best_chunk: the chunk of that unit."""

    sentence: str
    supported: bool
    similarity: float
    missing_items: list[str] = field(default_factory=list)
    polarity_flip: bool = False
    best_chunk: Any = None


@dataclass(frozen=True)
class GroundingResult:
    """text: the supported sentences, joined; supported/removed: sentence counts."""

    text: str
    supported: int
    removed: int
    verdicts: list[SentenceVerdict]


class GroundingChecker:
    """Checks sentences against one answer's sources; build with :meth:`build`."""

    def __init__(self, unit_texts: list[str], unit_chunks: list[Any], unit_vecs: np.ndarray,
                 windows: list[bool], source_text: str, embed_many: EmbedMany, threshold: float) -> None:
        self._texts = unit_texts
        self._single = np.array([not w for w in windows], dtype=bool)
        self._chunks = unit_chunks
        self._vecs = unit_vecs
        self._numbers = numbers(source_text)
        self._text = normalize(source_text)
        self._embed_many = embed_many
        self.threshold = threshold

    @classmethod
    async def build(cls, sources: Sequence[Any], embed_many: EmbedMany, *,
                    threshold: float = SUPPORT_THRESHOLD,
                    embed_sources: EmbedMany | None = None) -> GroundingChecker:
        """Split and embed the sources (chunks with ``.text``) once: units and two-unit windows.
        embed_many embeds the answer's sentences later; embed_sources (default: embed_many) the
        sources' units now (a cache of knowledge-base vectors, where the caller has one)."""
        texts: list[str] = []
        owners: list[Any] = []
        windows: list[bool] = []
        for chunk in sources:
            us = [u.text for u in segment(chunk.text)]
            for i, u in enumerate(us):
                texts.append(u)
                owners.append(chunk)
                windows.append(False)
                if i + 1 < len(us):
                    texts.append(f"{u} {us[i + 1]}")
                    owners.append(chunk)
                    windows.append(True)
        vecs = (np.asarray(await (embed_sources or embed_many)(texts), dtype=np.float32) if texts
                else np.zeros((0, 1), dtype=np.float32))
        source_text = "\n".join(c.text + "\n" + (c.title or "") for c in sources)
        return cls(texts, owners, vecs, windows, source_text, embed_many, threshold)

    def _verdict(self, sentence: str, vec: np.ndarray) -> SentenceVerdict:
        if not self._texts:
            return SentenceVerdict(sentence, False, 0.0)
        sims = self._vecs @ vec
        best = int(np.argmax(sims))
        sim = float(sims[best])
        missing = [str(int(n) if n.is_integer() else n) for n in numbers(sentence) - self._numbers]
        missing += [w for w in named_items(sentence) if normalize(w) not in self._text]
        # Polarity against the closest single unit (a window may join an unrelated "no").
        single = int(np.argmax(np.where(self._single, sims, -np.inf)))
        flip = negated(sentence) != negated(self._texts[single])
        ok = sim >= self.threshold and not missing and not flip
        return SentenceVerdict(sentence, ok, round(sim, 4), missing, flip, self._chunks[best])

    async def check_sentence(self, sentence: str) -> SentenceVerdict:
        """One sentence (one embedding call)."""
        vec = np.asarray(await self._embed_many([sentence]), dtype=np.float32)[0]
        return self._verdict(sentence, vec)

    async def check(self, answer: str) -> GroundingResult:
        """Every sentence of ``answer`` (one embedding call); unsupported ones are removed."""
        sentences = split_sentences(answer)
        if not sentences:
            return GroundingResult("", 0, 0, [])
        vecs = np.asarray(await self._embed_many(sentences), dtype=np.float32)
        verdicts = [self._verdict(s, v) for s, v in zip(sentences, vecs, strict=True)]
        kept = [v.sentence for v in verdicts if v.supported]
        return GroundingResult(" ".join(kept), len(kept), len(verdicts) - len(kept), verdicts)
