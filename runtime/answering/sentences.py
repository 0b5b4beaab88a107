"""Sentences of knowledge-base chunks and of answers.

Structure first, then sentencex (Wikimedia's rule-based segmenter, MIT, ~1 µs per sentence):

1. Residue that is not prose goes: MDX/HTML tags left in PDF text (``<div class="browser" <img
   alt="…" src={useBaseUrl('…')} / </div``), backslash escapes, Markdown emphasis, link syntax
   (``[text](url)`` keeps the text) and heading markers.
2. Lines are blocks: a ``#`` heading, a list item (``- ``, ``* ``, ``1. ``, with the lines right
   under it), a table row or a paragraph;
   consecutive plain lines are one paragraph (PDF soft wraps re-joined). A paragraph that carries
   an inline list, as PDF extraction leaves them (``- Review your card - Check your bank app``),
   is cut into its items.
3. sentencex splits each block. Its abbreviation and number rules keep "e.g.", "$9.00", "v2.1",
   URLs and "Mr." inside their sentence; a bare enumerator it splits off ("1. ") is glued back.

:func:`segment` returns :class:`Sentence` records with their kind and block, so callers can drop
headings or keep neighbours together; :func:`split_sentences` returns the plain texts.
:class:`SentenceBuffer` cuts a token stream into sentences as they complete.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import sentencex

SentenceKind = Literal["sentence", "heading", "list_item", "table_row"]

# MDX/HTML residue as PDF text keeps it: tags may lack their closing ">" and carry {js} values.
_JSX_VALUE = re.compile(r"\{[^{}\n]*\}")
_TAG = re.compile(
    r"</?[A-Za-z][\w.-]*(?:\s+[\w:.-]+\s*=\s*(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s<>\"']+))*\s*/?\s*>?"
)
_LINK = re.compile(r"!?\[([^\]\n]*)\]\((?:[^()\s]|\([^()\s]*\))*\)")
_EMPHASIS = re.compile(r"(?<!\w)(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1(?!\w)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+")
# An inline list separator (" - " or " 2. " before a capitalised item), as pypdf leaves lists.
_INLINE_ITEM = re.compile(r"\s+(?:[-•]|\d{1,2}[.)])\s+(?=[A-Z\"“(])")
_ENUMERATOR = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*+•])\s*$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_ESCAPE = re.compile(r"\\([\\`*_\[\]()#|<>{}])")
_SPACES = re.compile(r"[ \t\u00a0]+")
_MIN_ITEM_WORDS = 3  # inline-list pieces shorter than this belong to the next piece ("Starter - …")


@dataclass(frozen=True)
class Sentence:
    """One sentence (or heading / list item) of a text.

    text: cleaned, whitespace collapsed, without list markers or ``#``. index: position among
    the text's sentences (0-based). block: index of the paragraph, list item or heading it came
    from; sentences of one block are adjacent prose. kind: ``heading``, ``list_item`` (a list
    item's sentences) or ``sentence``.
    """

    text: str
    index: int
    block: int
    kind: SentenceKind


def clean_text(text: str) -> str:
    """``text`` without MDX/HTML residue, Markdown link syntax and emphasis; line breaks kept,
    runs of spaces collapsed."""
    text = _ESCAPE.sub(r"\1", text)
    text = _JSX_VALUE.sub("", text)
    text = _TAG.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = text.replace("`", "")
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())


def _blocks(text: str) -> Iterator[tuple[SentenceKind, str]]:
    para: list[str] = []
    item: list[str] = []  # a list item and its continuation lines

    def flush() -> Iterator[tuple[SentenceKind, str]]:
        if item:
            for piece in _inline_items(" ".join(item)):
                yield "list_item", piece
            item.clear()
        if para:
            yield "sentence", " ".join(para)
            para.clear()

    for line in clean_text(text).splitlines():
        if not line:
            yield from flush()
            continue
        heading = _HEADING.match(line)
        if _TABLE_ROW.match(line):
            yield from flush()
            if not _TABLE_RULE.match(line):
                # Cells joined as a phrase: kept so that indexes stay true, but a table row is
                # no sentence (callers drop kind "table_row").
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                yield "table_row", "; ".join(c for c in cells if c)
        elif heading:
            yield from flush()
            if heading.group(1):
                yield "heading", heading.group(1)
        elif _LIST_ITEM.match(line):
            yield from flush()
            item.append(_LIST_ITEM.sub("", line, count=1))
        elif item:
            # A line right under a list item continues it (Markdown's lazy continuation, a
            # wrapped PDF line): "chain cleaned and lubricated," / "bolts checked."
            item.append(line)
        else:
            para.append(line)
    yield from flush()


def _inline_items(line: str) -> list[str]:
    pieces = _INLINE_ITEM.split(line)
    items: list[str] = []
    pending = ""
    for piece in pieces:
        piece = f"{pending} - {piece}" if pending else piece
        if len(piece.split()) < _MIN_ITEM_WORDS:
            pending = piece
            continue
        items.append(piece)
        pending = ""
    if pending:
        if items:
            items[-1] = f"{items[-1]} - {pending}"
        else:
            items.append(pending)
    return items


def _split_block(block: str) -> list[str]:
    out: list[str] = []
    carry = ""
    for piece in sentencex.segment("en", block):
        piece = piece.strip()
        if not piece:
            continue
        if _ENUMERATOR.match(piece):
            carry = f"{carry} {piece}".strip()
            continue
        out.append(f"{carry} {piece}".strip() if carry else piece)
        carry = ""
    if carry:
        out.append(carry)
    return out


def segment(text: str) -> list[Sentence]:
    """Sentences of ``text`` (Markdown, chunk text or a model's answer) in order; see the module
    docstring for what counts as a block. Empty or whitespace-only text gives ``[]``."""
    out: list[Sentence] = []
    for block_no, (kind, block) in enumerate(_blocks(text)):
        pieces = [block] if kind in ("heading", "table_row") else _split_block(block)
        for piece in pieces:
            out.append(Sentence(text=piece, index=len(out), block=block_no, kind=kind))
    return out


def split_sentences(text: str) -> list[str]:
    """The texts of :func:`segment` (headings and list items included)."""
    return [s.text for s in segment(text)]


class SentenceBuffer:
    """Cuts a token stream into sentences as they complete, for sentence-by-sentence gating.

    ``feed(delta)`` returns the sentences completed by ``delta`` (a sentence is complete once the
    next one has begun or a line break ended it, so "$9." followed by "00" is never cut);
    ``flush()`` returns what is left at the end of the stream (or None).
    """

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, delta: str) -> list[str]:
        """Complete sentences after appending ``delta`` (cleaned, in order)."""
        self._buf += delta
        done: list[str] = []
        # Lines ended by a newline are complete blocks; the last line may still grow.
        head, sep, tail = self._buf.rpartition("\n")
        if sep:
            done.extend(split_sentences(head))
            self._buf = tail
        pieces = _split_block(self._buf)
        if len(pieces) > 1:
            done.extend(s for p in pieces[:-1] for s in split_sentences(p))
            last = pieces[-1]
            self._buf = self._buf[self._buf.rfind(last[: max(1, min(len(last), 12))]):]
        return done

    def flush(self) -> str | None:
        """The unfinished tail as one cleaned sentence, or None when nothing is left."""
        rest = " ".join(split_sentences(self._buf))
        self._buf = ""
        return rest or None
