"""Prompt-injection detection: the rules in ``injection_rules.toml`` run over normalised views of
a message.

The rules are data (id, family, pattern, examples that must and must not match; the file's header
describes the format), loaded with :mod:`tomllib` and compiled once, at import, into :data:`RULES`.
:func:`detect_injection` searches every rule in several views of the message: the
:func:`runtime.text.normalize` form, Cyrillic/Greek look-alikes mapped to Latin, leetspeak undone,
spaced-out letters joined, ROT13, reversed, and payloads found in it decoded once (base64, hex,
URL-encoding, 8-bit binary) and viewed the same ways.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.text import fold_homoglyphs, normalize, strip_marks

RULES_PATH = Path(__file__).with_name("injection_rules.toml")
MAX_SCAN = 20_000
"""Characters of a message that are scanned; the rest is ignored."""

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i",
     "|": "l", "+": "t", "8": "b"}
)  # fmt: skip
_NON_LETTER = re.compile(r"[^a-z]")
_SPACED_LETTERS = re.compile(r"(?<!\w)(?:\w[\s.\-_*|/\\,]){3,}\w(?!\w)")
_LETTER_SEPARATOR = re.compile(r"[\s.\-_*|/\\,]")
_FRAGMENT = re.compile(r"\{\{([A-Z_]+)\}\}")
_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FAMILY = re.compile(r"[a-z]+(?:_[a-z]+)*")
_RULE_KEYS = {"id", "family", "pattern", "form", "min_terms", "must_match", "must_not_match"}
_FORMS = ("text", "letters_only")
# Letter-only matching is skipped on views where the letters are scrambled on purpose.
_SCRAMBLED_VIEWS = ("rot13", "reversed")


@dataclass(frozen=True)
class InjectionRule:
    """One compiled rule from the rules file (see its header for the fields' meaning).

    ``letters_only``: search the view reduced to the letters a-z with leetspeak undone.
    ``min_terms``: distinct matches needed in one view (1: any match).
    """

    id: str
    family: str
    pattern: re.Pattern[str]
    letters_only: bool = False
    min_terms: int = 1
    must_match: tuple[str, ...] = ()
    must_not_match: tuple[str, ...] = ()

    def find(self, view: str) -> str | None:
        """The matched text (at most 120 characters) when the rule hits ``view``, else None.
        ``view`` is a normalised view; letter-only rules reduce it themselves."""
        if self.letters_only:
            view = _NON_LETTER.sub("", view.translate(_LEET))
        if self.min_terms <= 1:
            m = self.pattern.search(view)
            return m.group(0)[:120] if m else None
        terms = {" ".join(m.group(0).split()) for m in self.pattern.finditer(view)}
        return ", ".join(sorted(terms))[:120] if len(terms) >= self.min_terms else None


@dataclass(frozen=True)
class InjectionHit:
    """One detection: ``rule_id`` and ``family`` name the rule (:class:`InjectionRule`),
    ``view`` the text view it matched on (``plain``, ``homoglyph``, ``leet``, ``spaced``,
    ``rot13``, ``reversed``, or ``base64``/``hex``/``url``/``binary`` for a decoded payload,
    followed by ``/view`` when not plain) and ``excerpt`` the matched text (at most 120
    characters)."""

    rule_id: str
    family: str
    view: str
    excerpt: str

    @property
    def rule(self) -> str:
        """The rule's id (the name callers used before rules had ids)."""
        return self.rule_id


def _resolve(name: str, fragments: dict[str, str], stack: tuple[str, ...] = ()) -> str:
    if name not in fragments:
        raise ValueError(f"unknown fragment {{{{{name}}}}}")
    if name in stack:
        raise ValueError(f"fragment cycle: {' -> '.join((*stack, name))}")
    return _FRAGMENT.sub(lambda m: _resolve(m.group(1), fragments, (*stack, name)), fragments[name])


def _join_lines(text: str) -> str:
    return "".join(line.strip() for line in text.splitlines())


def _examples(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(value)


def _compile_rule(raw: dict[str, Any], fragments: dict[str, str]) -> InjectionRule:
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    for key in ("id", "family", "pattern"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ValueError(f"{key} must be a non-empty string")
    if not _ID.fullmatch(raw["id"]):
        raise ValueError("id must be kebab-case (a-z, 0-9, -)")
    if not _FAMILY.fullmatch(raw["family"]):
        raise ValueError("family must be snake_case")
    form = raw.get("form", "text")
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    min_terms = raw.get("min_terms", 1)
    if not isinstance(min_terms, int) or min_terms < 1:
        raise ValueError("min_terms must be a positive integer")
    source = _FRAGMENT.sub(lambda m: _resolve(m.group(1), fragments), _join_lines(raw["pattern"]))
    # The views have their combining marks stripped, so the pattern's letters must be too.
    source = strip_marks(source)
    try:
        pattern = re.compile(source)
    except re.error as e:
        raise ValueError(f"pattern does not compile: {e}") from e
    return InjectionRule(
        id=raw["id"],
        family=raw["family"],
        pattern=pattern,
        letters_only=form == "letters_only",
        min_terms=min_terms,
        must_match=_examples(raw, "must_match"),
        must_not_match=_examples(raw, "must_not_match"),
    )


def load_rules(path: Path | str = RULES_PATH) -> tuple[InjectionRule, ...]:
    """Load and compile the rules file at ``path`` (default: :data:`RULES_PATH`), in file order.

    Raises ``ValueError`` naming the rule (or fragment) when the file is not valid TOML, a rule
    lacks ``id``/``family``/``pattern`` or has an unknown key, an id is repeated or not
    kebab-case, a ``{{NAME}}`` fragment is unknown or cyclic, or a pattern does not compile.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: {e}") from e
    fragments = {k: _join_lines(v) for k, v in data.get("fragments", {}).items()}
    rules: list[InjectionRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("rule", [])):
        name = raw.get("id", f"#{i + 1}")
        try:
            rule = _compile_rule(raw, fragments)
        except ValueError as e:
            raise ValueError(f"{path}: rule {name}: {e}") from e
        if rule.id in seen:
            raise ValueError(f"{path}: duplicate rule id {rule.id}")
        seen.add(rule.id)
        rules.append(rule)
    if not rules:
        raise ValueError(f"{path}: no [[rule]] tables")
    return tuple(rules)


RULES: tuple[InjectionRule, ...] = load_rules()
"""The rules every :func:`detect_injection` call runs, compiled once at import."""


def _join_spaced_letters(text: str) -> str:
    # "i g n o r e   a l l" -> "ignore all": single letters separated by one separator char.
    return _SPACED_LETTERS.sub(lambda m: _LETTER_SEPARATOR.sub("", m.group(0)), text)


def _decoded_views(text: str) -> list[tuple[str, str]]:
    """Payloads hidden in ``text``, decoded once: ``(encoding, decoded text)`` pairs."""
    out: list[tuple[str, str]] = []
    for m in re.finditer(r"[A-Za-z0-9+/_-]{16,}={0,2}", text):
        tok = m.group(0)
        pad = "=" * (-len(tok) % 4)
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                dec = decoder(tok + pad).decode("utf-8")
            except (binascii.Error, ValueError, UnicodeDecodeError):
                continue
            # Random-looking words decode to binary noise; text decodes to printable characters.
            if dec and sum(c.isprintable() or c.isspace() for c in dec) / len(dec) > 0.9:
                out.append(("base64", dec))
                break
    for m in re.finditer(r"(?:(?:0x)?[0-9a-fA-F]{2}[\s:,]?){8,}", text):
        hexstr = re.sub(r"0x|[\s:,]", "", m.group(0))
        try:
            dec = bytes.fromhex(hexstr).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if dec.isprintable():
            out.append(("hex", dec))
    if "%" in text:
        unq = urllib.parse.unquote(text)
        if unq != text:
            out.append(("url", unq))
    if re.search(r"(?:[01]{8}\s?){6,}", text):
        bits = re.findall(r"[01]{8}", text)
        try:
            out.append(("binary", bytes(int(b, 2) for b in bits).decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            pass
    return out


def _views(text: str) -> list[tuple[str, str]]:
    """``(view name, text)`` pairs for one text; views equal to the one before are left out."""
    base = normalize(text)
    homo = fold_homoglyphs(base)
    views = [("plain", base)]
    if homo != base:
        views.append(("homoglyph", homo))
    leet = homo.translate(_LEET)
    if leet != homo:
        views.append(("leet", " ".join(leet.split())))
    joined = _join_spaced_letters(homo)
    if joined != homo:
        views.append(("spaced", joined))
    views.append(("rot13", codecs.encode(homo, "rot13")))
    views.append(("reversed", homo[::-1]))
    return views


def detect_injection(text: str, *, first_only: bool = False) -> list[InjectionHit]:
    """Return the prompt-injection rules that ``text`` triggers (empty list: none).

    Scans the first :data:`MAX_SCAN` characters in every view (see :class:`InjectionHit`) with
    every rule in :data:`RULES`; each rule is reported once, for the first view it hits, in view
    order. With ``first_only`` it stops at the first hit. Pure function; never raises on odd
    input.
    """
    text = text[:MAX_SCAN]
    hits: list[InjectionHit] = []
    seen: set[str] = set()
    candidates = _views(text)
    for name, dec in _decoded_views(text):
        candidates.extend((f"{name}/{v}" if v != "plain" else name, t) for v, t in _views(dec))
    for view, body in candidates:
        scrambled = view.rsplit("/", 1)[-1] in _SCRAMBLED_VIEWS
        for rule in RULES:
            if rule.id in seen or (rule.letters_only and scrambled):
                continue
            excerpt = rule.find(body)
            if excerpt is not None:
                seen.add(rule.id)
                hits.append(InjectionHit(rule.id, rule.family, view, excerpt))
                if first_only:
                    return hits
    return hits


def is_injection(text: str) -> bool:
    """True when :func:`detect_injection` finds at least one rule hit in ``text``."""
    return bool(detect_injection(text, first_only=True))
