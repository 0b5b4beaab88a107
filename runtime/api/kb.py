"""Knowledge-base API (owner): ingest jobs, documents, Q&A entries, search.

Ingestion runs as a Ray task (``ingestion.jobs.submit_job``), never in the request handler:
``POST /v1/kb/ingest`` stores a ``pending`` job and returns 202 with its id; poll
``GET /v1/kb/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile

from runtime.api.context import MODEL_HANDLES
from runtime.api.contract import AUTHED, NonBlankText, Text, error_responses
from runtime.api.deps import Ctx, Owner
from runtime.config import get_settings
from runtime.db import kb_documents as kb_db
from runtime.db import kb_jobs
from runtime.errors import BackendUnavailable, InvalidInput, PayloadTooLarge
from runtime.fields import error_message, json_int
from runtime.retrieval import search as kb_search

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/kb", tags=["knowledge base"], responses=error_responses(*AUTHED, 404, 409))

# The schema's limit; the configured one (CHAT_ENGINE_INGEST_TEXT_MAX_CHARS) applies too.
INGEST_TEXT_MAX = get_settings().ingest_text_max_chars

_watchers: set[asyncio.Task[None]] = set()


def embedder_handle() -> Any:
    """The Embedder deployment handle: the one the ingress was built with, else the
    ``Embedder`` deployment of any running Serve app. Raises BackendUnavailable."""
    handle = MODEL_HANDLES.get("embedder")
    if handle is not None:
        return handle
    try:
        from ray import serve

        for app_name, app in serve.status().applications.items():
            if "Embedder" in app.deployments:
                handle = serve.get_deployment_handle("Embedder", app_name=app_name)
                MODEL_HANDLES["embedder"] = handle
                return handle
    except Exception as exc:  # noqa: BLE001 - reported as 503 below
        log.warning("looking up the Embedder deployment failed: %s", exc)
    raise BackendUnavailable(
        "no Embedder deployment is running: start the service with models enabled "
        "(`chat-engine up`, not --no-models)"
    )


# ---------------------------------------------------------------- models
class IngestBody(BaseModel):
    """JSON body of POST /v1/kb/ingest (multipart form fields have the same names, plus one or
    more ``file`` / ``pdf`` uploads)."""

    url: str | None = Field(default=None, max_length=2000, pattern=r"^[hH][tT][tT][pP][sS]?://[\x21-\x7e]+$",
                            description="website to crawl, e.g. https://help.shop")
    max_pages: int | None = Field(default=None, ge=1, le=100_000)
    max_depth: int | None = Field(default=None, ge=0, le=50)
    text: NonBlankText | None = Field(default=None, max_length=INGEST_TEXT_MAX,
                                      description="pasted text or Markdown")
    text_format: Literal["markdown", "text"] = "markdown"
    name: NonBlankText | None = Field(default=None, max_length=500, description="source name of `text`")
    title: Text | None = Field(default=None, max_length=500)
    force: bool = Field(default=False, description="re-embed sources that did not change")

    _ints = field_validator("max_pages", "max_depth", mode="before")(json_int)


class JobOut(BaseModel):
    """An ingestion job: status pending|running|completed|failed, counts and per-source errors
    (``[{source, error, status?}]``, at most 1000 listed; ``error_count`` is the total).
    ``heartbeat_at``: when its worker last reported; a pending/running job silent for
    ``kb_job_stale_s`` is failed by the Timekeeper (its worker died)."""

    id: UUID
    status: str
    spec: dict[str, Any]
    documents: int
    unchanged: int
    chunks: int
    pages_fetched: int
    error_count: int
    errors: list[dict[str, Any]]
    skipped: dict[str, int]
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime


class DocumentOut(BaseModel):
    """A knowledge-base document (a page, file, pasted text or Q&A entry)."""

    id: UUID
    source: str
    kind: str
    title: str
    chunk_count: int
    size_bytes: int
    metadata: dict[str, Any]
    job_id: UUID | None
    created_at: datetime
    updated_at: datetime


class DocumentList(BaseModel):
    """A page of documents and the total."""

    total: int
    documents: list[DocumentOut]


class ChunkOut(BaseModel):
    """A stored chunk (without its embedding)."""

    id: int
    ord: int
    text: str
    title: str
    section: str
    page: int | None
    token_count: int


class QaBody(BaseModel):
    """POST /v1/kb/qa body."""

    question: NonBlankText = Field(max_length=1000)
    answer: NonBlankText = Field(max_length=20_000)


class QaOut(BaseModel):
    """The stored Q&A entry: its document, source and chunk ids (searchable already)."""

    document_id: UUID
    source: str
    question: str
    answer: str
    chunk_ids: list[int]


class SearchBody(BaseModel):
    """POST /v1/kb/search body."""

    query: NonBlankText = Field(max_length=2000)
    k: int = Field(default=4, ge=1, le=50, strict=True)

    _ints = field_validator("k", mode="before")(json_int)


class SearchHit(BaseModel):
    """One result: both legs' scores and the fused one (see runtime.retrieval)."""

    chunk_id: int
    document_id: UUID
    text: str
    source: str
    title: str
    section: str
    page: int | None
    similarity: float
    text_rank: float | None
    rrf_score: float


