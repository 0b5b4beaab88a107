"""The canary: a per-tenant secret placed in the fixed system prompt, and a stream filter that
never lets it (or a close variant of it) reach the customer.

:func:`make_canary` derives the secret; :class:`CanaryFilter` watches the model's output stream for
it with the shared hold-back matcher (:class:`runtime.text.HoldBack`), comparing case-insensitively
and ignoring Unicode compatibility forms, Cyrillic/Greek look-alikes and anything that is not a
letter or digit between the canary's characters.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from functools import lru_cache

from runtime.text import HoldBack, fold_homoglyphs

_CANARY_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no l/1/o/0 look-alikes


def make_canary(tenant_id: str, secret: str | bytes) -> str:
    """Deterministic per-tenant canary, e.g. ``"kq3v-7m2x-9pd4-tz8h"`` (16 symbols, 80 bits).

    HMAC-SHA256 of ``tenant_id`` under ``secret`` (a server-side key, str or bytes), encoded in
    a 32-letter alphabet without look-alike characters and grouped by four. Raises
    ``ValueError`` when ``secret`` is empty.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("make_canary needs a non-empty secret")
    digest = hmac.new(key, f"canary:{tenant_id}".encode(), hashlib.sha256).digest()
    num = int.from_bytes(digest[:10], "big")
    chars = []
    for _ in range(16):
        num, r = divmod(num, 32)
        chars.append(_CANARY_ALPHABET[r])
    core = "".join(chars)
    return "-".join(core[i : i + 4] for i in range(0, 16, 4))


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    """The lower-case ASCII letters and digits ``ch`` reads as ("Ｋ" -> "k", "к" -> "k", "-" -> "")."""
    folded = fold_homoglyphs(unicodedata.normalize("NFKC", ch).casefold())
    return "".join(c for c in folded if c.isascii() and c.isalnum())


class CanaryFilter:
    """Streaming output filter that never lets a canary (or a close variant) through.

    ``feed(delta)`` returns the text that is safe to emit now and holds back any suffix that could
    be the start of the canary; ``flush()`` releases what is held at the end of the stream. The
    match ignores case, Unicode compatibility forms, Cyrillic/Greek look-alikes and anything that
    is not a letter or digit between the canary's characters ("KQ3V 7M2X...", "k q 3 v-7m2x").

    ``min_match`` (default: the whole canary) is how many leading canary characters count as a
    leak; lower it to also stop partial leaks. Once tripped, ``tripped`` is True and the ``feed``
    that tripped it and every later ``feed``/``flush`` return ``""``: the caller must stop and send
    nothing more. Emitted text is the input, unchanged and in order. Raises ``ValueError`` when the
    canary has fewer than 6 letters or digits or ``min_match`` is outside 4..its length.
    """

    def __init__(self, canary: str, *, min_match: int | None = None) -> None:
        core = "".join(_fold_char(c) for c in canary)
        if len(core) < 6:
            raise ValueError("canary must contain at least 6 letters or digits")
        n = len(core) if min_match is None else min_match
        if not 4 <= n <= len(core):
            raise ValueError(f"min_match must be between 4 and {len(core)}, got {n}")
        self._hold = HoldBack([core[:n]], fold=_fold_char)
        self.tripped = False

    def feed(self, delta: str) -> str:
        """Add ``delta`` to the stream; return the part that can be emitted now (maybe ``""``)."""
        if self.tripped:
            return ""
        out = self._hold.feed(delta)
        if self._hold.matched is not None:
            # Text before the leak in this delta is dropped too: the answer stops here anyway.
            self.tripped = True
            return ""
        return out

    def flush(self) -> str:
        """End of stream: return whatever is still held (it did not complete the canary)."""
        return "" if self.tripped else self._hold.flush()

    @property
    def held(self) -> str:
        """Text currently held back (not yet emitted)."""
        return self._hold.held
