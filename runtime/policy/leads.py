"""Lead-capture helpers: is a message on a lead-capture topic, and did the reply give an email?

The session actor uses them as: on a customer message, :func:`find_lead_rule`; if a rule matches
and the contact has no email yet, send the rule's ``ask_message`` and remember the question; on
the next message, :func:`check_email_reply`; when it returns an email, save it and answer the
remembered question (:func:`declines_to_share` tells a refusal from an unrelated reply).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from runtime.errors import InvalidInput
from runtime.policy.config import LeadCaptureRule
from runtime.policy.rules import normalize_text

_MAX_SCAN = 20_000


@lru_cache(maxsize=1024)
def _topic_pattern(topic: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in normalize_text(topic).split()]
    body = r"[\s\-_/]+".join(words)
    # Whole words, with simple plural / possessive endings ("plan" matches "plans", "plan's").
    return re.compile(rf"(?<!\w){body}(?:s|es|'s)?(?!\w)")


def match_topic(text: str, topics: Iterable[str]) -> str | None:
    """Return the first of ``topics`` that ``text`` mentions (whole words, case-insensitive,
    simple plurals included), else ``None``. Blank topics are ignored."""
    norm = normalize_text(text)
    for topic in topics:
        if topic and topic.strip() and _topic_pattern(topic).search(norm):
            return topic
    return None


def find_lead_rule(text: str, rules: Iterable[LeadCaptureRule]) -> tuple[LeadCaptureRule, str] | None:
    """Return ``(rule, matched_topic)`` for the first rule whose topic ``text`` mentions, or
    ``None`` when no rule applies."""
    for rule in rules:
        topic = match_topic(text, rule.topics)
        if topic is not None:
            return rule, topic
    return None


@dataclass(frozen=True)
class EmailCheck:
    """Result of looking for an email address in a reply.

    email: the first valid address, normalised (domain IDNA-normalised and the whole address
      lower-cased), or ``None``;
    candidate: the first email-like string found (valid or not), or ``None`` when the reply has
      nothing that looks like an address;
    error: email-validator's explanation when ``candidate`` is invalid, else ``None``.
    """

    email: str | None
    candidate: str | None
    error: str | None


_CANDIDATE = re.compile(r"[^\s<>()\[\]{},;:\"'`]+@[^\s<>()\[\]{},;:\"'`]+")


def _normalise_valid(candidate: str) -> str:
    info = validate_email(candidate, check_deliverability=False)
    return info.normalized.lower()


def check_email_reply(text: str) -> EmailCheck:
    """Find and validate an email address in a customer's reply.

    Looks at every ``x@y`` token (``mailto:`` and surrounding punctuation stripped) and validates
    it with email-validator without DNS (``check_deliverability=False``). Returns the first valid
    one; otherwise reports the first candidate and why it is invalid.
    """
    first_bad: tuple[str, str] | None = None
    for m in _CANDIDATE.finditer(text[:_MAX_SCAN]):
        cand = m.group(0)
        if cand.lower().startswith("mailto:"):
            cand = cand[7:]
        cand = cand.strip(".!?*_~")
        try:
            return EmailCheck(email=_normalise_valid(cand), candidate=cand, error=None)
        except EmailNotValidError as exc:
            if first_bad is None:
                first_bad = (cand, str(exc))
    if first_bad is not None:
        return EmailCheck(email=None, candidate=first_bad[0], error=first_bad[1])
    return EmailCheck(email=None, candidate=None, error=None)


def extract_email(text: str) -> str | None:
    """The first valid, normalised email address in ``text``, or ``None``."""
    return check_email_reply(text).email


def normalize_email(value: str) -> str:
    """Validate one email address (no DNS) and return it normalised and lower-cased.

    Raises :class:`~runtime.errors.InvalidInput` (``field="email"``) with email-validator's
    explanation when the address is invalid.
    """
    try:
        return _normalise_valid(value.strip())
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address: {exc}", field="email") from exc


_DECLINE = re.compile(
    r"\b(?:no\s+thanks?|no\s+thank\s+you|nope|i'?d\s+rather\s+not|i\s+would\s+rather\s+not|"
    r"i\s+(?:don'?t|do\s+not)\s+(?:want|wish)\s+to\s+(?:share|give|provide)|"
    r"(?:won'?t|will\s+not|not\s+going\s+to)\s+(?:share|give|provide)|"
    r"(?:skip|pass)\s+(?:that|this|it)?|just\s+(?:answer|tell\s+me)|without\s+(?:my\s+)?email|"
    r"(?:don'?t|do\s+not)\s+have\s+(?:an\s+)?email|not\s+comfortable|prefer\s+not|"
    r"none\s+of\s+your\s+business)\b"
)


def declines_to_share(text: str) -> bool:
    """True when ``text`` reads as a refusal to give contact details ("no thanks, just answer")."""
    return bool(_DECLINE.search(normalize_text(text)))