class SearchOut(BaseModel):
    """Search results, best first."""

    results: list[SearchHit]


def _job_out(row: Any) -> JobOut:
    return JobOut(**{k: row[k] for k in JobOut.model_fields})


def _doc_out(row: Any) -> DocumentOut:
    return DocumentOut(**{k: row[k] for k in DocumentOut.model_fields})


# ---------------------------------------------------------------- ingest
def _form_value(key: str, value: str) -> Any:
    """A form field as the JSON body would type it (form fields are all strings)."""
    if key in ("max_pages", "max_depth") and value.strip().isdigit():
        return int(value)
    if key == "force" and value.strip().lower() in ("true", "false", "1", "0", "on", "off"):
        return value.strip().lower() in ("true", "1", "on")
    return value


async def _read_ingest_request(request: Request, max_bytes: int) -> tuple[IngestBody, list[Any]]:
    from ingestion.jobs import SourceFile

    ctype = request.headers.get("content-type", "")
    files: list[SourceFile] = []
    is_form = ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))
    if is_form:
        form = await request.form(max_files=50)
        fields: dict[str, Any] = {}
        total = 0
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                total += len(data)
                if total > max_bytes:
                    raise PayloadTooLarge(
                        f"uploads exceed {max_bytes} bytes (CHAT_ENGINE_UPLOAD_MAX_BYTES)"
                    )
                files.append(SourceFile(name=value.filename or key, data=data,
                                        content_type=value.content_type))
            else:
                fields[key] = _form_value(key, value)
        raw: Any = fields
    else:
        try:
            raw = await request.json()
        except ValueError:
            raise InvalidInput(
                "body: send JSON {url?, text?} or multipart form data with file uploads"
            ) from None
    try:
        # JSON as the schema types it (no "5" for 5, no 0 for false); form fields are strings.
        body = IngestBody.model_validate(raw, strict=True)
    except ValidationError as exc:
        problems_l = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": error_message(e)}
                      for e in exc.errors()]
        problems = "; ".join(f"{f['field']}: {f['message']}" for f in problems_l)
        raise InvalidInput(f"invalid ingest request: {problems}", field=problems_l[0]["field"],
                           fields=problems_l) from None
    if not (body.url or body.text or files):
        raise InvalidInput("nothing to ingest: give a url, text, or upload files", field="url")
    return body, files


async def _watch(ref: Any, job_id: UUID, ctx: Any) -> None:
    """Mark the job failed if its Ray task dies without finishing it (worker crash, OOM)."""
    try:
        await ref
    except Exception as exc:  # noqa: BLE001 - recorded on the job
        log.error("ingestion job %s: task failed: %s", job_id, exc)
        async with ctx.pool.acquire() as conn:
            await kb_jobs.fail_unfinished_job(
                conn, job_id, f"the ingestion task died: {type(exc).__name__}: {exc}")


@router.post(
    "/ingest", response_model=JobOut, status_code=202,
    openapi_extra={"requestBody": {"content": {
        # Something to ingest: a url, text, or (multipart) files.
        "application/json": {"schema": {**IngestBody.model_json_schema(), "anyOf": [
            {"required": ["url"], "properties": {"url": {"type": "string"}}},
            {"required": ["text"], "properties": {"text": {"type": "string"}}},
        ]}},
        # Files; the JSON fields may come along as form fields (strings: max_pages=10, force=true).
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
        }, "required": ["file"]}},
    }, "required": True}},
)
async def ingest(request: Request, ctx: Ctx, who: Owner) -> JobOut:
    """Start an ingestion job for a website (``url``), uploaded files (PDF, HTML, Markdown,
    text; multipart fields ``file`` or ``pdf``) and/or pasted ``text``. Returns 202 with the
    ``pending`` job; it runs in the background (poll GET /v1/kb/jobs/{id})."""
    from ingestion.jobs import IngestSpec, submit_job

    body, files = await _read_ingest_request(request, ctx.settings.upload_max_bytes)
    embedder = embedder_handle()
    spec = IngestSpec(
        **body.model_dump(), files=[{"name": f.name, "bytes": len(f.data)} for f in files]
    )
    async with ctx.pool.acquire() as conn:
        row = await kb_jobs.create_job(
            conn, who.tenant_id, spec.model_dump(mode="json", exclude={"text"})
            | {"text_chars": len(spec.text or "")},
            max_active=ctx.settings.max_ingestion_jobs_per_tenant,
        )
    ref = submit_job(row["id"], who.tenant_id, spec, files, embedder)
    task = asyncio.create_task(_watch(ref, row["id"], ctx))
    _watchers.add(task)
    task.add_done_callback(_watchers.discard)
    return _job_out(row)


