"""AI usage rows (seed 002 AIUsage): one per generated answer, with tokens, backend, model and
cost; per-day totals for the owner."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from runtime.db import Conn


async def record_usage(
    conn: Conn, tenant_id: UUID, session_id: UUID | None, message_id: int | None, backend: str,
    model: str | None, prompt_tokens: int, completion_tokens: int, cost_micros: int,
) -> None:
    """Token usage of one generation. cost_micros: millionths of a US dollar (>= 0)."""
    await conn.execute(
        """INSERT INTO usage (tenant_id, session_id, message_id, backend, model, prompt_tokens,
                              completion_tokens, cost_micros)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        tenant_id, session_id, message_id, backend, model, prompt_tokens, completion_tokens,
        cost_micros,
    )


async def daily_usage(conn: Conn, tenant_id: UUID, start: date, end: date) -> list[dict[str, Any]]:
    """Per UTC day in [start, end] (days without usage left out), oldest first:
    ``{"day": date, "backend": str, "model": str | None, "generations": int,
    "prompt_tokens": int, "completion_tokens": int, "cost_micros": int}``, one row per
    (day, backend, model)."""
    rows = await conn.fetch(
        """SELECT (created_at AT TIME ZONE 'UTC')::date AS day, backend, model,
                  count(*) AS generations, sum(prompt_tokens) AS prompt_tokens,
                  sum(completion_tokens) AS completion_tokens, sum(cost_micros) AS cost_micros
           FROM usage
           WHERE tenant_id = $1 AND created_at >= ($2::date AT TIME ZONE 'UTC')
             AND created_at < (($3::date + 1) AT TIME ZONE 'UTC')
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        tenant_id, start, end,
    )
    return [{k: (int(v) if k in ("generations", "prompt_tokens", "completion_tokens", "cost_micros")
                 else v) for k, v in dict(r).items()} for r in rows]


async def answers_per_day(conn: Conn, tenant_id: UUID, start: date, end: date) -> dict[date, int]:
    """AI answers (the bot's answers from the knowledge base, one credit each) per UTC day in
    [start, end]; days without any left out."""
    rows = await conn.fetch(
        """SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n
           FROM messages
           WHERE tenant_id = $1 AND sender = 'ai' AND intent = 'answer'
             AND created_at >= ($2::date AT TIME ZONE 'UTC')
             AND created_at < (($3::date + 1) AT TIME ZONE 'UTC')
           GROUP BY 1""",
        tenant_id, start, end,
    )
    return {r["day"]: int(r["n"]) for r in rows}
