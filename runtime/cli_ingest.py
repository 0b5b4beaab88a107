"""``chat-engine ingest``: ingest a website, PDFs or text files into a tenant's knowledge base
from the command line, with a progress bar. Importing this module registers the command on
:data:`runtime.cli.app`.

The job runs in this process (it is recorded in ``kb_jobs`` like an API job). Embeddings come from
the running service's ``Embedder`` deployment when ``--embedder serve`` (or ``auto`` and a Ray
cluster is reachable at CHAT_ENGINE_RAY_ADDRESS), else from the model loaded here (``local``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.cli import APP_NAME, app, console
from runtime.config import Settings, load_settings
from runtime.errors import ChatEngineError, ConfigError


def _embedder(settings: Settings, choice: str) -> tuple[Any, str]:
    if choice in ("serve", "auto") and settings.ray_address:
        try:
            import ray
            from ray import serve

            ray.init(address=settings.ray_address, namespace=APP_NAME, logging_level=logging.ERROR,
                     log_to_driver=False)
            return serve.get_deployment_handle("Embedder", app_name=APP_NAME), "serve"
        except Exception as exc:  # noqa: BLE001
            if choice == "serve":
                raise ConfigError(
                    f"cannot reach the Embedder at CHAT_ENGINE_RAY_ADDRESS={settings.ray_address}"
                    f" ({exc})"
                ) from None
    elif choice == "serve":
        raise ConfigError("--embedder serve needs CHAT_ENGINE_RAY_ADDRESS (e.g. auto)")
    from ingestion.embed import LocalEmbedder

    return LocalEmbedder(settings), "local"


async def _ingest(
    settings: Settings, dsn: str, tenant_id: UUID, url: str | None, files: list[Path],
    max_pages: int | None, max_depth: int | None, force: bool, embedder: Any,
) -> dict[str, Any]:
    from ingestion.jobs import IngestSpec, JobState, SourceFile, run_job
    from runtime.db import kb as kb_db
    from runtime.db.pool import create_pool
    from runtime.db.tenants import get_tenant

    sources = [SourceFile(name=p.name, data=p.read_bytes()) for p in files]
    spec = IngestSpec(url=url, max_pages=max_pages, max_depth=max_depth, force=force,
                      files=[{"name": s.name, "bytes": len(s.data)} for s in sources])
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await get_tenant(conn, tenant_id)
            job = await kb_db.create_job(conn, tenant_id, spec.model_dump(mode="json"))
        console.print(f"job {job['id']}")
        with Progress(
            TextColumn("[bold]ingesting[/bold]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
        ) as progress:
            bar = progress.add_task("ingest", total=max(1, len(sources) + (1 if url else 0)),
                                    info="")

            def on_progress(s: JobState) -> None:
                done = (s.documents + s.unchanged + len(s.errors)
                        + s.skipped.get("duplicate_content", 0)
                        + s.skipped.get("redirect_duplicate", 0))
                progress.update(bar, total=max(s.discovered, done, 1), completed=done,
                                info=f"{s.chunks} chunks, {len(s.errors)} errors")

            state = await run_job(pool, embedder, job["id"], tenant_id, spec, sources,
                                  settings=settings, on_progress=on_progress)
            progress.update(bar, total=max(1, s_total(state)), completed=s_total(state))
        return {"job_id": str(job["id"]), **state.as_dict()}
    finally:
        await pool.close()


def s_total(state: Any) -> int:
    """Sources finished by a job state (for the final progress bar)."""
    return int(state.documents + state.unchanged + len(state.errors)
               + state.skipped.get("duplicate_content", 0)
               + state.skipped.get("redirect_duplicate", 0))


@app.command()
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
        console.print("[red]give --url and/or --pdf[/red]")
        raise typer.Exit(2)
    if embedder not in ("auto", "serve", "local"):
        console.print("[red]--embedder must be auto, serve or local[/red]")
        raise typer.Exit(2)
    try:
        tenant_id = UUID(tenant)
    except ValueError:
        console.print(f"[red]--tenant: {tenant!r} is not a tenant id (uuid)[/red]")
        raise typer.Exit(2) from None
    try:
        settings = load_settings()
        with running_services(settings, redis=False) as services:
            upgrade(services.database_url)
            handle, where = _embedder(settings, embedder)
            console.print(f"embedding with the {where} model")
            result = asyncio.run(_ingest(
                settings, services.database_url, tenant_id, url, files, max_pages, max_depth,
                force, handle,
            ))
    except ChatEngineError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(
        f"{result['status']}: {result['documents']} documents ({result['unchanged']} unchanged), "
        f"{result['chunks']} chunks, {result['pages_fetched']} pages fetched, "
        f"{result['error_count']} errors"
    )
    for err in result["errors"][:50]:
        console.print(f"  [yellow]{err['source']}[/yellow]: {err['error']}")
    if result["error_count"] > 50:
        console.print(f"  ... and {result['error_count'] - 50} more")
    status: Literal["completed", "failed"] = result["status"]
    if status == "failed":
        raise typer.Exit(1)
