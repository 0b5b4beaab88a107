"""The runner of one ingestion job: :class:`JobRunner` ingests its sources and keeps the totals.

Each source (an uploaded file, the pasted text, each crawled page) is independent: its failure
is recorded as ``{"source", "error"}`` (see :mod:`ingestion.jobs`) and the job goes on; a job
whose every source failed ends ``failed``. Files are read by type (PDF, HTML, Markdown,
plain text), crawled pages by content type. Progress goes to the ``kb_jobs`` row at most every
``PROGRESS_WRITE_INTERVAL_S`` seconds, and a heartbeat every ``kb_job_heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import Any
from uuid import UUID

import asyncpg

from ingestion.chunking import Chunker, Section, markdown_sections, pdf_sections, text_sections
from ingestion.crawl import Crawler, CrawlFailure, FetchedPage
from ingestion.egress import EgressPolicy, policy_from_settings
from ingestion.extract import extract_html
from ingestion.job_types import IngestSpec, JobState, SourceFile, crawl_limits
from ingestion.pdf import read_pdf
from ingestion.store import content_hash, store_document
from runtime.config import Settings
from runtime.db import kb_jobs as kb_db
from runtime.errors import IngestionError

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.5


class JobRunner:
    """Runs job ``job_id`` of ``tenant_id`` once (see the module docstring); :meth:`run` marks
    the row running and returns the final :class:`JobState`, whose ``status`` is ``completed``
    or ``failed``. Finishing the row is the caller's (:func:`ingestion.jobs.run_job`)."""

    def __init__(
        self, pool: asyncpg.Pool, embedder: Any, job_id: UUID, tenant_id: UUID,
        spec: IngestSpec, settings: Settings,
        on_progress: Callable[[JobState], None] | None, egress: EgressPolicy | None = None,
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.spec = spec
        self.settings = settings
        self.on_progress = on_progress
        self.state = JobState()
        self._chunker: Chunker | None = None
        self._last_write = 0.0
        self._texts_seen: set[str] = set()
        self._base = 0
        self._sem = asyncio.Semaphore(max(1, settings.crawl_concurrency))
        self.egress = egress
        self.started_at = time.monotonic()

    async def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = await asyncio.to_thread(Chunker)
        return self._chunker

    # ---------------------------------------------------------------- progress
    async def progress(self, force: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(self.state)
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_WRITE_INTERVAL_S:
            return
        self._last_write = now
        s = self.state
        async with self.pool.acquire() as conn:
            await kb_db.update_job_progress(
                conn, self.job_id, documents=s.documents, unchanged=s.unchanged, chunks=s.chunks,
                pages_fetched=s.pages_fetched, errors=s.errors, skipped=dict(s.skipped),
            )

    def error(self, source: str, message: str, status: int | None = None) -> None:
        entry: dict[str, Any] = {"source": source, "error": message}
        if status is not None:
            entry["status"] = status
        self.state.errors.append(entry)

    # ---------------------------------------------------------------- one document
    async def store(
        self, *, source: str, kind: str, title: str, sections: list[Section], size: int,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        chunker = await self.chunker()
        chunks = await asyncio.to_thread(chunker.chunk_sections, sections, title)
        body = "\n".join(c.text for c in chunks)
        digest = content_hash(title, body)
        if digest in self._texts_seen:  # same extracted text as another source of this job
            self.state.skipped["duplicate_content"] += 1
            return
        self._texts_seen.add(digest)
        result = await store_document(
            self.pool, self.embedder, self.tenant_id, source=source, kind=kind, title=title,
            chunks=chunks, digest=digest, size_bytes=size, metadata=metadata,
            job_id=self.job_id, force=self.spec.force,
        )
        if result.unchanged:
            self.state.unchanged += 1
        else:
            self.state.documents += 1
            self.state.chunks += len(result.chunk_ids)

    async def guarded(self, source: str, work: Any) -> None:
        """Run one source's coroutine; its failure becomes a per-source error."""
        try:
            async with self._sem:
                await work
        except IngestionError as exc:
            self.error(source, exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded per source; the job goes on
            log.exception("ingesting %s failed", source)
            self.error(source, f"unexpected error ({type(exc).__name__}: {exc})")
        await self.progress()

    async def ingest_pdf(self, name: str, data: bytes, metadata: dict[str, Any]) -> None:
        pdf = await asyncio.to_thread(read_pdf, data, PurePath(name).name)
        title = pdf.title or PurePath(name).stem
        sections = await asyncio.to_thread(pdf_sections, pdf.pages)
        await self.store(source=name, kind="pdf", title=title, sections=sections,
                         size=len(data), metadata={**metadata, "pages": len(pdf.pages)})

    async def ingest_html(self, source: str, html: bytes | str, size: int,
                          metadata: dict[str, Any]) -> None:
        page = await asyncio.to_thread(extract_html, html, source)
        sections = await asyncio.to_thread(markdown_sections, page.markdown, page.title)
        await self.store(source=source, kind="web", title=page.title or source,
                         sections=sections, size=size, metadata=metadata)

    async def ingest_text(self, source: str, text: str, title: str, markdown: bool,
                          metadata: dict[str, Any]) -> None:
        sections = markdown_sections(text, title) if markdown else text_sections(text)
        if not sections:
            raise IngestionError("the text is empty")
        await self.store(source=source, kind="markdown" if markdown else "text", title=title,
                         sections=sections, size=len(text.encode()), metadata=metadata)

    # ---------------------------------------------------------------- sources
    async def ingest_file(self, f: SourceFile) -> None:
        suffix = PurePath(f.name).suffix.lower()
        ctype = (f.content_type or "").split(";")[0].strip().lower()
        meta = {"file": f.name, "content_type": ctype or None}
        if suffix == ".pdf" or ctype == "application/pdf" or f.data[:5] == b"%PDF-":
            await self.ingest_pdf(f.name, f.data, meta)
        elif suffix in (".html", ".htm") or ctype in ("text/html", "application/xhtml+xml"):
            await self.ingest_html(f.name, f.data, len(f.data), meta)
        elif suffix in (".md", ".markdown", ".txt", ".text") or ctype.startswith("text/"):
            try:
                text = f.data.decode("utf-8")
            except UnicodeDecodeError:
                raise IngestionError(f"{f.name}: not UTF-8 text") from None
            await self.ingest_text(f.name, text, PurePath(f.name).stem,
                                   suffix in (".md", ".markdown") or "markdown" in ctype, meta)
        else:
            raise IngestionError(
                f"{f.name}: unsupported file type ({ctype or suffix or 'unknown'}); "
                "upload PDF, HTML, Markdown or plain text"
            )

    async def handle_page(self, page: FetchedPage) -> None:
        meta = {"url": page.final_url, "depth": page.depth, "content_type": page.content_type}
        source = page.final_url
        if page.is_html:
            await self.ingest_html(source, page.body, len(page.body), meta)
        elif page.content_type == "application/pdf":
            await self.ingest_pdf(source, page.body, meta)
        else:
            title = PurePath(source).name or source
            await self.ingest_text(source, page.text(), title,
                                   "markdown" in page.content_type, meta)

    async def crawl(self, url: str) -> None:
        s = self.settings
        max_pages, max_depth = crawl_limits(self.spec, s)
        crawler = Crawler(
            url, max_pages=max_pages, max_depth=max_depth,
            concurrency=s.crawl_concurrency, delay_s=s.crawl_delay_s,
            max_bytes=s.crawl_max_page_bytes, timeout_s=s.crawl_timeout_s,
            user_agent=s.crawl_user_agent,
            egress=self.egress or policy_from_settings(s),
            page_deadline_s=s.crawl_page_deadline_s, job_deadline_s=s.crawl_job_deadline_s,
            started_at=self.started_at,
        )
        crawler.skipped = self.state.skipped  # one counter for the crawler's and our skips
        tasks: set[asyncio.Task[None]] = set()
        async for item in crawler.run():
            self.state.discovered = self._base + crawler.discovered
            if isinstance(item, CrawlFailure):
                self.error(item.url, item.error, item.status)
                await self.progress()
                continue
            self.state.pages_fetched += 1
            task = asyncio.create_task(self.guarded(item.final_url, self.handle_page(item)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        self.state.discovered = self._base + crawler.discovered

    async def heartbeat(self) -> None:
        """Touch ``heartbeat_at`` every ``kb_job_heartbeat_s`` while the job runs, so the
        Timekeeper can tell a slow job (a long crawl delay, a big PDF) from a dead one."""
        while True:
            await asyncio.sleep(self.settings.kb_job_heartbeat_s)
            try:
                async with self.pool.acquire() as conn:
                    await kb_db.heartbeat_job(conn, self.job_id)
            except (OSError, asyncpg.PostgresError):  # a missed beat; the next one may land
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)

    async def run(self, files: list[SourceFile]) -> JobState:
        async with self.pool.acquire() as conn:
            await kb_db.start_job(conn, self.job_id)
        beat = asyncio.create_task(self.heartbeat())
        try:
            return await self._run(files)
        finally:
            beat.cancel()

    async def _run(self, files: list[SourceFile]) -> JobState:
        spec = self.spec
        self.started_at = time.monotonic()
        if spec.url and self.egress is None:
            self.egress = policy_from_settings(self.settings)  # production refuses allow-private
        self._base = len(files) + (1 if spec.text else 0)
        self.state.discovered = self._base + (1 if spec.url else 0)
        jobs = [self.guarded(f.name, self.ingest_file(f)) for f in files]
        if spec.text:
            name = spec.name or f"text:{content_hash(spec.text)[:12]}"
            jobs.append(self.guarded(name, self.ingest_text(
                name, spec.text, spec.title or name, spec.text_format == "markdown",
                {"pasted": True},
            )))
        await asyncio.gather(*jobs)
        if spec.url:
            await self.crawl(spec.url)
        s = self.state
        if s.documents + s.unchanged == 0 and s.errors:
            s.status = "failed"
            s.message = f"every source failed ({len(s.errors)} errors); see errors"
        else:
            s.status = "completed"
        return s
