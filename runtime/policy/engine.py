"""The policy step of a turn: should this customer message escalate to a human?

:class:`PolicyEngine` has one method per signal and :meth:`PolicyEngine.evaluate`, which runs
them in a fixed order (rules, sentiment, repeated failure, amount, injection) and returns the
first that triggers. Pure logic: no I/O, safe to share between tasks and threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.policy.amounts import amount_over
from runtime.policy.config import EscalationRules
from runtime.policy.detection import detect_injection
from runtime.policy.rules import detect_human_request, match_keywords
from runtime.policy.sentiment import is_negative

SIGNAL_KEYWORD = "keyword"
SIGNAL_HUMAN_REQUEST = "human_request"
SIGNAL_SENTIMENT = "negative_sentiment"
SIGNAL_REPEATED_FAILURE = "repeated_failure"
SIGNAL_AMOUNT = "amount"
SIGNAL_INJECTION = "prompt_injection"
SIGNAL_LOW_COVERAGE = "low_coverage"


@dataclass(frozen=True)
class PolicyDecision:
    """Outcome of a policy check.

    escalate: hand the conversation to a human instead of answering;
    reason: one human-readable sentence for the inbox (``None`` when not escalating);
    signal: which signal fired, one of the ``SIGNAL_*`` constants (``None`` when not escalating);
    detail: JSON-safe specifics (matched keyword, score, amount, rule names...).
    """

    escalate: bool
    reason: str | None
    signal: str | None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def proceed(cls, **detail: Any) -> PolicyDecision:
        """A decision that lets the turn continue, with optional ``detail``."""
        return cls(escalate=False, reason=None, signal=None, detail=dict(detail))


class PolicyEngine:
    """Escalation checks over one customer message; every method returns a PolicyDecision."""

    def check_rules(self, text: str, rules: EscalationRules) -> PolicyDecision:
        """Tenant keywords (``rules.keywords``) then, if ``rules.human_request``, an explicit
        request for a human. Signals ``keyword`` / ``human_request``."""
        kw = match_keywords(text, rules.keywords)
        if kw is not None:
            return PolicyDecision(
                True,
                f"The message mentions the escalation keyword {kw!r}.",
                SIGNAL_KEYWORD,
                {"keyword": kw},
            )
        if rules.human_request:
            pattern = detect_human_request(text)
            if pattern is not None:
                return PolicyDecision(
                    True,
                    "The customer asked to talk to a human.",
                    SIGNAL_HUMAN_REQUEST,
                    {"pattern": pattern},
                )
        return PolicyDecision.proceed()

    def check_sentiment(self, text: str, threshold: float | None) -> PolicyDecision:
        """Escalate when the VADER compound score is at or below ``threshold`` (in [-1, 1];
        ``None`` disables). Signal ``negative_sentiment``; detail has ``score``."""
        if threshold is None:
            return PolicyDecision.proceed()
        negative, score = is_negative(text, threshold)
        if negative:
            return PolicyDecision(
                True,
                f"The customer seems upset (sentiment {score:.2f} <= {threshold:.2f}).",
                SIGNAL_SENTIMENT,
                {"score": score, "threshold": threshold},
            )
        return PolicyDecision.proceed(score=score)

    def check_repeated_failure(self, low_coverage_streak: int, max_failures: int) -> PolicyDecision:
        """Escalate when ``low_coverage_streak`` (consecutive most recent turns the knowledge
        base could not answer) has reached ``max_failures`` (0 disables). Signal
        ``repeated_failure``."""
        if max_failures > 0 and low_coverage_streak >= max_failures:
            return PolicyDecision(
                True,
                f"The bot could not answer {low_coverage_streak} turns in a row.",
                SIGNAL_REPEATED_FAILURE,
                {"streak": low_coverage_streak, "max": max_failures},
            )
        return PolicyDecision.proceed()

    def check_amount(self, text: str, threshold: float | None) -> PolicyDecision:
        """Escalate when the message quotes a money amount strictly above ``threshold`` (any
        currency, no conversion; ``None`` disables). Signal ``amount``; detail has ``amount``,
        ``currency``, ``text``."""
        if threshold is None:
            return PolicyDecision.proceed()
        found = amount_over(text, threshold)
        if found is not None:
            cur = f" {found.currency}" if found.currency else ""
            return PolicyDecision(
                True,
                f"The customer quotes {found.value:,.2f}{cur}, above the {threshold:,.2f} limit.",
                SIGNAL_AMOUNT,
                {
                    "amount": found.value,
                    "currency": found.currency,
                    "text": found.text,
                    "threshold": threshold,
                },
            )
        return PolicyDecision.proceed()

    def check_injection(self, text: str) -> PolicyDecision:
        """Escalate on a prompt-injection attempt. Signal ``prompt_injection``; detail lists the
        rules that hit and where."""
        hits = detect_injection(text)
        if hits:
            return PolicyDecision(
                True,
                "The message looks like an attempt to manipulate the assistant.",
                SIGNAL_INJECTION,
                {
                    "rules": [h.rule for h in hits],
                    "views": [h.view for h in hits],
                    "excerpt": hits[0].excerpt,
                },
            )
        return PolicyDecision.proceed()

    def check_coverage(self, best_similarity: float | None, min_similarity: float) -> PolicyDecision:
        """After retrieval: escalate as "could not answer" when the best cosine similarity is
        ``None`` (nothing retrieved) or below ``min_similarity``. Signal ``low_coverage``."""
        if best_similarity is None or best_similarity < min_similarity:
            return PolicyDecision(
                True,
                "The knowledge base has no good answer to this question.",
                SIGNAL_LOW_COVERAGE,
                {"best_similarity": best_similarity, "min_similarity": min_similarity},
            )
        return PolicyDecision.proceed(best_similarity=best_similarity)

    def evaluate(self, text: str, config: EscalationRules, low_coverage_streak: int = 0) -> PolicyDecision:
        """Run every enabled check in order and return the first that escalates, else a
        ``proceed`` decision. ``low_coverage_streak`` is the count of consecutive most recent
        low-coverage turns."""
        checks = (
            lambda: self.check_rules(text, config),
            lambda: self.check_sentiment(text, config.negative_sentiment_threshold),
            lambda: self.check_repeated_failure(low_coverage_streak, config.max_low_coverage_turns),
            lambda: self.check_amount(text, config.amount_threshold),
            lambda: self.check_injection(text) if config.injection else PolicyDecision.proceed(),
        )
        for check in checks:
            decision = check()
            if decision.escalate:
                return decision
        return PolicyDecision.proceed()
