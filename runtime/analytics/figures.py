"""Analytics for a date range: the shapes the API returns and the CLI and the weekly email print,
and :func:`compute_analytics`, which fills them from :mod:`runtime.db.analytics` (definitions of
every figure there).

Days are calendar days in ``TIMEZONE`` (UTC: tenants have no time zone setting yet); a range is
``[start 00:00, end + 1 day 00:00)``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from runtime.db import Conn
from runtime.db import analytics as an_db
from runtime.errors import InvalidInput

TIMEZONE = "UTC"
ChannelType = Literal["widget", "whatsapp", "telegram", "email", "sms", "slack"]
CHANNEL_TYPES: tuple[str, ...] = ("widget", "whatsapp", "telegram", "email", "sms", "slack")
DAY_COUNTS = ("conversations", "handled_by_ai", "resolved_by_human", "abandoned", "other", "escalated")


class Percentiles(BaseModel):
    """A first-response time: how many samples, and their median and 90th percentile in seconds
    (null without samples)."""

    n: int
    p50_s: float | None
    p90_s: float | None


class Csat(BaseModel):
    """Customer satisfaction answers (1-5) of the range's conversations."""

    responses: int
    average: float | None = Field(description="null without answers")
    distribution: dict[str, int] = Field(description='answers per score, keys "1".."5"')


class Funnel(BaseModel):
    """Visitors (sessions opened) -> chatted (a customer message) -> email captured (the contact
    has an email, or a lead was captured) -> leads (sessions that produced a lead)."""

    visitors: int
    chatted: int
    email_captured: int
    leads: int


class ChannelFigures(BaseModel):
    """One channel type's figures (``channel`` null: all channels together)."""

    channel: str | None
    conversations: int = Field(description="sessions with a customer message, or handed to a human")
    handled_by_ai: int = Field(description="no human took part, not abandoned")
    escalated: int = Field(description="handed to a human (whatever came next)")
    resolved_by_human: int
    abandoned: int
    other: int = Field(description="a human took part, not (yet) resolved by one: waiting, with an "
                       "agent, or handed back to the AI")
    handoff_rate: float | None = Field(description="escalated / conversations; null without conversations")
    leads: int = Field(description="leads captured in the range")
    ai_first_response: Percentiles = Field(description="customer message -> the AI's first reply to it")
    human_first_response: Percentiles = Field(description="escalation -> the first agent reply")
    funnel: Funnel
    csat: Csat


class DayFigures(BaseModel):
    """One day: conversations split into the four outcomes (they add up to ``conversations``),
    escalations and leads."""

    day: date
    conversations: int
    handled_by_ai: int
    resolved_by_human: int
    abandoned: int
    other: int
    escalated: int
    leads: int


class Analytics(BaseModel):
    """GET /v1/analytics: totals, per channel type (those with sessions or leads), and every day
    of the range, oldest first."""

    tenant_id: UUID
    start: date
    end: date = Field(description="inclusive")
    timezone: str = Field(description="the days' time zone")
    channel: str | None = Field(description="the channel type filter, if any")
    totals: ChannelFigures
    channels: list[ChannelFigures]
    daily: list[DayFigures]


def parse_range(start: date | None, end: date | None, *, max_days: int, today: date | None = None,
                default_days: int = 7) -> tuple[date, date]:
    """The validated range ``(start, end)``, both inclusive: ``end`` defaults to today,
    ``start`` to ``default_days`` days ending at ``end``. Raises InvalidInput naming ``from``
    (after ``to``) or ``to`` (more than ``max_days`` days)."""
    end = end or today or datetime.now(UTC).date()
    if start is None:
        days = min(default_days, max_days)
        start = end - timedelta(days=days - 1) if end.toordinal() > days else date.min
    if start > end:
        raise InvalidInput(f"from: {start.isoformat()} is after to ({end.isoformat()}); give from <= to",
                           field="from", fields=[{"field": "from", "message": "must not be after `to`"}])
    span = (end - start).days + 1
    if span > max_days:
        raise InvalidInput(f"to: the range is {span} days; at most {max_days} days at once "
                           "(ask for several ranges)", field="to",
                           fields=[{"field": "to", "message": f"at most {max_days} days after `from`"}])
    return start, end


