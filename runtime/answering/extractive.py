"""Extractive answers: the source's own sentences, quoted with where they come from.

:func:`extract_answer` splits the top retrieved chunks into sentences (:mod:`.sentences`),
drops what cannot answer anything on its own (headings, questions, table rows, navigation such as
"See Download your invoices.", fragments under four words or starting mid-sentence), embeds the
rest in ONE ``embed_many`` call and scores each sentence::

    score = cos(question, sentence) + CHUNK_WEIGHT * chunk.similarity
            + LEXICAL_WEIGHT * share of the question's content words the sentence holds

MiniLM alone ranks a topical sentence over the one that answers ("You can pay by card, PayPal..."
over "We're not able to accept wire transfers"), so the question's own words count too. A
sentence right after an FAQ question of the source ("How do I update my payment method?")
scores at least as that question matches the customer's, and the answer continues with the
sentences up to the next question.

The best sentence is then widened, inside its own chunk only, by adjacent sentences that score
within :data:`NEIGHBOUR_MARGIN` of it, continue the list it is part of or the FAQ answer it
starts, up to ``max_sentences``: one coherent passage rather than a patchwork of chunks. Nothing
is paraphrased, so nothing can be invented. When the best sentence's own cosine (or its FAQ
question's) is under :data:`MIN_SENTENCE_SIMILARITY`, the answer is None (the caller's
could-not-answer path).

Calibration: benchmarks/answers.py over the fixture help site and billing PDF (MiniLM, chunks
from hybrid retrieval, top 8); figures in README.md.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.answering.sentences import Sentence, segment
from runtime.text import normalize

EmbedMany = Callable[[Sequence[str]], Awaitable[np.ndarray]]

CHUNKS_CONSIDERED = 6
CHUNK_WEIGHT = 0.25
LEXICAL_WEIGHT = 0.25
# An FAQ question in the source this close to the customer's makes its answer the candidate.
FAQ_MIN_SIMILARITY = 0.5
TOPIC_MIN_SIMILARITY = 0.6
MIN_SENTENCE_SIMILARITY = 0.35
NEIGHBOUR_MARGIN = 0.15
# A sentence of another chunk this close to the best one is quoted too, as a second passage.
SECOND_SOURCE_MARGIN = 0.10
NEAR_DUPLICATE = 0.85
MAX_QUOTE_CHARS = 480
MIN_WORDS = 4
BARE_REPLY_WORDS = 2  # "Yes." or "No, sorry." before an FAQ answer's first real sentence
HEADING_MAX_WORDS = 9
_TERMINAL = (".", "!", ")", '"', "”", "'")
_KEY_VALUE = re.compile(r"^[^:]{2,40}:\s+\S")

# A sentence that only points elsewhere answers nothing by itself.
_NAVIGATION = re.compile(
    r"^(?:see|read|learn|find out|check out|more on|more about|here'?s how|click here|"
    r"have a (?:\w+ )?question|contact us\b|questions\?|not sure|"
    r"(?:the rest of )?this (?:article|guide|page|section|document|tutorial) "
    r"(?:is|will|covers|explains|shows))\b",
    re.IGNORECASE,
)


_WORD = re.compile(r"[a-z0-9][a-z0-9%$.,'-]*[a-z0-9%]|[a-z0-9]")
_STOPWORDS = frozenset("""
a an the and or but if then so to of in on at by for from with without into onto over under
about as is are was were be been being am do does did done doing have has had having can could
will would shall should may might must i me my mine we us our you your yours he she it its they
them their this that these those there here what which who whom whose when where why how
not no yes any all some each every much many more most other such own same than too very just
also only get got getting please tell know want need like let lets one ever still
""".split())


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` that carry meaning (no stop words), cut to a 5-letter stem so
    "transfers" matches "transfer" and "deleted" matches "delete"."""
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def lexical_overlap(question_words: set[str], sentence: str) -> float:
    """Share in [0, 1] of ``question_words`` (:func:`content_words`) that ``sentence`` holds."""
    if not question_words:
        return 0.0
    return len(question_words & content_words(sentence)) / len(question_words)


