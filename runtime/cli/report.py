"""``chat-engine report``: a tenant's figures for the last N days (the same as
``GET /v1/analytics`` and ``/v1/analytics/unanswered``) as tables, and the daily breakdown as a
PNG chart.

Reads Postgres directly (CHAT_ENGINE_DATABASE_URL, or the embedded one in the data dir, like
``ingest``). The unanswered questions are clustered with the embedder ``ingest`` uses
(:mod:`runtime.cli.embedder`); ``--no-clusters`` skips them (no model is loaded).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from runtime.cli.console import console, fail
from runtime.cli.embedder import EMBEDDER_CHOICES, cli_embedder
from runtime.config import Settings, load_settings
from runtime.errors import ChatEngineError

CHANNELS = ("widget", "whatsapp", "telegram", "email", "sms", "slack")


async def _gather(settings: Settings, dsn: str, tenant_id: UUID, days: int, channel: str | None,
                  embedder: Any) -> dict[str, Any]:
    """The tenant's name, analytics and (with an embedder) unanswered clusters. Raises
    TenantNotFound."""
    from runtime.analytics.figures import compute_analytics, range_bounds
    from runtime.analytics.unanswered import unanswered_clusters
    from runtime.bot_config import BotConfig
    from runtime.db import bot_configs
    from runtime.db.pool import create_pool
    from runtime.db.tenants import get_tenant

    end = datetime.now(UTC).date()
    start = end - timedelta(days=days - 1)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            tenant = await get_tenant(conn, tenant_id)
            analytics = await compute_analytics(conn, tenant_id, start, end, channel)
            clusters = []
            if embedder is not None:
                cfg = BotConfig.model_validate((await bot_configs.get_bot_config(conn, tenant_id))["config"])
                lo, hi = range_bounds(start, end)
                clusters = await unanswered_clusters(
                    conn, embedder, tenant_id, lo, hi, channel,
                    min_similarity=cfg.escalation.min_similarity,
                    distance=settings.analytics_cluster_distance,
                    max_questions=settings.analytics_max_questions, max_clusters=10)
    finally:
        await pool.close()
    return {"name": tenant["name"], "analytics": analytics, "clusters": clusters}


def _summary_table(analytics: Any) -> Table:
    from runtime.analytics.figures import format_rate, format_seconds

    cols = [analytics.totals, *analytics.channels]
    table = Table(title=f"{analytics.start} to {analytics.end} ({analytics.timezone})")
    table.add_column("")
    for c in cols:
        table.add_column(c.channel or "total", justify="right")
    rows: list[tuple[str, Any]] = [
        ("conversations", lambda f: f.conversations),
        ("handled fully by AI", lambda f: f.handled_by_ai),
        ("escalated", lambda f: f.escalated),
        ("handoff rate", lambda f: format_rate(f.handoff_rate)),
        ("resolved by a human", lambda f: f.resolved_by_human),
        ("abandoned", lambda f: f.abandoned),
        ("leads captured", lambda f: f.leads),
        ("AI first response p50 / p90",
         lambda f: f"{format_seconds(f.ai_first_response.p50_s)} / "
                   f"{format_seconds(f.ai_first_response.p90_s)}"),
        ("human first response p50 / p90",
         lambda f: f"{format_seconds(f.human_first_response.p50_s)} / "
                   f"{format_seconds(f.human_first_response.p90_s)}"),
        ("funnel: visitors", lambda f: f.funnel.visitors),
        ("funnel: chatted", lambda f: f.funnel.chatted),
        ("funnel: email captured", lambda f: f.funnel.email_captured),
        ("funnel: leads", lambda f: f.funnel.leads),
        ("CSAT average (answers)",
         lambda f: "-" if f.csat.average is None else f"{f.csat.average:.2f} ({f.csat.responses})"),
        ("CSAT 1/2/3/4/5", lambda f: "/".join(str(f.csat.distribution[str(k)]) for k in range(1, 6))),
    ]
    for label, get in rows:
        table.add_row(label, *(str(get(c)) for c in cols))
    return table


def _daily_table(analytics: Any) -> Table:
    table = Table(title="per day")
    for name in ("day", "conversations", "by AI", "by a human", "other", "abandoned", "escalated", "leads"):
        table.add_column(name, justify="left" if name == "day" else "right")
    for d in analytics.daily:
        table.add_row(d.day.strftime("%a %Y-%m-%d"), str(d.conversations), str(d.handled_by_ai),
                      str(d.resolved_by_human), str(d.other), str(d.abandoned), str(d.escalated),
                      str(d.leads))
    return table


def _clusters_table(clusters: list[Any]) -> Table:
    table = Table(title="top unanswered questions")
    table.add_column("times", justify="right")
    table.add_column("question")
    table.add_column("also asked as")
    for c in clusters:
        others = [e for e in c.examples if e != c.question][:3]
        table.add_row(str(c.count), c.question, "; ".join(others))
    return table


def report(
    tenant: Annotated[str, typer.Option(help="tenant id (uuid)")],
    days: Annotated[int, typer.Option(help="the last N days (UTC), today included", min=1, max=366)] = 7,
    out: Annotated[Path, typer.Option(help="where to write the PNG chart of the daily breakdown",
                                      dir_okay=False)] = Path("report.png"),
    channel: Annotated[str | None, typer.Option(help="one channel type only: " + ", ".join(CHANNELS))] = None,
    clusters: Annotated[bool, typer.Option(
        help="cluster the unanswered questions (loads the embedder)")] = True,
    embedder: Annotated[str, typer.Option(
        help="auto | serve | local: where the unanswered questions are embedded")] = "auto",
) -> None:
    """Print a tenant's analytics for the last N days (per channel, per day, top unanswered
    questions) and write the daily breakdown as a PNG chart."""
    from runtime.analytics.chart import write_daily_chart
    from runtime.db.migrate import upgrade
    from runtime.services import running_services

    try:
        tenant_id = UUID(tenant)
    except ValueError:
        fail(f"--tenant: {tenant!r} is not a tenant id (uuid)")
    if channel is not None and channel not in CHANNELS:
        fail(f"--channel must be one of {', '.join(CHANNELS)}")
    if embedder not in EMBEDDER_CHOICES:
        fail("--embedder must be auto, serve or local")
    try:
        settings = load_settings()
        with running_services(settings, redis=False) as services:
            upgrade(services.database_url)
            handle = cli_embedder(settings, embedder)[0] if clusters else None
            result = asyncio.run(_gather(settings, services.database_url, tenant_id, days, channel, handle))
    except ChatEngineError as exc:
        fail(exc.message)
    analytics = result["analytics"]
    console.print(f"[bold]{result['name']}[/bold]" + (f" ({channel})" if channel else ""))
    console.print(_summary_table(analytics))
    console.print(_daily_table(analytics))
    if clusters:
        if result["clusters"]:
            console.print(_clusters_table(result["clusters"]))
        else:
            console.print("no unanswered questions")
    try:
        path = write_daily_chart(analytics, out,
                                 title=f"{result['name']}: {analytics.start} to {analytics.end}")
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc}")
    console.print(f"chart: {path}")
