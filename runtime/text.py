"""Text helpers shared by the policy, the output guard and the model layer (stdlib only).

- :func:`normalize`: the one text normalisation: invisible characters removed, Unicode
  compatibility forms folded (NFKC), case-folded, combining marks stripped, curly quotes made
  straight, whitespace collapsed. Used to compare text the way a reader would.
- :class:`HoldBack`: the one hold-back stream matcher: fed a token stream, it releases text that
  can no longer be the start of one of its needles, holds back a possible start, and reports a
  complete needle (stop strings, a secret that must not be written).
- :func:`fold_homoglyphs`: Cyrillic/Greek look-alike letters mapped to Latin ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

_INVISIBLE = re.compile(
    r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u201c": '"', "\u201d": '"'})
# Cyrillic/Greek letters that look like Latin ones, mapped to the Latin letter (lower case: apply
# after case-folding).
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j",
        "ѕ": "s", "ԁ": "d", "ɡ": "g", "ո": "n", "α": "a", "β": "b", "ε": "e", "ι": "i",
        "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ı": "i",
    }
)  # fmt: skip


def fold_homoglyphs(text: str) -> str:
    """``text`` with lower-case Cyrillic/Greek look-alikes of Latin letters replaced by the Latin
    letter ("раypal" -> "paypal"); apply after :func:`normalize` (it case-folds)."""
    return text.translate(_HOMOGLYPHS)


def strip_invisible(text: str) -> str:
    """``text`` without zero-width, bidi-control and other invisible characters."""
    return _INVISIBLE.sub("", text)


def normalize(text: str) -> str:
    """The comparison form of ``text`` (see the module doc). Pure; never raises."""
    text = strip_marks(unicodedata.normalize("NFKC", strip_invisible(text)).casefold())
    return " ".join(text.translate(_QUOTES).split())


def strip_marks(text: str) -> str:
    """``text`` without combining marks (accents, zalgo, kana voicing marks), recomposed (NFC):
    "é" -> "e", "й" -> "и", "プ" -> "フ". Part of :func:`normalize`; also applied to patterns that
    are matched against normalised text, so they are written as a reader writes them."""
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", text)


class HoldBack:
    """A stream matcher for a set of needles.

    ``feed(delta) -> str`` returns the text that is safe to release now; text that could still
    be the beginning of a needle is held. When a needle completes, ``matched`` is set to it, the
    text before it is released, and every later call returns ``""``. ``flush()`` releases what is
    held at the end of the stream. ``fold`` maps each character to the form it is compared in
    (e.g. lower-case alphanumerics only, so ``"K Q-3v"`` matches ``"kq3v"``); the default compares
    exactly. Emitted text is the input, unchanged and in order, minus the needle and what follows.
    """

    def __init__(self, needles: Iterable[str], *, fold: Callable[[str], str] | None = None) -> None:
        self._fold = fold or (lambda ch: ch)
        self.needles = [n for n in ("".join(self._fold(c) for c in n) for n in needles) if n]
        if not self.needles:
            raise ValueError("HoldBack needs at least one non-empty needle")
        self._pending = ""
        self.matched: str | None = None

    def _project(self, text: str) -> tuple[str, list[int]]:
        chars: list[str] = []
        index: list[int] = []
        for i, ch in enumerate(text):
            for c in self._fold(ch):
                chars.append(c)
                index.append(i)
        return "".join(chars), index

    def feed(self, delta: str) -> str:
        """Add ``delta``; return what may be released now (possibly ``""``)."""
        if self.matched is not None:
            return ""
        self._pending += delta
        proj, index = self._project(self._pending)
        hits = [(proj.find(n), n) for n in self.needles if n in proj]
        if hits:
            at, needle = min(hits)
            self.matched = needle
            out = self._pending[: index[at]] if at < len(index) else self._pending
            self._pending = ""
            return out
        cut = len(self._pending)
        longest = max(len(n) for n in self.needles)
        for s in range(max(0, len(proj) - longest + 1), len(proj)):
            if any(n.startswith(proj[s:]) for n in self.needles):
                cut = index[s]
                break
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """End of stream: release what is held (it completed no needle)."""
        if self.matched is not None:
            return ""
        out, self._pending = self._pending, ""
        return out

    @property
    def held(self) -> str:
        """Text currently held back."""
        return self._pending