@router.get("/jobs", response_model=list[JobOut])
async def list_jobs(
    ctx: Ctx, who: Owner, limit: int = Query(default=50, ge=1, le=500)
) -> list[JobOut]:
    """The tenant's recent ingestion jobs, newest first."""
    async with ctx.pool.acquire() as conn:
        return [_job_out(r) for r in await kb_jobs.list_jobs(conn, who.tenant_id, limit)]


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: UUID, ctx: Ctx, who: Owner) -> JobOut:
    """One job (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        return _job_out(await kb_jobs.get_job(conn, who.tenant_id, job_id))


# ---------------------------------------------------------------- documents
@router.get("/documents", response_model=DocumentList)
async def list_documents(
    ctx: Ctx, who: Owner,
    kind: Literal["web", "pdf", "text", "markdown", "qa"] | None = None,
    limit: int = Query(default=100, ge=1, le=1000), offset: int = Query(default=0, ge=0, le=1_000_000_000),
) -> DocumentList:
    """The tenant's documents, most recently updated first."""
    async with ctx.pool.acquire() as conn:
        rows = await kb_db.list_documents(conn, who.tenant_id, kind=kind, limit=limit,
                                          offset=offset)
        total = await kb_db.count_documents(conn, who.tenant_id, kind)
    return DocumentList(total=total, documents=[_doc_out(r) for r in rows])


@router.get("/documents/{document_id}", response_model=DocumentOut)
async def get_document(document_id: UUID, ctx: Ctx, who: Owner) -> DocumentOut:
    """One document (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        return _doc_out(await kb_db.get_document(conn, who.tenant_id, document_id))


@router.get("/documents/{document_id}/chunks", response_model=list[ChunkOut])
async def get_document_chunks(document_id: UUID, ctx: Ctx, who: Owner) -> list[ChunkOut]:
    """A document's chunks in order."""
    async with ctx.pool.acquire() as conn:
        await kb_db.get_document(conn, who.tenant_id, document_id)
        rows = await kb_db.list_chunks(conn, who.tenant_id, document_id)
    return [ChunkOut(**{k: r[k] for k in ChunkOut.model_fields}) for r in rows]


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(document_id: UUID, ctx: Ctx, who: Owner) -> Response:
    """Delete a document and its chunks (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        await kb_db.delete_document(conn, who.tenant_id, document_id)
    return Response(status_code=204)


@router.delete("/documents")
async def delete_document_by_source(
    ctx: Ctx, who: Owner, source: str = Query(min_length=1, description="exact source URL/name")
) -> dict[str, int]:
    """Delete the document with this exact ``source`` (and its chunks): ``{"deleted": n}``."""
    async with ctx.pool.acquire() as conn:
        return {"deleted": await kb_db.delete_documents_by_source(conn, who.tenant_id, source)}


# ---------------------------------------------------------------- Q&A and search
@router.post("/qa", response_model=QaOut, status_code=201)
async def add_qa_entry(body: QaBody, ctx: Ctx, who: Owner) -> QaOut:
    """Add (or replace) an owner-written Q&A pair; it is embedded and searchable on return."""
    from ingestion.qa import add_qa

    out = await add_qa(ctx.pool, embedder_handle(), who.tenant_id, body.question, body.answer)
    return QaOut(**{k: out[k] for k in QaOut.model_fields})


@router.post("/search", response_model=SearchOut)
async def search(body: SearchBody, ctx: Ctx, who: Owner) -> SearchOut:
    """Hybrid search of the tenant's knowledge base (what the bot would retrieve)."""
    hits = await kb_search(ctx.pool, embedder_handle(), who.tenant_id, body.query, body.k)
    return SearchOut(results=[SearchHit(**h.to_dict()) for h in hits])
