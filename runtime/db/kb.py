"""Knowledge-base queries (plain SQL): ingestion jobs, documents, chunks and the retrieval legs.

Every query filters on ``tenant_id``, which also prunes ``kb_chunks`` to the tenant's own
partition (one per tenant, created and dropped by triggers on ``tenants``; migration 0005).
Vectors are numpy float32 arrays (the pool registers the pgvector codec); ``embedding``
parameters are (384,) arrays, L2-normalised by the Embedder.

The retrieval queries must run inside a transaction (``SET LOCAL`` of the HNSW options); use
:func:`runtime.retrieval.search` rather than calling them directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from runtime.db import Conn
from runtime.errors import NotFound

JOB_COLUMNS = (
    "id, tenant_id, status, spec, documents, unchanged, chunks, pages_fetched, error_count, "
    "errors, skipped, message, created_at, started_at, finished_at, heartbeat_at"
)
DOCUMENT_COLUMNS = (
    "id, tenant_id, source, kind, title, content_hash, chunk_count, size_bytes, metadata, job_id, "
    "created_at, updated_at"
)
MAX_STORED_ERRORS = 1000


# ---------------------------------------------------------------- jobs
async def create_job(
    conn: Conn, tenant_id: UUID, spec: dict[str, Any]
) -> asyncpg.Record:
    """Insert a ``pending`` job; returns its row."""
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


# ---------------------------------------------------------------- documents and chunks
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


# ---------------------------------------------------------------- retrieval legs
_WORD = re.compile(r"\w+", re.UNICODE)


def tenant_lexeme(tenant_id: UUID) -> str:
    """The lexeme that ``kb_chunks.tsv`` carries for its tenant (``t`` + 32 hex digits)."""
    return "t" + tenant_id.hex


def or_tsquery_text(query: str, max_terms: int = 32) -> str | None:
    """``to_tsquery`` input that ORs the query's words (stop words are dropped by Postgres).

    Questions rarely contain every word of the passage that answers them, so when too few chunks
    have all the words the full-text leg adds chunks with any of them. None for no words.
    """
    words = _WORD.findall(query.lower())[:max_terms]
    return " | ".join(words) if words else None


async def set_hnsw_options(conn: Conn, ef_search: int) -> None:
    """``SET LOCAL`` the HNSW search options (call inside a transaction).

    Also forces custom plans: a generic plan of the prepared statement does not know the LIMIT
    and may prefer a sequential scan and sort over the HNSW index.
    """
    await conn.execute(
        "SET LOCAL hnsw.iterative_scan = relaxed_order; "
        f"SET LOCAL hnsw.ef_search = {int(ef_search)}; "
        "SET LOCAL plan_cache_mode = force_custom_plan"
    )


async def vector_leg(
    conn: Conn, tenant_id: UUID, embedding: np.ndarray, n: int, fetch: int | None = None
) -> list[asyncpg.Record]:
    """Nearest chunks by cosine distance through the HNSW index: rows (id, distance), nearest
    first. With ``relaxed_order`` the index returns rows roughly in order, so ``fetch`` (>= n;
    :func:`hybrid_search` uses ``candidates``) rows are taken and the best ``n`` of them kept.
    Run inside a transaction after :func:`set_hnsw_options`."""
    return await conn.fetch(
        """SELECT id, distance FROM (
               SELECT id, embedding <=> $2 AS distance FROM kb_chunks
               WHERE tenant_id = $1 ORDER BY embedding <=> $2 LIMIT $4
           ) v ORDER BY distance, id LIMIT $3""",
        tenant_id, embedding, n, max(n, fetch or n),
    )


async def exact_vector_leg(
    conn: Conn, tenant_id: UUID, embedding: np.ndarray, n: int
) -> list[asyncpg.Record]:
    """The exact nearest chunks (no index; for recall measurement). Inside a transaction."""
    await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
    return await conn.fetch(
        """SELECT id, embedding <=> $2 AS distance FROM kb_chunks
           WHERE tenant_id = $1 ORDER BY embedding <=> $2, id LIMIT $3""",
        tenant_id, embedding, n,
    )


# The full-text leg. Parameters: $1 tenant, $2 raw query, $3 OR query (or NULL), $4 tenant
# lexeme, $5 rows wanted, $6 match cap (settings.retrieval_text_match_cap). Chunks matching ALL
# query words (plainto_tsquery) rank first; only when they are fewer than $5 are chunks matching
# ANY word added. Each branch ranks at most $6 matches (in physical order), so a query made of
# words found everywhere costs a bounded amount of work instead of ranking the tenant's whole
# knowledge base. ts_rank rather than ts_rank_cd: cover density over a long OR query cost ~20 us
# per match (text-leg p99 24 ms at 100k chunks against 12.5 ms), and fusion uses only the order.
_TEXT_CTES = """
ta AS MATERIALIZED (
    SELECT id, ts_rank(tsv, plainto_tsquery('english', $2)) AS rank FROM (
        SELECT id, tsv FROM kb_chunks
        WHERE numnode(plainto_tsquery('english', $2)) > 0
          AND tsv @@ (plainto_tsquery('english', $2) && $4::tsquery) AND tenant_id = $1
        LIMIT $6
    ) m ORDER BY rank DESC, id LIMIT $5
), tb AS MATERIALIZED (
    SELECT id, ts_rank(tsv, to_tsquery('english', $3)) AS rank FROM (
        SELECT id, tsv FROM kb_chunks
        WHERE (SELECT count(*) FROM ta) < $5
          AND $3::text IS NOT NULL AND numnode(to_tsquery('english', $3)) > 0
          AND tsv @@ (to_tsquery('english', $3) && $4::tsquery) AND tenant_id = $1
        LIMIT $6
    ) m ORDER BY rank DESC, id LIMIT $5
), tr AS (
    SELECT id, rank, row_number() OVER (ORDER BY grp, rank DESC, id) AS r FROM (
        SELECT id, rank, 0 AS grp FROM ta
        UNION ALL
        SELECT id, rank, 1 AS grp FROM tb WHERE id NOT IN (SELECT id FROM ta)
    ) u
)
"""


def _text_args(tenant_id: UUID, query: str, n: int) -> tuple[Any, ...]:
    from runtime.config import get_settings

    return (tenant_id, query, or_tsquery_text(query), tenant_lexeme(tenant_id), n,
            get_settings().retrieval_text_match_cap)


async def text_leg(conn: Conn, tenant_id: UUID, query: str, n: int) -> list[asyncpg.Record]:
    """Full-text matches on the GIN index: rows (id, rank), best first (chunks with all the
    query's words first, then chunks with any; each by ``ts_rank``)."""
    return await conn.fetch(
        f"WITH {_TEXT_CTES} SELECT id, rank FROM tr WHERE r <= $5 ORDER BY r",
        *_text_args(tenant_id, query, n),
    )


_HYBRID_SQL = f"""
WITH {_TEXT_CTES}, v AS MATERIALIZED (
    SELECT id, embedding <=> $7 AS distance FROM kb_chunks
    WHERE tenant_id = $1 ORDER BY embedding <=> $7 LIMIT $5
), vr AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS r FROM v
), f AS (
    SELECT coalesce(vr.id, tr.id) AS id, tr.rank AS text_rank,
           coalesce(1.0::float8 / ($8 + vr.r), 0) + coalesce(1.0::float8 / ($8 + tr.r), 0) AS rrf
    FROM vr FULL OUTER JOIN (SELECT * FROM tr WHERE r <= $5) tr ON vr.id = tr.id
    ORDER BY rrf DESC, id LIMIT $9
)
SELECT c.id AS chunk_id, c.document_id, c.text, d.source, c.title, c.section, c.page,
       1 - (c.embedding <=> $7) AS similarity, f.text_rank, f.rrf AS rrf_score
FROM f
JOIN kb_chunks c ON c.id = f.id AND c.tenant_id = $1
JOIN kb_documents d ON d.id = c.document_id AND d.tenant_id = $1
ORDER BY f.rrf DESC, c.id
"""


async def hybrid_search(
    conn: Conn, tenant_id: UUID, embedding: np.ndarray, query: str, *,
    k: int, candidates: int, rrf_k: int,
) -> list[asyncpg.Record]:
    """Both legs and their reciprocal-rank fusion in one round trip.

    Each leg takes its top ``candidates``; a chunk scores ``sum(1 / (rrf_k + rank))`` over the
    legs it appears in. Returns at most ``k`` rows (chunk_id, document_id, text, source, title,
    section, page, similarity, text_rank, rrf_score), best first. ``similarity`` is the cosine
    similarity to the query for every row (also rows found only by the text leg); ``text_rank``
    is NULL for rows the text leg did not return. Run inside a transaction after
    :func:`set_hnsw_options`.
    """
    return await conn.fetch(
        _HYBRID_SQL, *_text_args(tenant_id, query, candidates), embedding, rrf_k, k,
    )
