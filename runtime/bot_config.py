"""A tenant's bot configuration (``bot_configs.config`` jsonb), validated by :class:`BotConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from runtime.fields import PATTERN_NONBLANK, WHITESPACE, Text
from runtime.policy.config import EscalationRules, Guardrails, LeadCaptureRule

BotStatus = Literal["active", "paused"]
AnswerStrategy = Literal["auto", "generative", "extractive"]


_NONBLANK: dict[str, JsonValue] = {"pattern": PATTERN_NONBLANK, "minLength": 1}


class BotConfig(BaseModel):
    """Persona, greeting, lead capture, escalation rules and guardrails of one tenant's bot.

    Unknown fields are rejected (422 naming the field) so typos never silently do nothing.
    """

    model_config = ConfigDict(extra="forbid")

    # Checked (and stripped) by _strip below; the schema says the same with its pattern.
    bot_name: Text = Field(default="Sarah", max_length=60, json_schema_extra=_NONBLANK)
    business_name: Text = Field(default="our company", max_length=120, json_schema_extra=_NONBLANK)
    persona: Text = Field(
        default="You are a friendly, concise customer-support assistant.", max_length=2000
    )
    greeting: Text = Field(default="Hi! Got questions? I'm Sarah", max_length=300,
                           json_schema_extra=_NONBLANK)
    language: Text = Field(default="en", min_length=2, max_length=10)
    answer_strategy: AnswerStrategy = Field(
        default="auto",
        description="generative: the model writes from the sources (every sentence grounding-checked); "
        "extractive: the best source sentences quoted with their link, no model; auto: generative only "
        "when the operator marks the generator capable (vLLM, hosted), extractive on the CPU default",
    )
    lead_capture: list[LeadCaptureRule] = Field(default_factory=list, max_length=20)
    escalation: EscalationRules = Field(default_factory=EscalationRules)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    sla_minutes: float | None = Field(
        default=None, gt=0, le=7 * 24 * 60,
        description="escalated and unclaimed this long: fallback message + owner alert "
        "(default CHAT_ENGINE_SLA_MINUTES)",
    )
    handoff_message: Text = Field(
        default="I'm connecting you to our team. Someone will reply here shortly.",
        min_length=1, max_length=500,
    )
    could_not_answer_message: Text = Field(
        default="I'm not sure about that one, so I've asked our team to help. "
        "Someone will reply here shortly.",
        min_length=1, max_length=500,
    )
    sla_fallback_message: Text = Field(
        default="Sorry for the wait. Our team is busy right now; we'll get back to you as soon "
        "as we can, here or by email.",
        min_length=1, max_length=500,
    )
    paused_message: Text = Field(
        default="Thanks for your message. Our team will get back to you here shortly.",
        min_length=1, max_length=500,
    )

    @field_validator("bot_name", "business_name", "greeting")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip(WHITESPACE)
        if not v:
            raise ValueError("must not be blank")
        return v


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch: ``null`` removes a key (back to its default), dicts merge."""
    out = dict(current)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out