class ChunkLike(Protocol):
    """What extraction reads of a retrieved chunk (``runtime.retrieval.RetrievedChunk``)."""

    @property
    def text(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def section(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def similarity(self) -> float: ...


@dataclass(frozen=True)
class Quote:
    """One quoted sentence, the chunk it comes from and its score (cosine to the question plus
    ``CHUNK_WEIGHT`` x the chunk's retrieval similarity)."""

    sentence: str
    chunk: ChunkLike
    score: float


@dataclass(frozen=True)
class ExtractiveAnswer:
    """``text``: what the customer reads (plain text: the quoted passage, a second one from another
    chunk when it scores close, a blank line, then ``Source: <title> (<url> | <file>, page N)``,
    or ``Sources: A; B``); ``quotes``: the sentences, best passage first; ``sources``: the chunks
    quoted (for the message's ``sources[]``); ``score``: the best
    sentence's score; ``similarity``: its cosine to the question."""

    text: str
    quotes: list[Quote]
    sources: list[ChunkLike]
    score: float
    similarity: float


def citation(chunk: ChunkLike) -> str:
    """Where a chunk comes from, for a customer: ``Title (https://...)`` for a web page,
    ``Title (billing-guide.pdf, page 4)`` for a PDF page, the title alone for a Q&A entry or
    pasted text (``qa:``/``text:`` sources have no address a customer can open)."""
    title = " ".join((chunk.title or "").split())
    source = chunk.source or ""
    if source.startswith(("qa:", "text:")):
        return title
    where = source if source.startswith(("http://", "https://")) else source.rsplit("/", 1)[-1]
    if chunk.page:
        where = f"{where}, page {chunk.page}"
    return f"{title} ({where})" if title and title != where else where


def chunk_sentences(chunk: ChunkLike) -> list[Sentence]:
    """The chunk's sentences without its heading line (chunking puts the section path first).

    A PDF heading that is really the first line of a wrapped sentence ("If the spike is
    temporary, you can upgrade ... when traffic" / "drops. Downgrades ...") is joined back."""
    text = chunk.text
    first, _, body = text.partition("\n")
    section = " ".join((chunk.section or "").split())
    if section and " ".join(first.split()) == section:
        heading = section.rsplit(" > ", 1)[-1]
        lead = body.lstrip()
        if lead[:1].islower() and not heading.endswith((".", "?", "!", ":")):
            body = f"{heading} {lead}"
        text = body
    return segment(text)


def _answers_something(s: Sentence) -> bool:
    text = s.text
    if s.kind in ("heading", "table_row") or text.endswith(("?", ":")):
        return False
    words = len(text.split())
    # A list item of two words says something when it pairs a key with a value ("Monday: closed").
    least = (2 if _KEY_VALUE.match(text) else 3) if s.kind == "list_item" else MIN_WORDS
    if words < least:
        return False
    if s.kind == "sentence" and words <= HEADING_MAX_WORDS and not text.endswith(_TERMINAL):
        # A short line without an ending stop is a heading PDF text kept as prose
        # ("Discount for nonprofits and educational institutions").
        return False
    return not (text[:1].islower() or _NAVIGATION.match(text))


def _faq_answer_index(sentences: list[Sentence], qi: int, scored: set[int]) -> int | None:
    """Index of the sentence that answers the FAQ question at ``qi`` (-1: the chunk's heading):
    the next one, or the one after a bare reply ("Yes.", "No, sorry.") that says nothing to score
    on its own; None when neither is a scored sentence."""
    if qi + 1 in scored:
        return qi + 1
    bare = sentences[qi + 1].text if 0 <= qi + 1 < len(sentences) else ""
    if bare and qi + 2 in scored and len(bare.split()) <= BARE_REPLY_WORDS and not bare.endswith("?"):
        return qi + 2
    return None


def _is_faq_question(s: Sentence) -> bool:
    return s.kind in ("sentence", "heading") and s.text.endswith("?") and len(s.text.split()) >= 3


def _format_passages(passages: list[tuple[list[Sentence], ChunkLike]]) -> str:
    body = "\n\n".join(_lines(quoted) for quoted, _ in passages)
    wheres = list(dict.fromkeys(w for w in (citation(c) for _, c in passages) if w))
    if not wheres:
        return body
    label = "Source" if len(wheres) == 1 else "Sources"
    return f"{body}\n\n{label}: {'; '.join(wheres)}"


def _lines(quoted: list[Sentence]) -> str:
    lines: list[str] = []
    prev: Sentence | None = None
    for s in quoted:
        if s.kind == "list_item":
            if prev is not None and prev.kind == "list_item" and prev.block == s.block:
                lines[-1] = f"{lines[-1]} {s.text}"
            else:
                lines.append(f"- {s.text}")
        elif lines and prev is not None and prev.kind != "list_item":
            lines[-1] = f"{lines[-1]} {s.text}"
        else:
            lines.append(s.text)
        prev = s
    return "\n".join(lines)


async def extract_answer(
    question: str, question_vec: np.ndarray, chunks: Sequence[ChunkLike], embed_many: EmbedMany,
    *, max_sentences: int = 3,
) -> ExtractiveAnswer | None:
    """The 1-``max_sentences`` sentences of the top chunks that best answer ``question``.

    question_vec: float32 (dim,), L2-normalised (the question's embedding, already computed for
    retrieval); chunks: retrieved chunks, best first (only the first :data:`CHUNKS_CONSIDERED`
    are read); embed_many: texts -> float32 (n, dim) L2-normalised rows, called once (not at all
    when no chunk has a usable sentence). Returns None when no sentence's cosine to the question
    reaches :data:`MIN_SENTENCE_SIMILARITY`. Raises what ``embed_many`` raises.
    """
    if max_sentences < 1:
        raise ValueError("max_sentences must be >= 1")
    per_chunk: list[list[Sentence]] = []
    candidates: list[tuple[int, int]] = []  # (chunk no, sentence index)
    # FAQ questions: (chunk no, sentence index); index -1 is the chunk's heading when the
    # heading is the question (PDF chunking makes "How do I update my payment method?" one).
    faq: list[tuple[int, int]] = []
    faq_text: dict[tuple[int, int], str] = {}
    # Topic headings ("Opening hours", "Contact"): chunk no -> heading. A question that matches
    # one closely is answered by what the section says first (the whole list, for a list).
    topics: dict[int, str] = {}
    seen: set[str] = set()
    for ci, chunk in enumerate(chunks[:CHUNKS_CONSIDERED]):
        sentences = chunk_sentences(chunk)
        per_chunk.append(sentences)
        heading = (chunk.section or "").rsplit(" > ", 1)[-1].strip()
        if heading.endswith("?") and len(heading.split()) >= 3 and sentences:
            faq.append((ci, -1))
            faq_text[(ci, -1)] = heading
        elif heading and len(heading.split()) <= HEADING_MAX_WORDS and sentences:
            topics[ci] = heading
        for s in sentences:
            key = normalize(s.text)
            # Overlapping chunks repeat sentences: score each once, in its best-ranked chunk.
            if key in seen:
                continue
            seen.add(key)
            if _answers_something(s):
                candidates.append((ci, s.index))
            elif _is_faq_question(s) and s.index + 1 < len(sentences):
                faq.append((ci, s.index))
                faq_text[(ci, s.index)] = s.text
    if not candidates:
        return None
    topic_keys = list(topics)
    texts = ([per_chunk[ci][si].text for ci, si in candidates] + [faq_text[k] for k in faq]
             + [topics[ci] for ci in topic_keys])
    vecs = np.asarray(await embed_many(texts), dtype=np.float32)
    cosines = vecs @ np.asarray(question_vec, dtype=np.float32).reshape(-1)
    n_keyed = len(candidates) + len(faq)
    cos = {key: float(c) for key, c in zip(candidates + faq, cosines[:n_keyed], strict=True)}
    topic_cos = {ci: float(c) for ci, c in zip(topic_keys, cosines[n_keyed:], strict=True)}
    words = content_words(question)

    def rank(c: float, ci: int, text: str) -> float:
        return c + CHUNK_WEIGHT * float(chunks[ci].similarity) + LEXICAL_WEIGHT * lexical_overlap(words, text)

    score = {(ci, si): rank(cos[(ci, si)], ci, per_chunk[ci][si].text) for ci, si in candidates}

    def lift(answer: tuple[int, int], c: float, text: str) -> bool:
        """Rank ``answer`` as the question or heading it answers (cosine ``c``, ``text``) ranks,
        when that is higher; True when it was."""
        as_anchor = rank(c, answer[0], text)
        if as_anchor <= score[answer]:
            return False
        score[answer] = as_anchor
        cos[answer] = max(cos[answer], c)
        return True

    # The sentence after a matching FAQ question answers it: it ranks as the question matches.
    answers_faq: dict[tuple[int, int], tuple[int, int]] = {}
    scored_in: dict[int, set[int]] = {}
    for c, j in score:
        scored_in.setdefault(c, set()).add(j)
    for ci, qi in faq:
        ai = _faq_answer_index(per_chunk[ci], qi, scored_in.get(ci, set()))
        if cos[(ci, qi)] < FAQ_MIN_SIMILARITY or ai is None:
            continue
        if lift((ci, ai), cos[(ci, qi)], faq_text[(ci, qi)]):
            answers_faq[(ci, ai)] = (ci, qi)
    # A section whose heading matches the question: its first sentence ranks as the heading
    # matches, and the answer runs on from it (FAQ-like), through the whole list it starts.
    topic_answers: set[tuple[int, int]] = set()
    for ci, heading in topics.items():
        first = min(scored_in.get(ci, ()), default=None)
        if topic_cos[ci] < TOPIC_MIN_SIMILARITY or first is None:
            continue
        if lift((ci, first), topic_cos[ci], heading):
            topic_answers.add((ci, first))
    best = max(score, key=lambda k: score[k])
    if cos[best] < MIN_SENTENCE_SIMILARITY:
        return None
    ci, bi = best
    sentences = per_chunk[ci]
    picked = [bi]
    size = len(sentences[bi].text)
    topic_answer = best in topic_answers
    faq_answer = best in answers_faq or topic_answer

    def same_list(j: int, toward: int) -> bool:  # adjacent items (each item is its own block)
        return sentences[j].kind == sentences[toward].kind == "list_item"

    def joins(j: int, toward: int) -> bool:
        if not 0 <= j < len(sentences) or (ci, j) not in score:
            return False
        if size + len(sentences[j].text) > MAX_QUOTE_CHARS:
            return False
        if faq_answer:
            # An FAQ answer runs forward to the next question, never back into the question.
            return j > toward
        near = sentences[toward]
        same_list = sentences[j].kind == near.kind == "list_item"
        return same_list or score[(ci, j)] >= score[best] - NEIGHBOUR_MARGIN

    while True:
        after, before = picked[-1] + 1, picked[0] - 1
        options = [(score.get((ci, j), -1.0), j, t) for j, t in ((after, picked[-1]), (before, picked[0]))
                   if joins(j, t)]
        if len(picked) >= max_sentences:  # only a topic's list goes on, to its end
            options = [o for o in options if topic_answer and same_list(o[1], o[2])]
        if not options:
            break
        _, j, _ = max(options)
        picked = sorted([*picked, j])
        size += len(sentences[j].text)
    quoted = [sentences[i] for i in picked]
    quotes = [Quote(s.text, chunks[ci], score[(ci, s.index)]) for s in quoted]
    passages = [(quoted, chunks[ci])]
    # A close runner-up from another chunk often holds the half of the answer the best one lacks
    # ("A single month over your limit requires no action." beside the two-month rule).
    if len(picked) < max_sentences:
        texts_in = {normalize(q.sentence) for q in quotes}
        row = {k: i for i, k in enumerate(candidates)}
        taken = vecs[[row[(ci, i)] for i in picked if (ci, i) in row]]
        others = [k for k in score if k[0] != ci and normalize(per_chunk[k[0]][k[1]].text) not in texts_in
                  # not a near-copy of what is quoted (overlapping chunks, repeated pages)
                  and (not len(taken) or float((taken @ vecs[row[k]]).max()) < NEAR_DUPLICATE)]
        if others:
            second = max(others, key=lambda k: score[k])
            if score[second] >= score[best] - SECOND_SOURCE_MARGIN and cos[second] >= MIN_SENTENCE_SIMILARITY:
                s2 = per_chunk[second[0]][second[1]]
                quotes.append(Quote(s2.text, chunks[second[0]], score[second]))
                passages.append(([s2], chunks[second[0]]))
    return ExtractiveAnswer(
        text=_format_passages(passages), quotes=quotes, sources=[c for _, c in passages],
        score=score[best], similarity=cos[best],
    )
