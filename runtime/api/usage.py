"""Usage and credits (seed 002 AIUsage): the platform admin grants a tenant credits; the owner
reads the balance and the daily usage (answers, tokens, cost per backend and model)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from runtime.api.contract import AUTHED, error_responses
from runtime.api.deps import Admin, Ctx, Owner
from runtime.db import bot_configs
from runtime.db import usage as usage_db

router = APIRouter(prefix="/v1", tags=["usage"], responses=error_responses(*AUTHED, 404))

MAX_CREDITS = 10**12


class CreditsSet(BaseModel):
    """PUT /v1/tenants/{tenant_id}/credits body."""

    credits: int | None = Field(
        ge=0, le=MAX_CREDITS,
        description="AI answers the tenant may get from now (one credit each); null: unlimited. "
        "At 0 the bot pauses: customers get the paused message and go to the inbox")


class CreditsOut(BaseModel):
    """A tenant's credits: the balance and the grant it is measured against."""

    tenant_id: UUID
    credit_balance: int | None = Field(description="null: unlimited; <= 0: the bot is paused")
    credit_granted: int | None = Field(description="the last grant (the 100% of the 80% alert)")


@router.put("/tenants/{tenant_id}/credits", response_model=CreditsOut)
async def set_credits(tenant_id: UUID, body: CreditsSet, ctx: Ctx, _: Admin) -> CreditsOut:
    """Grant credits (platform admin): the balance becomes ``credits`` and the owner's alerts
    (at 80% spent and at 100%) are armed again. 404 for an unknown tenant."""
    async with ctx.pool.acquire() as conn:
        row = await bot_configs.set_credits(conn, tenant_id, body.credits)
    return CreditsOut(tenant_id=row["tenant_id"], credit_balance=row["credit_balance"],
                      credit_granted=row["credit_granted"])


class ModelUsage(BaseModel):
    """One backend and model on one day."""

    backend: str
    model: str | None
    generations: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = Field(description="from CHAT_ENGINE_MODEL_PRICES; 0 for a self-run model")


class DayUsage(BaseModel):
    """One UTC day."""

    day: date
    answers: int = Field(description="AI answers from the knowledge base (one credit each)")
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    models: list[ModelUsage]


class UsageOut(BaseModel):
    """GET /v1/usage: the balance, then per-day figures, oldest first (days without any left out)."""

    tenant_id: UUID
    start: date
    end: date
    credit_balance: int | None
    credit_granted: int | None
    answers: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    days: list[DayUsage]


@router.get("/usage", response_model=UsageOut)
async def get_usage(
    ctx: Ctx, owner: Owner,
    days: Annotated[int, Query(ge=1, le=366, description="the last N UTC days, today included")] = 30,
) -> UsageOut:
    """The tenant's credits and AI usage per day (owner)."""
    end = datetime.now(UTC).date()
    start = end - timedelta(days=days - 1)
    async with ctx.pool.acquire() as conn:
        cfg = await bot_configs.get_bot_config(conn, owner.tenant_id)
        rows = await usage_db.daily_usage(conn, owner.tenant_id, start, end)
        answers = await usage_db.answers_per_day(conn, owner.tenant_id, start, end)
    by_day: dict[date, list[ModelUsage]] = {}
    for r in rows:
        by_day.setdefault(r["day"], []).append(ModelUsage(
            backend=r["backend"], model=r["model"], generations=r["generations"],
            prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
            cost_usd=r["cost_micros"] / 1e6))
    out_days = [
        DayUsage(day=d, answers=answers.get(d, 0), models=by_day.get(d, []),
                 prompt_tokens=sum(m.prompt_tokens for m in by_day.get(d, [])),
                 completion_tokens=sum(m.completion_tokens for m in by_day.get(d, [])),
                 cost_usd=round(sum(m.cost_usd for m in by_day.get(d, [])), 6))
        for d in sorted(set(by_day) | set(answers))
    ]
    return UsageOut(
        tenant_id=owner.tenant_id, start=start, end=end, credit_balance=cfg["credit_balance"],
        credit_granted=cfg["credit_granted"], answers=sum(d.answers for d in out_days),
        prompt_tokens=sum(d.prompt_tokens for d in out_days),
        completion_tokens=sum(d.completion_tokens for d in out_days),
        cost_usd=round(sum(d.cost_usd for d in out_days), 6), days=out_days,
    )
