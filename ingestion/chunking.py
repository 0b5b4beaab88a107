"""Split documents into sections and sections into chunks of at most N embedding-model tokens.

A section is the text under one heading (its heading path, e.g. ``Billing FAQ > Refunds``, and
its paragraphs); a PDF section never spans pages. A chunk holds whole sentences or list items of
ONE section, prefixed by the section's heading, and at most ``max_tokens`` word pieces of the
embedding model's tokenizer (special tokens excluded; all-MiniLM-L6-v2 truncates at 256, so the
default 200 leaves room for the page title and [CLS]/[SEP] in the embedded text). When a section
needs several chunks, each chunk after the first repeats the previous chunk's last sentences, up
to ``overlap_tokens``. A single sentence longer than the budget is cut at token boundaries.
Chunk text keeps the blocks: a blank line between paragraphs, one line per item of a list.

The tokenizer is the ``tokenizer.json`` shipped with the embedding model, loaded with the light
``tokenizers`` library (no torch), so chunking runs in any process.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from runtime.config import Settings, get_settings
from runtime.db.kb_documents import ChunkRow

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”’)\]]*\s+(?=[\"“(\[]?[A-Z0-9])")
_FENCE = re.compile(r"^\s*(```|~~~)")


@functools.lru_cache(maxsize=4)
def _tokenizer_from(path: str) -> Tokenizer:
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


def load_tokenizer(settings: Settings | None = None) -> Tokenizer:
    """The embedding model's word-piece tokenizer (no truncation, no padding).

    Raises ConfigError when the model directory cannot be found.
    """
    from runtime.models.embedder import resolve_embedding_model

    settings = settings or get_settings()
    path = Path(resolve_embedding_model(settings.embedding_model)) / "tokenizer.json"
    return _tokenizer_from(str(path))


@dataclass
class Section:
    """Text under one heading: ``headings`` is the path from the top; ``paragraphs`` are blocks
    (a paragraph, a list item, a code block); ``page`` is the 1-based PDF page or None."""

    headings: list[str]
    paragraphs: list[str] = field(default_factory=list)
    page: int | None = None

    @property
    def name(self) -> str:
        """The heading path joined with `` > `` ('' for text before the first heading)."""
        return " > ".join(self.headings)


# ---------------------------------------------------------------- sectioning
def markdown_sections(markdown: str, title: str = "") -> list[Section]:
    """Sections of Markdown text (``#`` headings). A top-level heading equal to ``title`` is not
    repeated in the heading path. Sections without text are dropped (their heading stays in
    the path of the sections below it)."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    current = Section(headings=[])
    para: list[str] = []
    in_fence = False

    def flush_para() -> None:
        text = "\n".join(para).strip()
        para.clear()
        if text:
            current.paragraphs.append(text)

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if _FENCE.match(line):
            para.append(line)
            if in_fence:
                flush_para()
            in_fence = not in_fence
            continue
        if in_fence:
            para.append(line)
            continue
        m = _HEADING.match(line)
        if m:
            flush_para()
            if current.paragraphs:
                sections.append(current)
            level, text = len(m.group(1)), m.group(2).strip()
            path = [(lv, h) for lv, h in path if lv < level]
            if not (level == 1 and not path and text == title):
                path.append((level, text))
            current = Section(headings=[h for _, h in path])
        elif not line.strip():
            flush_para()
        elif _LIST_ITEM.match(line):
            flush_para()
            para.append(line.strip())
        else:
            para.append(line.strip())
    flush_para()
    if current.paragraphs:
        sections.append(current)
    return sections


def _looks_like_heading(line: str, prev: str | None) -> bool:
    if not line or len(line) > 100 or not line[0].isupper():
        return False
    if prev is not None and prev.endswith("?"):
        return False  # the answer to a question line
    if ". " in line or line.endswith((".", ",", ";", ":", "-", "!")):
        return False
    # A wrapped paragraph line continues a long line that did not end a sentence.
    return prev is None or prev.endswith((".", "!", "?", ":")) or len(prev) < 60


def pdf_sections(pages: Sequence[str]) -> list[Section]:
    """Sections of PDF page texts (index 0 is page 1). Headings are guessed: a short line that
    starts with a capital and does not end a sentence, after a line that did. A heading stays in
    force across pages; wrapped lines are re-joined into paragraphs."""
    sections: list[Section] = []
    heading: list[str] = []
    for number, page_text in enumerate(pages, start=1):
        current = Section(headings=list(heading), page=number)
        para: list[str] = []
        prev: str | None = None
        for raw in page_text.splitlines():
            line = " ".join(raw.split())
            if not line:
                if para:
                    current.paragraphs.append(" ".join(para))
                    para = []
                prev = None
                continue
            if _looks_like_heading(line, prev):
                if para:
                    current.paragraphs.append(" ".join(para))
                    para = []
                if current.paragraphs:
                    sections.append(current)
                heading = [line]
                current = Section(headings=[line], page=number)
            elif _LIST_ITEM.match(line) or (prev is not None and prev.endswith("?")):
                if para:
                    current.paragraphs.append(" ".join(para))
                para = [line]
            else:
                para.append(line)
            prev = line
        if para:
            current.paragraphs.append(" ".join(para))
        if current.paragraphs:
            sections.append(current)
    return sections


def text_sections(text: str) -> list[Section]:
    """Plain text: one section, paragraphs separated by blank lines."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if p]
    return [Section(headings=[], paragraphs=paras)] if paras else []


# ---------------------------------------------------------------- chunking
@dataclass
class _Unit:
    text: str
    tokens: int
    new_paragraph: bool


class Chunker:
    """Packs sections into :class:`~runtime.db.kb_documents.ChunkRow` lists (see module docstring).

    max_tokens: word pieces per chunk including its heading line (> 16).
    overlap_tokens: at most this many tokens of trailing sentences repeated (< max_tokens).
    """

    def __init__(
        self, tokenizer: Tokenizer | None = None, max_tokens: int | None = None,
        overlap_tokens: int | None = None,
    ) -> None:
        settings = get_settings()
        self.tokenizer = tokenizer or load_tokenizer(settings)
        self.max_tokens = max_tokens or settings.chunk_max_tokens
        self.overlap_tokens = (
            settings.chunk_overlap_tokens if overlap_tokens is None else overlap_tokens
        )
        if self.max_tokens <= 16 or not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError("need max_tokens > 16 and 0 <= overlap_tokens < max_tokens")

    def count(self, text: str) -> int:
        """Word pieces of ``text`` (no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Word pieces of each text (no special tokens)."""
        if not texts:
            return []
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to at most ``max_tokens`` word pieces (at a token boundary)."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= max_tokens:
            return text
        return text[: enc.offsets[max_tokens - 1][1]].rstrip()

    def _split_long(self, text: str, budget: int) -> list[str]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        pieces = []
        for start in range(0, len(enc.ids), budget):
            end = min(start + budget, len(enc.ids))
            a, b = enc.offsets[start][0], enc.offsets[end - 1][1]
            pieces.append(text[a:b].strip())
        return [p for p in pieces if p]

    def _units(self, section: Section, budget: int) -> list[_Unit]:
        raw: list[tuple[str, bool]] = []
        for para in section.paragraphs:
            if para.lstrip().startswith(("```", "~~~")) or _LIST_ITEM.match(para):
                raw.append((para, True))
                continue
            for i, sentence in enumerate(_SENTENCE_END.split(para)):
                if sentence.strip():
                    raw.append((sentence.strip(), i == 0))
        counts = self.counts([t for t, _ in raw])
        units: list[_Unit] = []
        for (text, new_para), n in zip(raw, counts, strict=True):
            if n <= budget:
                units.append(_Unit(text, n, new_para))
                continue
            for j, piece in enumerate(self._split_long(text, budget)):
                units.append(_Unit(piece, self.count(piece), new_para and j == 0))
        return units

    def chunk_sections(self, sections: Sequence[Section], title: str = "") -> list[ChunkRow]:
        """Chunks of ``sections`` in order (``ord`` from 0), each carrying ``title``, its
        section name and page. Every chunk's ``token_count`` (heading included) is at most
        ``max_tokens``."""
        out: list[ChunkRow] = []
        for section in sections:
            name = section.name
            heading = self.truncate(name, self.max_tokens // 3) if name else ""
            heading_tokens = self.count(heading) if heading else 0
            budget = self.max_tokens - heading_tokens
            units = self._units(section, budget)
            current: list[_Unit] = []
            used = 0

            def emit(units_: list[_Unit], heading: str = heading, page: int | None = section.page,
                     name: str = name) -> None:
                # A blank line between paragraphs, as in Markdown: without it a paragraph after
                # a list reads as the last item's continuation ("- Sunday: 10 to 14" / "On
                # public holidays we are closed." became one item). Items of one list stay on
                # consecutive lines. Word pieces ignore whitespace: the embedding is the same.
                body = ""
                prev: _Unit | None = None
                for u in units_:
                    if prev is None:
                        body = u.text
                    elif not u.new_paragraph:
                        body += " " + u.text
                    elif _LIST_ITEM.match(u.text) and _LIST_ITEM.match(prev.text):
                        body += "\n" + u.text
                    else:
                        body += "\n\n" + u.text
                    prev = u
                text = f"{heading}\n{body}" if heading else body
                out.append(ChunkRow(
                    ord=len(out), text=text, title=title, section=name, page=page,
                    token_count=self.count(text),
                ))

            for unit in units:
                if current and used + unit.tokens > budget:
                    emit(current)
                    carry: list[_Unit] = []
                    carried = 0
                    for prev in reversed(current):
                        if carried + prev.tokens > self.overlap_tokens:
                            break
                        carry.insert(0, prev)
                        carried += prev.tokens
                    if carried + unit.tokens > budget:
                        carry, carried = [], 0
                    current, used = carry, carried
                current.append(unit)
                used += unit.tokens
            if current:
                emit(current)
        # Joining units can merge word pieces differently at the seams; re-split any chunk that
        # ended over budget (rare) by cutting it at a token boundary.
        return [self._fit(c) for c in out]

    def _fit(self, chunk: ChunkRow) -> ChunkRow:
        if chunk.token_count <= self.max_tokens:
            return chunk
        text = self.truncate(chunk.text, self.max_tokens)
        return ChunkRow(ord=chunk.ord, text=text, title=chunk.title, section=chunk.section,
                        page=chunk.page, token_count=self.count(text))
