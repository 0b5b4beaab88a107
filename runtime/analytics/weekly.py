"""The weekly report: last week's figures, as plain text, to the owner's email through the outbox.

The Timekeeper calls :func:`send_weekly_reports` every ``weekly_report_check_s``. The reported
week is the last full ISO week in UTC (Monday to Sunday), so a report goes out on the first check
after Monday 00:00 UTC. A tenant gets it when it existed before that week ended, has an active
email channel with credentials (the report is sent from it, like any email answer) and an owner
with an email address. The ``weekly_reports`` row (primary key tenant + week) is written in the
transaction that enqueues the email: once per week, across restarts and racing Timekeepers.

The Timekeeper has no embedder, so the email lists the most frequent unanswered wordings as they
were asked; the clustered list is on the dashboard and in ``chat-engine report``.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from runtime.analytics.figures import (
    Analytics,
    ChannelFigures,
    compute_analytics,
    format_rate,
    format_seconds,
    range_bounds,
)
from runtime.analytics.unanswered import weak_threshold
from runtime.bot_config import BotConfig
from runtime.db import analytics as an_db
from runtime.db import bot_configs
from runtime.db import outbox as outbox_db

log = logging.getLogger(__name__)

TOP_UNANSWERED = 5
REPORT_KIND = "weekly_report"


def report_week(now: datetime) -> tuple[date, date]:
    """(Monday, Sunday) of the last full ISO week before ``now`` (UTC)."""
    today = now.astimezone(UTC).date()
    monday = today - timedelta(days=today.weekday())
    return monday - timedelta(days=7), monday - timedelta(days=1)


def figure_lines(f: ChannelFigures) -> list[str]:
    """One channel's (or the total's) figures as text lines."""
    csat = (f"{f.csat.average:.2f} of 5 ({f.csat.responses} answers)" if f.csat.average is not None
            else "no answers")
    return [
        f"Conversations: {f.conversations}",
        f"  handled fully by the AI: {f.handled_by_ai}",
        f"  escalated to a human: {f.escalated} (handoff rate {format_rate(f.handoff_rate)})",
        f"  resolved by a human: {f.resolved_by_human}",
        f"  abandoned: {f.abandoned}",
        f"Leads captured: {f.leads}",
        f"First response, AI: p50 {format_seconds(f.ai_first_response.p50_s)}, "
        f"p90 {format_seconds(f.ai_first_response.p90_s)}",
        f"First response, humans: p50 {format_seconds(f.human_first_response.p50_s)}, "
        f"p90 {format_seconds(f.human_first_response.p90_s)}",
        f"Funnel: {f.funnel.visitors} visitors -> {f.funnel.chatted} chatted -> "
        f"{f.funnel.email_captured} gave an email -> {f.funnel.leads} leads",
        f"Customer satisfaction: {csat}",
    ]


def render_report(business: str, analytics: Analytics, unanswered: list[tuple[str, int]]) -> str:
    """The email's text: totals, per channel, per day, and the most frequent unanswered questions
    (``(wording, times)``)."""
    lines = [f"Weekly report for {business}: {analytics.start:%a %d %b %Y} to {analytics.end:%a %d %b %Y} "
             f"({analytics.timezone})", "", *figure_lines(analytics.totals)]
    for ch in analytics.channels:
        lines += ["", f"{ch.channel}:", *("  " + x for x in figure_lines(ch)[:6])]
    lines += ["", "Per day (conversations / by AI / escalated / leads):"]
    lines += [f"  {d.day:%a %d %b}: {d.conversations} / {d.handled_by_ai} / {d.escalated} / {d.leads}"
              for d in analytics.daily]
    if unanswered:
        lines += ["", "Questions the bot could not answer (answer them once in the dashboard's "
                  "\"Add to knowledge base\"):"]
        lines += [f"  {times}x  {q}" for q, times in unanswered]
    return "\n".join(lines) + "\n"


async def top_unanswered(conn: Any, tenant_id: UUID, start: date, end: date, min_similarity: float,
                         limit: int = TOP_UNANSWERED) -> list[tuple[str, int]]:
    """The most frequent unanswered wordings of the week (case and spacing aside), without
    clustering: ``[(wording, times)]``."""
    lo, hi = range_bounds(start, end)
    rows = await an_db.unanswered_questions(conn, tenant_id, lo, hi, None, weak_threshold(min_similarity),
                                            1000)
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for r in rows:
        key = " ".join(r["question"].lower().split())
        counts[key] += 1
        first.setdefault(key, r["question"])
    return [(first[k], n) for k, n in counts.most_common(limit)]


async def send_weekly_reports(pool: Any, now: datetime | None = None, *,
                              tenant_id: UUID | None = None) -> list[UUID]:
    """Enqueue last week's report for every tenant due one (see the module), or for ``tenant_id``
    only if it is due; returns the ids of the tenants it was sent to. Each tenant's report is its
    own transaction; one tenant's failure is logged and the others go on (the next check retries
    it)."""
    start, end = report_week(now or datetime.now(UTC))
    _, period_end = range_bounds(start, end)
    async with pool.acquire() as conn:
        due = await an_db.tenants_due_weekly_report(conn, start, period_end, tenant_id)
    sent: list[UUID] = []
    for t in due:
        try:
            async with pool.acquire() as conn:
                row = await bot_configs.get_bot_config(conn, t["tenant_id"])
                cfg = BotConfig.model_validate(row["config"])
                analytics = await compute_analytics(conn, t["tenant_id"], start, end)
                unanswered = await top_unanswered(conn, t["tenant_id"], start, end,
                                                  cfg.escalation.min_similarity)
                text = render_report(t["name"], analytics, unanswered)
                subject = f"Weekly report {start:%d %b} - {end:%d %b %Y}: {t['name']}"
                async with conn.transaction():
                    if not await an_db.claim_weekly_report(conn, t["tenant_id"], start, t["channel_id"],
                                                           t["recipient"]):
                        continue
                    outbox_id = await outbox_db.enqueue(
                        conn, t["tenant_id"], t["channel_id"], None, None, t["recipient"],
                        {"text": text, "sender": "system", "kind": REPORT_KIND,
                         "thread": {"subject": subject, "new_thread": True},
                         "period_start": start.isoformat()})
                    await an_db.set_weekly_report_outbox(conn, t["tenant_id"], start, outbox_id)
            sent.append(t["tenant_id"])
        except Exception:  # noqa: BLE001 - the next check tries this tenant again
            log.exception("weekly report for tenant %s failed", t["tenant_id"])
    return sent
