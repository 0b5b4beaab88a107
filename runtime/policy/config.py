"""Tenant policy settings that ``BotConfig`` embeds: escalation, lead capture and guardrails.

These are plain pydantic models (no I/O). Validation errors carry messages that say what was
wrong and what is accepted, so the admin API can return them to the owner as they are.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from runtime.fields import PATTERN_NONBLANK, WHITESPACE, Text, json_int

DEFAULT_LEAD_ASK = (
    "Happy to help with that! Before I answer, could you share your email address so our team "
    "can follow up with you?"
)

_SPACES = re.compile(f"[{re.escape(WHITESPACE)}]+")
_MAX_TERMS = 200
_MAX_TERM_CHARS = 100
# A term as given: its length and the list's are checked before blanks and repeats are dropped,
# so the JSON Schema says exactly what is accepted.
Term = Annotated[Text, Field(max_length=_MAX_TERM_CHARS)]


def _clean_terms(values: list[str], what: str) -> list[str]:
    """Strip each term, collapse inner whitespace, drop empty ones and case-insensitive repeats.

    Raises ``ValueError`` (turned into a pydantic validation error) when a term is too long or
    there are too many terms.
    """
    seen: set[str] = set()
    out: list[str] = []
    for raw in values:
        term = " ".join(_SPACES.split(str(raw).strip(WHITESPACE)))
        if not term:
            continue
        if len(term) > _MAX_TERM_CHARS:
            raise ValueError(
                f"each of {what} must be at most {_MAX_TERM_CHARS} characters; "
                f"{term[:30]!r}... has {len(term)}"
            )
        key = term.casefold()
        if key in seen:
            continue
        seen.add(key)
        out.append(term)
    if len(out) > _MAX_TERMS:
        raise ValueError(f"at most {_MAX_TERMS} {what} are allowed, got {len(out)}")
    return out


class EscalationRules(BaseModel):
    """When the bot hands a conversation to a human instead of answering.

    Fields:
      keywords: words or phrases that escalate when they appear in a customer message (whole
        words, case-insensitive); blank entries are dropped.
      human_request: escalate when the customer explicitly asks for a human.
      negative_sentiment_threshold: VADER compound score in [-1.0, 0.0]; a message scoring at or
        below it escalates. ``None`` disables the check.
      max_low_coverage_turns: escalate after this many consecutive turns the knowledge base
        could not answer (0 disables the check).
      amount_threshold: escalate when a message quotes a money amount strictly above this value
        (any currency, not converted). ``None`` disables the check.
      injection: escalate on a detected prompt-injection attempt.
      min_similarity: best retrieval cosine similarity in [0, 1] below which the question counts
        as "could not answer" (calibrated for MiniLM in runtime/answering/coverage.py; a chunk with
        all the question's words counts 0.10 below it).
    """

    model_config = ConfigDict(extra="forbid")

    keywords: list[Term] = Field(default_factory=list, max_length=_MAX_TERMS)
    human_request: bool = True
    # Ranges are in the schema here and checked with their own messages by the validators below.
    negative_sentiment_threshold: float | None = Field(
        default=-0.6, json_schema_extra={"minimum": -1.0, "maximum": 0.0})
    max_low_coverage_turns: int = Field(default=2, json_schema_extra={"minimum": 0, "maximum": 50})
    amount_threshold: float | None = Field(
        default=None, json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 1e15})
    injection: bool = True
    min_similarity: float = Field(default=0.40, json_schema_extra={"minimum": 0.0, "maximum": 1.0})

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return _clean_terms(v, "escalation keywords")

    @field_validator("negative_sentiment_threshold")
    @classmethod
    def _sentiment(cls, v: float | None) -> float | None:
        if v is not None and not -1.0 <= v <= 0.0:
            raise ValueError(
                "negative_sentiment_threshold is a VADER compound score and must be between "
                f"-1.0 and 0.0 (e.g. -0.6), or null to disable; got {v}"
            )
        return v

    _ints = field_validator("max_low_coverage_turns", mode="before")(json_int)

    @field_validator("max_low_coverage_turns")
    @classmethod
    def _max_low(cls, v: int) -> int:
        if not 0 <= v <= 50:
            raise ValueError(f"max_low_coverage_turns must be between 0 (disabled) and 50; got {v}")
        return v

    @field_validator("amount_threshold")
    @classmethod
    def _amount(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and v < 1e15):
            raise ValueError(f"amount_threshold must be a positive number (or null to disable); got {v}")
        return v

    @field_validator("min_similarity")
    @classmethod
    def _min_sim(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(
                f"min_similarity is a cosine similarity and must be between 0.0 and 1.0; got {v}"
            )
        return v


class LeadCaptureRule(BaseModel):
    """Ask for a contact field before answering questions on some topics.

    Fields:
      topics: words or phrases (whole words, case-insensitive, simple plurals included) that
        mark a message as on-topic; at least one non-blank topic is required.
      ask_message: what the bot says to ask for the field (also accepted as ``ask``).
      required_field: the field to collect; only ``"email"`` for now.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Blank topics are dropped, so at least one must not be blank (`contains` in the schema).
    topics: list[Term] = Field(min_length=1, max_length=_MAX_TERMS, json_schema_extra={
        "contains": {"type": "string", "pattern": PATTERN_NONBLANK}})
    ask_message: Text = Field(default=DEFAULT_LEAD_ASK, max_length=1000,
                              validation_alias=AliasChoices("ask_message", "ask"),
                              json_schema_extra={"pattern": PATTERN_NONBLANK})
    required_field: Literal["email"] = "email"

    @field_validator("topics")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        topics = _clean_terms(v, "lead-capture topics")
        if not topics:
            raise ValueError(
                'a lead-capture rule needs at least one non-blank topic, e.g. ["pricing", "plans"]'
            )
        return topics

    @field_validator("ask_message")
    @classmethod
    def _ask(cls, v: str) -> str:
        v = v.strip(WHITESPACE)
        if not v:
            raise ValueError("ask_message must not be blank; it is what the bot asks the customer")
        if len(v) > 1000:
            raise ValueError(f"ask_message must be at most 1000 characters; got {len(v)}")
        return v


class Guardrails(BaseModel):
    """Limits on what the bot says, rendered into the fixed system prompt.

    Fields:
      forbidden_topics: topics the bot must decline to discuss; blank entries are dropped.
      max_answer_sentences: cap on answer length in sentences (1..50), ``None`` for no cap.
      extra_instructions: free-form owner instructions appended to the system prompt
        (at most 2000 characters).
    """

    model_config = ConfigDict(extra="forbid")

    forbidden_topics: list[Term] = Field(default_factory=list, max_length=_MAX_TERMS)
    max_answer_sentences: int | None = Field(default=None,
                                                 json_schema_extra={"minimum": 1, "maximum": 50})
    extra_instructions: Text = Field(default="", max_length=2000)

    @field_validator("forbidden_topics")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        return _clean_terms(v, "forbidden topics")

    _ints = field_validator("max_answer_sentences", mode="before")(json_int)

    @field_validator("max_answer_sentences")
    @classmethod
    def _max_sentences(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 50:
            raise ValueError(f"max_answer_sentences must be between 1 and 50, or null for no limit; got {v}")
        return v

    @field_validator("extra_instructions")
    @classmethod
    def _extra(cls, v: str) -> str:
        v = v.strip(WHITESPACE)
        if len(v) > 2000:
            raise ValueError(f"extra_instructions must be at most 2000 characters; got {len(v)}")
        return v
