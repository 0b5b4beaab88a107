"""Embed a document's chunks and swap them into ``kb_chunks`` in one transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from runtime.config import get_settings
from runtime.db import kb_documents as kb_db
from runtime.db.kb_documents import ChunkRow
from runtime.errors import IngestionError
from runtime.retrieval import embed_texts

TITLE_CHARS_IN_EMBEDDING = 120


def content_hash(*parts: str) -> str:
    """Hex SHA-256 of the parts (what decides whether a re-ingested source changed)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def embedding_text(chunk: ChunkRow) -> str:
    """What is embedded for a chunk: its (shortened) title, then its text (heading included).

    At most ~230 word pieces for a 200-token chunk, under MiniLM's 256 truncation.
    """
    title = chunk.title[:TITLE_CHARS_IN_EMBEDDING]
    return f"{title}\n{chunk.text}" if title and title not in chunk.text else chunk.text


@dataclass
class StoreResult:
    """What :func:`store_document` did: ``unchanged`` when the stored content hash matched."""

    document_id: UUID | None
    chunk_ids: list[int] = field(default_factory=list)
    unchanged: bool = False


async def embed_chunks(embedder: Any, chunks: Sequence[ChunkRow], batch: int) -> np.ndarray:
    """float32 (len(chunks), dim) embeddings, ``batch`` texts per ``embed_many`` call.

    Raises IngestionError when the Embedder fails or returns the wrong shape.
    """
    texts = [embedding_text(c) for c in chunks]
    parts = []
    try:
        for i in range(0, len(texts), batch):
            parts.append(await embed_texts(embedder, texts[i:i + batch]))
    except Exception as exc:  # noqa: BLE001 - reported per source
        raise IngestionError(f"embedding failed ({type(exc).__name__}: {exc})") from None
    dim = get_settings().embedding_dim
    out = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    if out.shape != (len(chunks), dim):
        raise IngestionError(f"embedding failed: got shape {out.shape}, expected "
                             f"({len(chunks)}, {dim})")
    return out


async def store_document(
    pool: asyncpg.Pool, embedder: Any, tenant_id: UUID, *, source: str, kind: str, title: str,
    chunks: Sequence[ChunkRow], digest: str, size_bytes: int,
    metadata: dict[str, Any] | None = None, job_id: UUID | None = None, force: bool = False,
) -> StoreResult:
    """Embed ``chunks`` and replace the tenant's document for ``source`` with them.

    Skips the work (``unchanged=True``) when the stored document has the same ``digest``,
    unless ``force``. Embedding happens before the transaction; the swap itself (upsert the
    document, delete its old chunks, insert the new ones) is one transaction, so a failure
    leaves the previous version intact. Raises IngestionError (no chunks, embedding failure).
    """
    if not chunks:
        raise IngestionError("no text to index after extraction")
    if not force:
        async with pool.acquire() as conn:
            if await kb_db.document_hash(conn, tenant_id, source) == digest:
                return StoreResult(document_id=None, unchanged=True)
    vectors = await embed_chunks(embedder, chunks, get_settings().ingest_embed_batch)
    async with pool.acquire() as conn:
        doc_id, ids = await kb_db.replace_document(
            conn, tenant_id, source=source, kind=kind, title=title, content_hash=digest,
            size_bytes=size_bytes, chunks=chunks, embeddings=vectors, metadata=metadata,
            job_id=job_id,
        )
    return StoreResult(document_id=doc_id, chunk_ids=ids)
