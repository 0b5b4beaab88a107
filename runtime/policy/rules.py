"""Tenant keyword rules and explicit requests for a human.

Both work on one customer message (a ``str``) and return what matched, or ``None``. Matching is
case-insensitive, tolerant of extra whitespace and punctuation, and works on whole words so
that a keyword "refund" does not fire on "refunded" unless the owner lists that too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_MAX_SCAN = 20_000  # characters of one message that are examined


def normalize_text(text: str) -> str:
    """NFKC-normalise, case-fold, unify apostrophes and collapse whitespace to single spaces."""
    text = unicodedata.normalize("NFKC", text[:_MAX_SCAN]).casefold()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return " ".join(text.split())


@lru_cache(maxsize=1024)
def _term_pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in normalize_text(term).split()]
    body = r"[\s\-_/]+".join(words)
    # Whole-word boundaries that also work when the term starts/ends with punctuation.
    return re.compile(rf"(?<!\w){body}(?!\w)")


def match_keywords(text: str, keywords: Iterable[str]) -> str | None:
    """Return the first of ``keywords`` that occurs in ``text`` as whole words, else ``None``.

    Case-insensitive; inner whitespace in a multi-word keyword matches any run of spaces,
    hyphens, underscores or slashes. Blank keywords are ignored.
    """
    norm = normalize_text(text)
    for kw in keywords:
        if kw and kw.strip() and _term_pattern(kw).search(norm):
            return kw
    return None


_ART = r"(?:(?:a|an|the|some|one|your|any|a\s+real|an\s+actual)\s+)?"
_ADJ = (
    r"(?:(?:real|live|actual|human|flesh[\s-]and[\s-]blood|customer\s+(?:service|support)|"
    r"support|sales|service|breathing|living)\s+)?"
)
_NOUN = (
    r"(?:human(?:\s+beings?)?|humans|person|people|agents?|representatives?|reps?|operators?|"
    r"someone|somebody|anyone|anybody|staff|employees?|manager|supervisor|team\s+member|"
    r"(?:customer\s+)?(?:service|support)\s+(?:team|staff|agent|person)|man|woman)"
)
# Words that follow "agent"/"user"-like nouns in product questions ("agent role", "agent seat").
_NOT_PRODUCT = (
    r"(?!\s*(?:role|roles|account|accounts|seat|seats|licen[cs]e|user|users|api|id|permissions?|"
    r"dashboard|view|app|plan|settings?|invites?|login|inbox|panel|status|tab|mode|field|"
    r"assignment|routing|handoff\s+setting)\b)"
)
_TALK = r"(?:talk|speak|chat|communicate|converse|be\s+connected|get\s+connected)"

_HUMAN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(p))
    for name, p in (
        # "can I talk to a real person", "let me speak with someone", "chat with an agent"
        ("talk_to_human", rf"\b{_TALK}\s+(?:to|with)\s+{_ART}{_ADJ}{_NOUN}\b{_NOT_PRODUCT}"),
        # "connect me to an agent", "transfer me to a human", "put me through to someone"
        (
            "transfer_to_human",
            rf"\b(?:connect|transfer|put|pass|forward|escalate|hand|route|redirect|send)\s+"
            rf"(?:me|us|this|my\s+(?:chat|call|case|ticket|issue|question|request))\s+"
            rf"(?:through\s+|over\s+|on\s+)?(?:to|with)\s+{_ART}{_ADJ}{_NOUN}\b{_NOT_PRODUCT}",
        ),
        # "I want a human", "I need a real person", "get me an agent", "I'd like a representative"
        (
            "want_human",
            r"\b(?:want|need|like|demand|request|prefer|wanna|get\s+me|give\s+me|find\s+me|"
            r"bring\s+me|require)\s+(?:to\s+(?:have|get)\s+)?"
            r"(?:a|an|the|some|one|your)\s+(?:real\s+|live\s+|actual\s+|human\s+)?"
            r"(?:human(?:\s+beings?)?|person|agent|representative|rep|operator|"
            r"human\s+agent|live\s+agent|real\s+person|supervisor|manager)\b" + _NOT_PRODUCT,
        ),
        # "is there a real person I can talk to?", "is anyone there", "are there humans here"
        (
            "is_there_human",
            r"\b(?:is\s+there|are\s+there|do\s+you\s+have)\s+(?:a|an|any|some)?\s*"
            r"(?:real\s+|live\s+|actual\s+|human\s+)?(?:human|person|people|agent|"
            r"representative|operator|humans|agents|one|body)s?\s+"
            r"(?:i\s+can|we\s+can|to|who|that|available|around|there|here|on\s+(?:the\s+)?line)",
        ),
        # "real person please", "live agent", "human being", "human agent" used as a request
        (
            "real_person",
            r"\b(?:real|live|actual|human)\s+(?:person|people|human|agent|being|representative|"
            r"operator)\b" + _NOT_PRODUCT,
        ),
        # "I don't want to talk to a bot", "stop the bot", "no more bots", "not a robot please"
        (
            "no_bot",
            r"\b(?:don'?t|do\s+not|dont|no\s+longer|not)\s+(?:want|wanna|like)\s+"
            r"(?:to\s+(?:talk|speak|chat)\s+(?:to|with)\s+)?(?:a|an|the|this|your|some)?\s*"
            r"(?:bot|robot|machine|ai|chatbot|computer|automated)\b|"
            r"\b(?:no\s+more|stop\s+(?:the|this|your)|enough\s+(?:of\s+)?(?:the|this|your)?)\s*"
            r"(?:bots?|robots?|chatbots?|machines?|ai|automated\s+\w+)\b|"
            r"\b(?:you'?re|you\s+are)\s+(?:just\s+)?(?:a\s+)?(?:useless\s+|stupid\s+|dumb\s+)"
            r"(?:bot|robot|machine)\b",
        ),
        # multilingual: es, fr, de, it, pt, nl
        (
            "human_multilingual",
            r"\b(?:hablar|habla|comunicarme)\s+con\s+(?:un|una|alguien|el|la)\s*"
            r"(?:humano|persona|agente|operador|asesor)?|"
            r"\bparler\s+(?:à|a|avec)\s+(?:un|une|quelqu'un)\s*(?:humain|personne|agent|"
            r"conseiller|conseillère)?|"
            r"\b(?:mit|einen|einem)\s+(?:echten\s+)?(?:menschen|mitarbeiter|berater|"
            r"kundenberater|mensch)\s+(?:sprechen|reden)|"
            r"\bparlare\s+con\s+(?:un|una|qualcuno|un'?)\s*(?:umano|persona|operatore)?|"
            r"\bfalar\s+com\s+(?:um|uma|alguém)\s*(?:humano|pessoa|atendente|agente)?|"
            r"\bspreken\s+met\s+(?:een|iemand)\s*(?:mens|medewerker|persoon)?",
        ),
    )
)

# Whole short messages that are a request on their own: "human", "agent please", "operator!".
_SHORT_REQUEST = re.compile(
    r"^(?:please\s+|pls\s+|plz\s+|hi\s+|hello\s+)?(?:(?:i\s+want\s+)?(?:a|an|the)\s+)?"
    r"(?:real\s+|live\s+|actual\s+)?"
    r"(?:human|humans|agent|person|representative|rep|operator|someone|somebody|support\s+agent|"
    r"customer\s+service|support\s+team|talk\s+to\s+human|speak\s+to\s+human)"
    r"(?:\s+(?:please|pls|plz|now|asap|already|thanks|thank\s+you))*$"
)


def detect_human_request(text: str) -> str | None:
    """Return the name of the pattern that shows ``text`` explicitly asks for a human, or ``None``.

    Recognises phrasings such as "I want to talk to a human", "can I speak to a real person",
    "agent please", "connect me to an agent", "I don't want to talk to a bot", and a few other
    languages. Product questions that merely mention agents ("how do I add an agent seat?") are
    not requests.
    """
    norm = normalize_text(text)
    short = re.sub(r"[^\w\s']+", " ", norm)
    short = " ".join(short.split())
    if short and _SHORT_REQUEST.match(short):
        return "short_request"
    for name, pat in _HUMAN_PATTERNS:
        if pat.search(norm):
            return name
    return None
