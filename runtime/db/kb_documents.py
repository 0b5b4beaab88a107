"""Knowledge-base documents and their chunks (plain SQL on ``kb_documents`` and ``kb_chunks``).

Every query filters on ``tenant_id``, which also prunes ``kb_chunks`` to the tenant's own
partition (one per tenant, created and dropped by triggers on ``tenants``; migration 0005).
Embeddings are numpy float32 arrays (the pool registers the pgvector codec), L2-normalised by the
Embedder. The retrieval queries over these tables are in :mod:`runtime.db.kb_search`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from runtime.db import Conn
from runtime.errors import NotFound

DOCUMENT_COLUMNS = (
    "id, tenant_id, source, kind, title, content_hash, chunk_count, size_bytes, metadata, job_id, "
    "created_at, updated_at"
)


@dataclass(frozen=True)
class ChunkRow:
    """One chunk to store: text (what the model and the customer see), its place and size."""

    ord: int
    text: str
    title: str
    section: str
    page: int | None
    token_count: int


async def document_hash(conn: Conn, tenant_id: UUID, source: str) -> str | None:
    """content_hash of the tenant's document for ``source``, or None if there is none."""
    return await conn.fetchval(
        "SELECT content_hash FROM kb_documents WHERE tenant_id = $1 AND source = $2",
        tenant_id, source,
    )


async def replace_document(
    conn: Conn, tenant_id: UUID, *, source: str, kind: str, title: str,
    content_hash: str, size_bytes: int, chunks: Sequence[ChunkRow], embeddings: np.ndarray,
    metadata: dict[str, Any] | None = None, job_id: UUID | None = None,
) -> tuple[UUID, list[int]]:
    """Create or replace the document for ``(tenant_id, source)`` with ``chunks`` in ONE
    transaction: readers see either the old chunks or the new ones, never a mix or none.

    embeddings: float32 (len(chunks), dim). Returns (document id, new chunk ids in order).
    Raises ValueError when the shapes disagree.
    """
    if len(chunks) != embeddings.shape[0]:
        raise ValueError(f"{len(chunks)} chunks but {embeddings.shape[0]} embeddings")
    async with conn.transaction():
        doc_id = await conn.fetchval(
            """INSERT INTO kb_documents
                   (tenant_id, source, kind, title, content_hash, chunk_count, size_bytes,
                    metadata, job_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (tenant_id, source) DO UPDATE SET
                   kind = EXCLUDED.kind, title = EXCLUDED.title,
                   content_hash = EXCLUDED.content_hash, chunk_count = EXCLUDED.chunk_count,
                   size_bytes = EXCLUDED.size_bytes, metadata = EXCLUDED.metadata,
                   job_id = EXCLUDED.job_id, updated_at = now()
               RETURNING id""",
            tenant_id, source, kind, title, content_hash, len(chunks), size_bytes,
            metadata or {}, job_id,
        )
        await conn.execute(
            "DELETE FROM kb_chunks WHERE document_id = $1 AND tenant_id = $2", doc_id, tenant_id
        )
        if not chunks:
            return doc_id, []
        await conn.copy_records_to_table(
            "kb_chunks",
            columns=("tenant_id", "document_id", "ord", "text", "title", "section", "page",
                     "token_count", "embedding"),
            records=[
                (tenant_id, doc_id, c.ord, c.text, c.title, c.section, c.page, c.token_count,
                 np.asarray(embeddings[i], dtype=np.float32))
                for i, c in enumerate(chunks)
            ],
        )
        ids = await conn.fetch(
            "SELECT id FROM kb_chunks WHERE document_id = $1 AND tenant_id = $2 ORDER BY ord",
            doc_id, tenant_id,
        )
    return doc_id, [r["id"] for r in ids]


async def list_documents(
    conn: Conn, tenant_id: UUID, *, kind: str | None = None, limit: int = 100,
    offset: int = 0,
) -> list[asyncpg.Record]:
    """The tenant's documents, most recently updated first."""
    return await conn.fetch(
        f"""SELECT {DOCUMENT_COLUMNS} FROM kb_documents
            WHERE tenant_id = $1 AND ($2::text IS NULL OR kind = $2)
            ORDER BY updated_at DESC, source LIMIT $3 OFFSET $4""",
        tenant_id, kind, limit, offset,
    )


async def count_documents(
    conn: Conn, tenant_id: UUID, kind: str | None = None
) -> int:
    """How many documents the tenant has (of ``kind``, if given)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM kb_documents WHERE tenant_id = $1 AND ($2::text IS NULL OR kind = $2)",
        tenant_id, kind,
    ))


async def get_document(
    conn: Conn, tenant_id: UUID, document_id: UUID
) -> asyncpg.Record:
    """The document row. Raises NotFound (also for another tenant's document)."""
    row = await conn.fetchrow(
        f"SELECT {DOCUMENT_COLUMNS} FROM kb_documents WHERE id = $1 AND tenant_id = $2",
        document_id, tenant_id,
    )
    if row is None:
        raise NotFound(f"no knowledge-base document {document_id} in this tenant")
    return row


async def delete_document(conn: Conn, tenant_id: UUID, document_id: UUID) -> int:
    """Delete the document and (by cascade, in the same statement) its chunks.

    Returns the number of chunks removed. Raises NotFound.
    """
    async with conn.transaction():
        removed = await conn.fetchval(
            "SELECT chunk_count FROM kb_documents WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            document_id, tenant_id,
        )
        if removed is None:
            raise NotFound(f"no knowledge-base document {document_id} in this tenant")
        await conn.execute(
            "DELETE FROM kb_documents WHERE id = $1 AND tenant_id = $2", document_id, tenant_id
        )
    return int(removed)


async def delete_documents_by_source(
    conn: Conn, tenant_id: UUID, source: str
) -> int:
    """Delete the tenant's document for ``source`` (exact match); returns documents removed."""
    status = await conn.execute(
        "DELETE FROM kb_documents WHERE tenant_id = $1 AND source = $2", tenant_id, source
    )
    return int(status.split()[-1])


async def list_chunks(
    conn: Conn, tenant_id: UUID, document_id: UUID
) -> list[asyncpg.Record]:
    """A document's chunks in order (no embeddings)."""
    return await conn.fetch(
        """SELECT id, document_id, ord, text, title, section, page, token_count
           FROM kb_chunks WHERE document_id = $1 AND tenant_id = $2 ORDER BY ord""",
        document_id, tenant_id,
    )


async def count_chunks(conn: Conn, tenant_id: UUID) -> int:
    """How many chunks the tenant has."""
    return int(await conn.fetchval(
        "SELECT coalesce(sum(chunk_count), 0) FROM kb_documents WHERE tenant_id = $1", tenant_id
    ))
