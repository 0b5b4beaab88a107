"""Conversation policy: escalation signals, lead capture and prompt-injection defences.

Pure logic with no I/O and no imports from ``runtime.api``, ``actors``, ``runtime.db`` or
``runtime.models``; the session actor calls it before generation (``PolicyEngine.evaluate``),
while building the prompt (``fence_untrusted``, ``make_canary``) and on the output stream
(``OutputGuard``, which runs ``CanaryFilter``). Prompt-injection defences live in three modules:
``detection`` (rules as data in ``injection_rules.toml``), ``fencing`` and ``canary``.
"""

from runtime.policy.amounts import Amount, amount_over, extract_amounts, parse_number
from runtime.policy.canary import CanaryFilter, make_canary
from runtime.policy.config import DEFAULT_LEAD_ASK, EscalationRules, Guardrails, LeadCaptureRule
from runtime.policy.detection import InjectionHit, InjectionRule, detect_injection, is_injection
from runtime.policy.engine import (
    SIGNAL_AMOUNT,
    SIGNAL_HUMAN_REQUEST,
    SIGNAL_INJECTION,
    SIGNAL_KEYWORD,
    SIGNAL_LOW_COVERAGE,
    SIGNAL_REPEATED_FAILURE,
    SIGNAL_SENTIMENT,
    PolicyDecision,
    PolicyEngine,
)
from runtime.policy.fencing import UNTRUSTED_NOTICE, fence_untrusted, neutralise_markers
from runtime.policy.leads import (
    EmailCheck,
    check_email_reply,
    declines_to_share,
    extract_email,
    find_lead_rule,
    match_topic,
    normalize_email,
)
from runtime.policy.output_guard import HANDOFF_MARKER, OutputGuard
from runtime.policy.rules import detect_human_request, match_keywords
from runtime.policy.sentiment import is_negative, sentiment_score

__all__ = [
    "HANDOFF_MARKER",
    "OutputGuard",
    "DEFAULT_LEAD_ASK",
    "SIGNAL_AMOUNT",
    "SIGNAL_HUMAN_REQUEST",
    "SIGNAL_INJECTION",
    "SIGNAL_KEYWORD",
    "SIGNAL_LOW_COVERAGE",
    "SIGNAL_REPEATED_FAILURE",
    "SIGNAL_SENTIMENT",
    "UNTRUSTED_NOTICE",
    "Amount",
    "CanaryFilter",
    "EmailCheck",
    "EscalationRules",
    "Guardrails",
    "InjectionHit",
    "InjectionRule",
    "LeadCaptureRule",
    "PolicyDecision",
    "PolicyEngine",
    "amount_over",
    "check_email_reply",
    "declines_to_share",
    "detect_human_request",
    "detect_injection",
    "extract_amounts",
    "extract_email",
    "fence_untrusted",
    "find_lead_rule",
    "is_injection",
    "is_negative",
    "make_canary",
    "match_keywords",
    "match_topic",
    "neutralise_markers",
    "normalize_email",
    "parse_number",
    "sentiment_score",
]
