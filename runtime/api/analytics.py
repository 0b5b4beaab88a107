"""The owner's numbers (issue 14): analytics for a date range, the unanswered questions clustered,
and "add to knowledge base" for a cluster.

Readers: owner, admin and viewer (agents work the inbox, not the numbers: 403). Adding to the
knowledge base: owner and admin. Ranges are calendar days in UTC (``from``..``to`` inclusive; at
most ``CHAT_ENGINE_ANALYTICS_MAX_DAYS``, 366); the figures' definitions are in
:mod:`runtime.db.analytics`.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, BeforeValidator, Field

from runtime.analytics.figures import (
    TIMEZONE,
    Analytics,
    ChannelType,
    compute_analytics,
    parse_range,
    range_bounds,
)
from runtime.analytics.unanswered import UnansweredCluster, unanswered_clusters
from runtime.api.contract import AUTHED, NonBlankText, error_responses
from runtime.api.deps import Ctx, User
from runtime.api.kb import embedder_handle
from runtime.bot_config import BotConfig
from runtime.db import analytics as an_db
from runtime.db import bot_configs
from runtime.db.tenants import Principal
from runtime.errors import Forbidden, NotFound

router = APIRouter(prefix="/v1/analytics", tags=["analytics"], responses=error_responses(*AUTHED, 404))

READERS = frozenset({"owner", "admin", "viewer"})
WRITERS = frozenset({"owner", "admin"})


async def analytics_reader(who: User) -> Principal:
    """An owner, admin or viewer of the tenant. Raises Forbidden for other roles (agents)."""
    if who.role not in READERS:
        raise Forbidden("the analytics are for the tenant's owner, admins and viewers")
    return who


async def analytics_writer(who: User) -> Principal:
    """An owner or admin (changes the knowledge base). Raises Forbidden for other roles."""
    if who.role not in WRITERS:
        raise Forbidden("adding to the knowledge base needs an owner's or admin's key")
    return who


_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso_day(value: object) -> object:
    """Days are ``YYYY-MM-DD`` only (pydantic alone would also take ``0`` as 1970-01-01)."""
    if isinstance(value, str) and not _ISO_DAY.fullmatch(value):
        raise ValueError("give a day as YYYY-MM-DD")
    return value


Reader = Annotated[Principal, Depends(analytics_reader)]
Writer = Annotated[Principal, Depends(analytics_writer)]
From = Annotated[date | None, BeforeValidator(iso_day), Query(alias="from",
                                    description="first day, YYYY-MM-DD (UTC); default: 6 days before `to`")]
To = Annotated[date | None, BeforeValidator(iso_day),
               Query(description="last day, inclusive, YYYY-MM-DD (UTC); default: today")]
Channel = Annotated[ChannelType | None, Query(description="one channel type only")]


@router.get("", response_model=Analytics)
async def get_analytics(ctx: Ctx, who: Reader, from_: From = None, to: To = None,
                        channel: Channel = None) -> Analytics:
    """Conversations handled fully by the AI, escalated, resolved by a human, abandoned; handoff
    rate; leads; first-response times (p50/p90) of the AI and of humans; the lead funnel; CSAT;
    per channel type, in total, and per day. 422 naming ``from`` (after ``to``) or ``to`` (range
    over the limit)."""
    start, end = parse_range(from_, to, max_days=ctx.settings.analytics_max_days)
    async with ctx.pool.acquire() as conn:
        return await compute_analytics(conn, who.tenant_id, start, end, channel)


class UnansweredOut(BaseModel):
    """GET /v1/analytics/unanswered: the range's unanswered questions in clusters."""

    start: date
    end: date
    timezone: str
    channel: str | None
    clusters: list[UnansweredCluster]


