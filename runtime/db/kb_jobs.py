"""Knowledge-base ingestion jobs (plain SQL on ``kb_jobs``): create, progress, heartbeat, finish.

A job row is written by its runner (``ingestion.jobs``) and read by the API; the Timekeeper fails
jobs whose heartbeat stopped (:func:`fail_stale_jobs`). Every query a tenant can reach filters on
``tenant_id``; another tenant's job is NotFound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import NotFound, RateLimited

JOB_COLUMNS = (
    "id, tenant_id, status, spec, documents, unchanged, chunks, pages_fetched, error_count, "
    "errors, skipped, message, created_at, started_at, finished_at, heartbeat_at"
)
MAX_STORED_ERRORS = 1000


async def create_job(
    conn: Conn, tenant_id: UUID, spec: dict[str, Any], *, max_active: int | None = None,
) -> asyncpg.Record:
    """Insert a ``pending`` job; returns its row.

    max_active: refuse when the tenant already has this many ``pending``/``running`` jobs
    (counted under a per-tenant transaction lock, so two racing requests cannot both pass).
    Raises RateLimited (429, retry in 30 s) then; a job whose worker died stops counting once
    the heartbeat sweep fails it.
    """
    async with conn.transaction():
        if max_active is not None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('kb_jobs:' || $1::text, 0))",
                               str(tenant_id))
            active = await conn.fetchval(
                "SELECT count(*) FROM kb_jobs WHERE tenant_id = $1 AND status IN ('pending', 'running')",
                tenant_id)
            if active >= max_active:
                raise RateLimited(
                    f"{active} ingestion jobs of this tenant are still running (at most {max_active} "
                    "at once, CHAT_ENGINE_MAX_INGESTION_JOBS_PER_TENANT): wait for one to finish "
                    "(GET /v1/kb/jobs) and try again", retry_after_s=30)
        row = await conn.fetchrow(
            f"INSERT INTO kb_jobs (tenant_id, spec) VALUES ($1, $2) RETURNING {JOB_COLUMNS}",
            tenant_id, spec,
        )
    assert row is not None
    return row


async def get_job(conn: Conn, tenant_id: UUID, job_id: UUID) -> asyncpg.Record:
    """The job row. Raises NotFound (also for another tenant's job)."""
    row = await conn.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM kb_jobs WHERE id = $1 AND tenant_id = $2", job_id, tenant_id
    )
    if row is None:
        raise NotFound(f"no ingestion job {job_id} in this tenant")
    return row


async def list_jobs(
    conn: Conn, tenant_id: UUID, limit: int = 50
) -> list[asyncpg.Record]:
    """The tenant's most recent jobs, newest first."""
    return await conn.fetch(
        f"SELECT {JOB_COLUMNS} FROM kb_jobs WHERE tenant_id = $1 "
        "ORDER BY created_at DESC LIMIT $2",
        tenant_id, limit,
    )


async def start_job(conn: Conn, job_id: UUID) -> None:
    """pending -> running (sets started_at)."""
    await conn.execute(
        "UPDATE kb_jobs SET status = 'running', started_at = now(), heartbeat_at = now() "
        "WHERE id = $1",
        job_id,
    )


async def heartbeat_job(conn: Conn, job_id: UUID) -> None:
    """Mark a running job alive (``heartbeat_at = now()``); see :func:`fail_stale_jobs`."""
    await conn.execute(
        "UPDATE kb_jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running'", job_id
    )


async def fail_stale_jobs(conn: Conn, stale_s: float) -> list[asyncpg.Record]:
    """Fail ``pending``/``running`` jobs with no heartbeat for ``stale_s`` seconds (their worker
    died: a cluster restart, a killed Ray worker). Returns their (id, tenant_id) rows."""
    return await conn.fetch(
        """UPDATE kb_jobs SET status = 'failed', finished_at = now(),
                  message = 'interrupted: the ingestion worker stopped (no progress for '
                            || round($1::numeric) || ' s, e.g. a restart); submit the job '
                            || 'again: documents already stored and unchanged are skipped'
           WHERE status IN ('pending', 'running')
             AND heartbeat_at < now() - make_interval(secs => $1)
           RETURNING id, tenant_id""",
        float(stale_s),
    )


async def update_job_progress(
    conn: Conn, job_id: UUID, *, documents: int, unchanged: int, chunks: int,
    pages_fetched: int, errors: Sequence[dict[str, Any]], skipped: dict[str, int],
) -> None:
    """Write the job's running totals (the runner keeps them; at most MAX_STORED_ERRORS
    error entries are stored, ``error_count`` is always the true count)."""
    await conn.execute(
        """UPDATE kb_jobs SET documents = $2, unchanged = $3, chunks = $4, pages_fetched = $5,
                  error_count = $6, errors = $7, skipped = $8, heartbeat_at = now()
           WHERE id = $1""",
        job_id, documents, unchanged, chunks, pages_fetched, len(errors),
        list(errors[:MAX_STORED_ERRORS]), skipped,
    )


async def finish_job(
    conn: Conn, job_id: UUID, status: str, message: str | None = None
) -> None:
    """running -> completed | failed (sets finished_at and the failure message)."""
    await conn.execute(
        "UPDATE kb_jobs SET status = $2, message = $3, finished_at = now() WHERE id = $1",
        job_id, status, message,
    )


async def fail_unfinished_job(conn: Conn, job_id: UUID, message: str) -> None:
    """pending | running -> failed with ``message`` (a job whose worker died); a finished job is
    left as it is."""
    await conn.execute(
        """UPDATE kb_jobs SET status = 'failed', message = $2, finished_at = now()
           WHERE id = $1 AND status IN ('pending', 'running')""",
        job_id, message[:2000],
    )
