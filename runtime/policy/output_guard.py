"""The output guard: what the model writes passes through it before any channel or the stored
answer sees it (DESIGN.md, Answering).

Three layers, chained on the token stream:

1. The tenant's canary (:class:`runtime.policy.CanaryFilter`): a complete leak trips the guard
   (``hit = "canary"``): the caller stops, delivers nothing more and escalates.
2. The handoff marker (:data:`HANDOFF_MARKER`): the model's "I cannot answer this" trips the guard
   (``hit = "handoff_marker"``).
3. Prompt scaffolding is removed, never delivered: fence markers in any form
   (``<<<untrusted customer question id=1a8b6478e69e>>>``, ``<<<end untrusted id=7`` cut short,
   extra or missing ``<``/``>``, ``*``/``#`` decorations, look-alike angle brackets), bare nonces
   (``id=<hex>``), chat-template tokens and role tags (``<|im_start|>assistant``, ``[INST]``,
   ``<<SYS>>``, ``</s>``, a leading ``assistant:`` or ``### Response:``), prompt labels (``Facts:``,
   ``Question:`` at a line start) and source ids (``[1]``, ``[source 2]``, ``(source 1)``,
   ``【1】``, ``Source 3:`` at a line start, "according to source 2").

Markers may be split across deltas at any character: the guard holds back only text that could
still become a marker (a partial regex match at the end of the buffer), at most
:data:`MAX_HOLD` characters, so ordinary text is released at once. :meth:`OutputGuard.clean` applies
the same rules to a whole text, and :meth:`OutputGuard.repeats_system_text` finds sentences that
reproduce the system prompt (8 or more consecutive words of it).
"""

from __future__ import annotations

import regex

from runtime.policy.canary import CanaryFilter
from runtime.text import HoldBack, normalize

HANDOFF_MARKER = "[HUMAN_HANDOFF]"
MAX_HOLD = 160
SYSTEM_NGRAM = 8

_LT = "<\uff1c\ufe64\u2039\u276e\u3008\u27e8\u00ab"
_GT = ">\uff1e\ufe65\u203a\u276f\u3009\u27e9\u00bb"
_DECOR = r"[*#_\s]*"
_PATTERNS = [
    # fence markers: two or more openers, a short label, one or more closers
    rf"{_DECOR}[{_LT}]{{2,}}[^{_LT}{_GT}\n]{{0,100}}[{_GT}]+{_DECOR}",
    # stray runs of closers, and a marker with one opener and its words
    rf"[{_GT}]{{2,}}",
    rf"[{_LT}]\s*/?\s*(?:end\s+)?untrusted\b[^{_LT}{_GT}\n]{{0,100}}[{_GT}]+",
    # the fence's words, and nonces, when they appear on their own
    r"(?i)\b(?:end\s+)?untrusted(?:\s+(?:customer\s+question|customer\s+message|source(?:\s+\d+)?|"
    r"text|data|document|label))?\b(?:[^\S\n]*id\s*=\s*[0-9a-f]{4,}\b)?",
    r"(?i)\bid\s*=\s*[0-9a-f]{6,}\b",
    # chat-template tokens, and the role name right after one
    r"<\|[^|<>\n]{0,40}\|>",
    r"(?i)\[/?INST\]|<</?SYS>>|</?s>",
    # role tags and prompt labels at the start of a line
    r"(?im)^[^\S\n]*(?:#{1,6}[^\S\n]*)?\**(?:assistant|system|user|response|answer|facts|question|"
    r"sources?)\**[^\S\n]*:",
    # source ids
    r"(?i)\[\s*(?:source|fact|doc(?:ument)?)?\s*#?\d{1,3}\s*\]|【\s*\d{1,3}\s*】",
    r"(?i)\(\s*(?:source|fact|doc(?:ument)?)\s*#?\d{1,3}\s*\)",
    r"(?i)\b(?:according\s+to|as\s+(?:stated|mentioned|noted|shown)\s+in|per|from|in|see)\s+"
    r"(?:the\s+)?(?:source|fact)\s*#?\d{1,3}\b\s*,?",
    r"(?im)^[^\S\n]*(?:source|fact)\s*#?\d{1,3}\s*[:.)-]",
]
# At the end of the stream, a fence marker cut short (``<<<end untrusted id=7``) is scaffolding too.
_UNTERMINATED = (
    rf"{_DECOR}[{_LT}]{{1,}}\s*/?\s*(?:end\b|untrusted\b|source\b|customer\b|question\b|system\b|"
    rf"id\s*=)[^{_LT}{_GT}\n]{{0,100}}\Z"
)
# The role name a chat-template token is followed by (``<|im_start|>assistant``).
_ROLE_AFTER_TOKEN = regex.compile(r"(?i)\s*(?:assistant|system|user)\b:?")
_STREAM = regex.compile("|".join(_PATTERNS))
_FINAL = regex.compile("|".join([*_PATTERNS, _UNTERMINATED]))
_SPACES = regex.compile(r"[^\S\n]{2,}")
_SPACE_PUNCT = regex.compile(r"[^\S\n]+([,.;:!?])")
_LEADING_JUNK = regex.compile(r"^[\s:;,.*#>\-|]+")