@router.get("/unanswered", response_model=UnansweredOut)
async def get_unanswered(
    ctx: Ctx, who: Reader, from_: From = None, to: To = None, channel: Channel = None,
    limit: Annotated[int, Query(ge=1, le=100, description="clusters, most asked first")] = 20,
) -> UnansweredOut:
    """The questions the bot could not answer (low-coverage escalations) or answered from weak
    sources only, clustered by meaning; each cluster has a canonical question, its count, example
    wordings and the ids that ``POST /v1/analytics/unanswered/add-to-kb`` marks answered.
    503 when no Embedder is deployed."""
    start, end = parse_range(from_, to, max_days=ctx.settings.analytics_max_days)
    lo, hi = range_bounds(start, end)
    embedder = embedder_handle()
    async with ctx.pool.acquire() as conn:
        cfg = BotConfig.model_validate((await bot_configs.get_bot_config(conn, who.tenant_id))["config"])
        clusters = await unanswered_clusters(
            conn, embedder, who.tenant_id, lo, hi, channel,
            min_similarity=cfg.escalation.min_similarity,
            distance=ctx.settings.analytics_cluster_distance,
            max_questions=ctx.settings.analytics_max_questions, max_clusters=limit)
    return UnansweredOut(start=start, end=end, timezone=TIMEZONE, channel=channel, clusters=clusters)


class AddToKbIn(BaseModel):
    """POST /v1/analytics/unanswered/add-to-kb body: the answer to a cluster's question."""

    question: NonBlankText = Field(max_length=1000, description="usually the cluster's canonical question")
    answer: NonBlankText = Field(max_length=20_000)
    escalation_ids: list[UUID] = Field(default_factory=list, max_length=1000,
                                       description="the cluster's escalation_ids: marked resolved_kb_entry")
    # Ids up to 2**53 - 1: a JSON number above it is not exact as a double (clients and schema
    # validators compare as floats).
    message_ids: list[Annotated[int, Field(ge=1, le=2**53 - 1)]] = Field(
        default_factory=list, max_length=1000,
        description="the cluster's message_ids (weak-answer turns): they leave the list")


class AddToKbOut(BaseModel):
    """The stored Q&A entry (searchable already) and what it answered."""

    document_id: UUID
    source: str
    question: str
    answer: str
    chunk_ids: list[int]
    escalations_resolved: int
    turns_resolved: int


@router.post("/unanswered/add-to-kb", response_model=AddToKbOut, status_code=201)
async def add_to_kb(body: AddToKbIn, ctx: Ctx, who: Writer) -> AddToKbOut:
    """Answer a cluster of unanswered questions: a knowledge-base Q&A entry (the same as
    ``POST /v1/kb/qa``: embedded and searchable on return, so the next customer asking it gets
    this answer with its source), and the cluster's escalations marked ``resolved_kb_entry``.
    404 when an id is not one of the tenant's escalations or customer messages (nothing is
    written then)."""
    from ingestion.qa import add_qa

    escalation_ids = list(dict.fromkeys(body.escalation_ids))
    message_ids = list(dict.fromkeys(body.message_ids))
    async with ctx.pool.acquire() as conn:
        bad_e, bad_m = await an_db.unknown_refs(conn, who.tenant_id, escalation_ids, message_ids)
    if bad_e or bad_m:
        what = [f"escalation {e}" for e in bad_e[:5]] + [f"message {m}" for m in bad_m[:5]]
        raise NotFound(f"not in this tenant: {', '.join(what)}; pass the ids of a cluster from "
                       "GET /v1/analytics/unanswered")
    entry = await add_qa(ctx.pool, embedder_handle(), who.tenant_id, body.question, body.answer)
    async with ctx.pool.acquire() as conn, conn.transaction():
        marked = await an_db.resolve_unanswered(conn, who.tenant_id, escalation_ids, message_ids, entry)
    return AddToKbOut(document_id=entry["document_id"], source=entry["source"], question=entry["question"],
                      answer=entry["answer"], chunk_ids=entry["chunk_ids"], escalations_resolved=marked,
                      turns_resolved=len(message_ids))