def range_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """``[start 00:00, end + 1 day 00:00)`` in UTC (the last representable day ends at
    ``datetime.max``)."""
    lo = datetime.combine(start, time.min, tzinfo=UTC)
    hi = (datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
          if end < date.max else datetime.max.replace(tzinfo=UTC))
    return lo, hi


def format_seconds(value: float | None) -> str:
    """``12.3 s``, ``4.5 min``, ``2.0 h``, or ``-`` for no value."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def format_rate(value: float | None) -> str:
    """``12.5%``, or ``-`` for no value."""
    return "-" if value is None else f"{value * 100:.1f}%"


def _pct(n: int, p50: Any, p90: Any) -> Percentiles:
    return Percentiles(n=int(n or 0), p50_s=None if p50 is None else round(float(p50), 3),
                       p90_s=None if p90 is None else round(float(p90), 3))


def _channel_figures(row: Any, channel: str | None, leads: int, ai: Any) -> ChannelFigures:
    conversations = int(row["conversations"]) if row else 0

    def get(key: str) -> int:
        return int(row[key]) if row else 0

    return ChannelFigures(
        channel=channel, conversations=conversations, handled_by_ai=get("handled_by_ai"),
        escalated=get("escalated"), resolved_by_human=get("resolved_by_human"),
        abandoned=get("abandoned"), other=get("other"),
        handoff_rate=round(get("escalated") / conversations, 4) if conversations else None,
        leads=leads,
        ai_first_response=_pct(ai["n"], ai["p50"], ai["p90"]) if ai else _pct(0, None, None),
        human_first_response=(_pct(row["human_frt_n"], row["human_frt_p50"], row["human_frt_p90"])
                              if row else _pct(0, None, None)),
        funnel=Funnel(visitors=get("visitors"), chatted=get("chatted"),
                      email_captured=get("email_captured"), leads=get("lead_sessions")),
        csat=Csat(responses=get("csat_n"),
                  average=None if not row or row["csat_avg"] is None else round(float(row["csat_avg"]), 3),
                  distribution={str(k): get(f"csat_{k}") for k in range(1, 6)}),
    )


async def compute_analytics(
    conn: Conn, tenant_id: UUID, start: date, end: date, channel: str | None = None,
) -> Analytics:
    """The tenant's figures for the days ``start``..``end`` (inclusive, validated by
    :func:`parse_range`), for one channel type or all (``channel`` None)."""
    lo, hi = range_bounds(start, end)
    figures = await an_db.conversation_figures(conn, tenant_id, lo, hi, TIMEZONE, channel)
    ai = await an_db.ai_first_response(conn, tenant_id, lo, hi, channel)
    leads = await an_db.leads_by_day(conn, tenant_id, lo, hi, TIMEZONE, channel)

    leads_by_channel: dict[str | None, int] = {}
    leads_by_day: dict[date, int] = {}
    for r in leads:
        leads_by_channel[r["channel"]] = leads_by_channel.get(r["channel"], 0) + int(r["leads"])
        leads_by_day[r["day"]] = leads_by_day.get(r["day"], 0) + int(r["leads"])
    ai_rows = {(None if r["is_total"] else r["channel"]): r for r in ai}
    total_row = next((r for r in figures if r["grouping"] == "total"), None)
    per_channel = {r["channel"]: r for r in figures if r["grouping"] == "channel"}
    names = sorted((set(per_channel) | {c for c in leads_by_channel if c is not None}),
                   key=lambda c: CHANNEL_TYPES.index(c) if c in CHANNEL_TYPES else len(CHANNEL_TYPES))
    channels = [_channel_figures(per_channel.get(c), c, leads_by_channel.get(c, 0), ai_rows.get(c))
                for c in names]
    totals = _channel_figures(total_row, None, sum(leads_by_channel.values()), ai_rows.get(None))

    by_day = {r["day"]: r for r in figures if r["grouping"] == "day"}
    days: list[DayFigures] = []
    for i in range((end - start).days + 1):
        d = start + timedelta(days=i)
        day_row = by_day.get(d)
        days.append(DayFigures(
            day=d, leads=leads_by_day.get(d, 0),
            **{k: int(day_row[k]) if day_row else 0 for k in DAY_COUNTS}))
    return Analytics(tenant_id=tenant_id, start=start, end=end, timezone=TIMEZONE, channel=channel,
                     totals=totals, channels=channels, daily=days)