class OutputGuard:
    """Guard one answer's stream. canary: the tenant's secret; system_text: the prompt's system
    message (sentences reproducing it are reported by :meth:`repeats_system_text`).

    ``feed(delta) -> str`` (safe text now), ``flush() -> str`` (the end), ``hit`` ("canary" |
    "handoff_marker" | None; once set, everything returns ``""``), ``removed`` (scaffolding
    fragments stripped so far).
    """

    def __init__(self, canary: str, *, system_text: str = "") -> None:
        self._canary = CanaryFilter(canary)
        self._marker = HoldBack([HANDOFF_MARKER])
        self._pending = ""
        self._started = False
        self._ws = ""
        self._after_token = False
        self.hit: str | None = None
        self.removed = 0
        words = normalize(system_text).split()
        self._system_ngrams = {" ".join(words[i:i + SYSTEM_NGRAM])
                               for i in range(max(0, len(words) - SYSTEM_NGRAM + 1))}

    def feed(self, delta: str) -> str:
        """Add generated text; return what may be delivered now."""
        if self.hit:
            return ""
        text = self._canary.feed(delta)
        if self._canary.tripped:
            return self._trip("canary")
        text = self._marker.feed(text)
        if self._marker.matched:
            return self._trip("handoff_marker")
        return self._scaffold(text, final=False)

    def flush(self) -> str:
        """End of stream: release held text that completed no secret, marker or scaffolding (a
        marker cut short at the end is dropped)."""
        if self.hit:
            return ""
        text = self._canary.flush()
        text = self._marker.feed(text)
        if self._marker.matched:
            return self._trip("handoff_marker")
        return self._scaffold(text + self._marker.flush(), final=True)

    def clean(self, text: str) -> str:
        """The same scaffolding rules on a whole text (a stored answer); idempotent."""
        out, n = _FINAL.subn(" ", text)
        self.removed += n
        return _tidy(out, start=True)

    def repeats_system_text(self, sentence: str) -> bool:
        """True when ``sentence`` reproduces 8+ consecutive words of the system prompt."""
        words = normalize(sentence).split()
        return any(" ".join(words[i:i + SYSTEM_NGRAM]) in self._system_ngrams
                   for i in range(max(0, len(words) - SYSTEM_NGRAM + 1)))

    def _trip(self, why: str) -> str:
        self.hit = why
        self._pending = ""
        return ""

    def _scaffold(self, delta: str, *, final: bool) -> str:
        buf = self._pending + delta
        pattern = _FINAL if final else _STREAM
        out: list[str] = []
        i = pos = 0
        held = False
        while pos < len(buf):
            m = None
            if self._after_token and pos == i:
                m = _ROLE_AFTER_TOKEN.match(buf, pos, partial=not final)
                if m is None or (not m.partial and m.end() == m.start()):
                    self._after_token = False
                    m = None
            if m is None:
                m = pattern.match(buf, pos, partial=not final)
            if m is None or m.end() == m.start():
                pos += 1
                continue
            # A match reaching the end of the buffer may still grow (more closers, more digits).
            if m.partial or (not final and m.end() == len(buf)):
                if len(buf) - pos <= MAX_HOLD:
                    held = True
                    break
                pos += 1  # no marker is this long
                continue
            out.append(buf[i:pos] + " ")
            self.removed += 1
            self._after_token = buf.startswith("<|", pos)
            i = pos = m.end()
        end = pos if held else len(buf)
        out.append(buf[i:end])
        self._pending = buf[end:]
        return self._emit("".join(out), final)

    def _emit(self, text: str, final: bool) -> str:
        """Release ``text`` tidily across calls: spaces are held until the next visible
        character (dropped before punctuation, collapsed otherwise), and an answer never starts
        with spaces or leftover marker punctuation."""
        text = self._ws + text
        if not self._started:
            text = _LEADING_JUNK.sub("", text)
        body = text.rstrip(" \t")
        self._ws = text[len(body):]
        body = _SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", body))
        if final:
            self._ws = ""
        if body:
            self._started = True
        return body


def _tidy(text: str, *, start: bool) -> str:
    """Collapse the spaces a removal leaves, drop a space before punctuation, and leading junk
    at the start of an answer."""
    text = _SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", text))
    return _LEADING_JUNK.sub("", text).rstrip() if start else text
