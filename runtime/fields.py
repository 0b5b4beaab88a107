"""Field types for text that people send: API request bodies and the bot's configuration.

- :data:`Text`: a ``str`` without NUL (U+0000), lone surrogates or the non-characters
  U+FFFE/U+FFFF (Postgres text and JSONB cannot hold NUL; none of them is something a person
  meant). Refused with a validation error naming the field (422 at the API).
- :data:`NonBlankText`: :data:`Text` with something other than :data:`WHITESPACE` in it.

Both put the same rule in their JSON Schema as a ``pattern`` (ECMA-262), so an API client (or a
fuzzer) reading ``/openapi.json`` knows what is accepted. Give lengths with ``Field(max_length=)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

# JSON Schema (ECMA-262) and Python agree on these, so the schema's pattern and the server's
# check accept the same strings (Python's own ``str.isspace`` adds U+001C-U+001F and U+0085).
WHITESPACE = "".join(
    chr(c) for c in [9, 10, 11, 12, 13, 32, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                     0x202F, 0x205F, 0x3000, 0xFEFF]
)
_BAD_CLASS = "\\u0000\\uFFFE\\uFFFF"
_WS_CLASS = "".join(f"\\u{ord(c):04X}" for c in WHITESPACE)
_PATTERN_ANY = f"^[^{_BAD_CLASS}]*$"
_PATTERN_NONBLANK = f"^[^{_BAD_CLASS}]*[^{_BAD_CLASS}{_WS_CLASS}][^{_BAD_CLASS}]*$"
PATTERN_NONBLANK = _PATTERN_NONBLANK
"""The JSON Schema ``pattern`` of :data:`NonBlankText`, for fields that check it themselves."""

Text = Annotated[str, Field(pattern=_PATTERN_ANY)]
"""Request text without invalid code points; give its length with ``Field(max_length=...)``."""

NonBlankText = Annotated[str, Field(min_length=1, pattern=_PATTERN_NONBLANK)]
""":data:`Text` that is not only whitespace (:data:`WHITESPACE`)."""

_MESSAGES = {
    _PATTERN_ANY: "must not contain NUL (U+0000), U+FFFE or U+FFFF; remove them",
    _PATTERN_NONBLANK: "must contain something other than whitespace, and no NUL (U+0000), "
                       "U+FFFE or U+FFFF",
}


def json_int(value: object) -> object:
    """JSON Schema's integer for a strictly validated ``int`` field: 36.0 becomes 36 (a number
    without a fraction is an integer there); anything else is left for the strict check, which
    refuses "36", true and 36.5. Use as a ``field_validator(..., mode="before")``, so the field's
    own limits stay in its schema."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def describe_pattern(pattern: str, message: str) -> str:
    """Register what a ``pattern`` of some field means, for :func:`error_message`. Returns
    ``pattern``."""
    _MESSAGES[pattern] = message
    return pattern


def error_message(error: Mapping[str, Any]) -> str:
    """A person's reading of one pydantic error dict (``ValidationError.errors()`` item): the
    patterns of :data:`Text` and :data:`NonBlankText` say what they refuse instead of quoting
    the regex; other errors keep pydantic's message."""
    if error.get("type") == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in _MESSAGES:
            return _MESSAGES[pattern]
    return str(error.get("msg", "invalid"))
