"""Ingestion jobs: one job ingests a website crawl, uploaded files and/or pasted text.

:func:`run_job` does the work and keeps the ``kb_jobs`` row current (status pending -> running ->
completed | failed, counts, a per-source error list). Each source is independent: a 404, an
off-site redirect, a corrupt or encrypted PDF... is recorded as ``{"source", "error"}`` and the
job goes on; each document is swapped in one transaction, so nothing half-written stays behind.
A job is ``failed`` only when it could not run at all or every source failed.

:func:`submit_job` runs :func:`run_job` as a Ray task (never in a request handler); the CLI calls
:func:`run_job` in-process.

The job's data lives in :mod:`ingestion.job_types` and the runner that does the work in
:mod:`ingestion.job_runner`; their public names are importable from here too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg

from ingestion.job_runner import PROGRESS_WRITE_INTERVAL_S, JobRunner
from ingestion.job_types import IngestSpec, JobState, SourceFile, crawl_limits
from runtime.config import Settings, get_settings
from runtime.db import kb_jobs as kb_db

__all__ = [
    "PROGRESS_WRITE_INTERVAL_S", "IngestSpec", "JobRunner", "JobState", "SourceFile",
    "crawl_limits", "run_job", "submit_job",
]


async def run_job(
    pool: asyncpg.Pool, embedder: Any, job_id: UUID, tenant_id: UUID, spec: IngestSpec,
    files: list[SourceFile] | None = None, *, settings: Settings | None = None,
    on_progress: Callable[[JobState], None] | None = None,
) -> JobState:
    """Run job ``job_id`` (a ``pending`` kb_jobs row) to the end and record its outcome.

    embedder: the Embedder handle or a local embedder. on_progress: called with the running
    totals after every source (the CLI's progress bar). Never raises for a bad source; an
    unexpected failure of the job itself marks it ``failed`` with the reason and is re-raised.
    """
    runner = JobRunner(pool, embedder, job_id, tenant_id, spec, settings or get_settings(),
                       on_progress)
    try:
        state = await runner.run(files or [])
    except BaseException as exc:
        runner.state.status = "failed"
        runner.state.message = f"job failed: {type(exc).__name__}: {exc}"
        async with pool.acquire() as conn:
            await kb_db.update_job_progress(
                conn, job_id, documents=runner.state.documents,
                unchanged=runner.state.unchanged, chunks=runner.state.chunks,
                pages_fetched=runner.state.pages_fetched, errors=runner.state.errors,
                skipped=dict(runner.state.skipped),
            )
            await kb_db.finish_job(conn, job_id, "failed", runner.state.message)
        raise
    await runner.progress(force=True)
    async with pool.acquire() as conn:
        await kb_db.finish_job(conn, job_id, state.status, state.message)
    return state


# ---------------------------------------------------------------- Ray
def _resolve_embedder(embedder: Any) -> Any:
    if embedder is not None:
        return embedder
    from ray import serve

    return serve.get_deployment_handle("Embedder", app_name=os.environ.get(
        "CHAT_ENGINE_SERVE_APP", "chat"))


def _task_main(job_id: str, tenant_id: str, spec: dict[str, Any], files: list[SourceFile],
               embedder: Any) -> dict[str, Any]:
    from runtime.db.pool import create_pool

    async def main() -> dict[str, Any]:
        settings = get_settings()
        if settings.database_url is None:
            raise RuntimeError("CHAT_ENGINE_DATABASE_URL is not set in the Ray worker")
        pool = await create_pool(str(settings.database_url), min_size=1, max_size=2,
                                 statement_cache_size=settings.db_statement_cache_size)
        try:
            state = await run_job(pool, _resolve_embedder(embedder), UUID(job_id),
                                  UUID(tenant_id), IngestSpec.model_validate(spec), files,
                                  settings=settings)
            return state.as_dict()
        finally:
            await pool.close()

    return asyncio.run(main())


_remote_task: Any = None


def submit_job(job_id: UUID, tenant_id: UUID, spec: IngestSpec, files: list[SourceFile],
               embedder: Any = None) -> Any:
    """Start :func:`run_job` as a Ray task (num_cpus=0: it waits on the network, the database
    and the Embedder, which has its own CPUs). Returns the task's ObjectRef (its value is the
    job summary; a worker crash surfaces as an error when awaited)."""
    import ray

    global _remote_task
    if _remote_task is None:
        _remote_task = ray.remote(num_cpus=0, max_retries=0)(_task_main)
    return _remote_task.options(name=f"kb-ingest-{job_id}").remote(
        str(job_id), str(tenant_id), spec.model_dump(mode="json"), files, embedder,
    )
