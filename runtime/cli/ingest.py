"""``chat-engine ingest``: ingest a website, PDFs or text files into a tenant's knowledge base
from the command line, with a progress bar.

The job runs in this process (it is recorded in ``kb_jobs`` like an API job). Embeddings come from
the running service's ``Embedder`` deployment when ``--embedder serve`` (or ``auto`` and a Ray
cluster is reachable at CHAT_ENGINE_RAY_ADDRESS), else from the model loaded here (``local``):
:mod:`runtime.cli.embedder`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.cli.console import console, fail
from runtime.cli.embedder import EMBEDDER_CHOICES, cli_embedder
from runtime.config import Settings, load_settings
from runtime.errors import ChatEngineError

if TYPE_CHECKING:
    from ingestion.jobs import JobState

MAX_ERRORS_SHOWN = 50


def sources_finished(state: JobState) -> int:
    """Sources a job has finished with: stored, unchanged, failed, or skipped as a duplicate."""
    return (state.documents + state.unchanged + len(state.errors)
            + state.skipped.get("duplicate_content", 0)
            + state.skipped.get("redirect_duplicate", 0))


async def _ingest(
    settings: Settings, dsn: str, tenant_id: UUID, url: str | None, files: list[Path],
    max_pages: int | None, max_depth: int | None, force: bool, embedder: Any,
) -> dict[str, Any]:
    """Create the job row and run it here with a progress bar; returns ``{"job_id", **totals}``
    (:meth:`ingestion.jobs.JobState.as_dict`). Raises NotFound for an unknown tenant."""
    from ingestion.jobs import IngestSpec, SourceFile, run_job
    from runtime.db import kb_jobs
    from runtime.db.pool import create_pool
    from runtime.db.tenants import get_tenant

    sources = [SourceFile(name=p.name, data=p.read_bytes()) for p in files]
    spec = IngestSpec(url=url, max_pages=max_pages, max_depth=max_depth, force=force,
                      files=[{"name": s.name, "bytes": len(s.data)} for s in sources])
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await get_tenant(conn, tenant_id)
            job = await kb_jobs.create_job(conn, tenant_id, spec.model_dump(mode="json"))
        console.print(f"job {job['id']}")
        with Progress(
            TextColumn("[bold]ingesting[/bold]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
        ) as progress:
            bar = progress.add_task("ingest", total=max(1, len(sources) + (1 if url else 0)),
                                    info="")

            def on_progress(s: JobState) -> None:
                done = sources_finished(s)
                progress.update(bar, total=max(s.discovered, done, 1), completed=done,
                                info=f"{s.chunks} chunks, {len(s.errors)} errors")

            state = await run_job(pool, embedder, job["id"], tenant_id, spec, sources,
                                  settings=settings, on_progress=on_progress)
            done = sources_finished(state)
            progress.update(bar, total=max(1, done), completed=done)
        return {"job_id": str(job["id"]), **state.as_dict()}
    finally:
        await pool.close()


def _report(result: dict[str, Any]) -> None:
    console.print(
        f"{result['status']}: {result['documents']} documents ({result['unchanged']} unchanged), "
        f"{result['chunks']} chunks, {result['pages_fetched']} pages fetched, "
        f"{result['error_count']} errors"
    )
    for err in result["errors"][:MAX_ERRORS_SHOWN]:
        console.print(f"  [yellow]{err['source']}[/yellow]: {err['error']}")
    if result["error_count"] > MAX_ERRORS_SHOWN:
        console.print(f"  ... and {result['error_count'] - MAX_ERRORS_SHOWN} more")


def ingest(
    tenant: Annotated[str, typer.Option(help="tenant id (uuid)")],
    url: Annotated[str | None, typer.Option(help="website to crawl")] = None,
    pdf: Annotated[list[Path] | None, typer.Option(
        help="PDF (or .md/.txt/.html) file; repeat for several", exists=True, dir_okay=False,
    )] = None,
    max_pages: Annotated[int | None, typer.Option(help="crawl page limit")] = None,
    max_depth: Annotated[int | None, typer.Option(help="crawl depth limit")] = None,
    force: Annotated[bool, typer.Option(help="re-embed unchanged sources")] = False,
    embedder: Annotated[str, typer.Option(
        help="auto | serve | local: where embeddings are computed")] = "auto",
) -> None:
    """Ingest a website and/or files into a tenant's knowledge base (progress bar; exit code 1
    when the job failed, errors are listed per source)."""
    from runtime.db.migrate import upgrade
    from runtime.services import running_services

    files = list(pdf or [])
    if not url and not files:
        fail("give --url and/or --pdf")
    if embedder not in EMBEDDER_CHOICES:
        fail("--embedder must be auto, serve or local")
    try:
        tenant_id = UUID(tenant)
    except ValueError:
        fail(f"--tenant: {tenant!r} is not a tenant id (uuid)")
    try:
        settings = load_settings()
        with running_services(settings, redis=False) as services:
            upgrade(services.database_url)
            handle, where = cli_embedder(settings, embedder)
            console.print(f"embedding with the {where} model")
            result = asyncio.run(_ingest(
                settings, services.database_url, tenant_id, url, files, max_pages, max_depth,
                force, handle,
            ))
    except ChatEngineError as exc:
        fail(exc.message)
    _report(result)
    if result["status"] == "failed":
        raise typer.Exit(1)
