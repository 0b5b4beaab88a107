"""Knowledge-base retrieval legs (plain SQL on ``kb_chunks``): HNSW vector search, full-text
search, and both fused by reciprocal rank in one round trip.

Every query filters on ``tenant_id``, which also prunes ``kb_chunks`` to the tenant's own
partition. ``embedding`` parameters are (384,) float32 arrays, L2-normalised by the Embedder.
These queries must run inside a transaction (``SET LOCAL`` of the HNSW options); use
:func:`runtime.retrieval.search` rather than calling them directly.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from runtime.config import get_settings
from runtime.db import Conn

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
    SELECT id, rank, grp, row_number() OVER (ORDER BY grp, rank DESC, id) AS r FROM (
        SELECT id, rank, 0 AS grp FROM ta
        UNION ALL
        SELECT id, rank, 1 AS grp FROM tb WHERE id NOT IN (SELECT id FROM ta)
    ) u
)
"""


def _text_args(tenant_id: UUID, query: str, n: int) -> tuple[Any, ...]:
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
    SELECT coalesce(vr.id, tr.id) AS id, tr.rank AS text_rank, coalesce(tr.grp = 0, false) AS text_all,
           coalesce(1.0::float8 / ($8 + vr.r), 0) + coalesce(1.0::float8 / ($8 + tr.r), 0) AS rrf
    FROM vr FULL OUTER JOIN (SELECT * FROM tr WHERE r <= $5) tr ON vr.id = tr.id
    ORDER BY rrf DESC, id LIMIT $9
)
SELECT c.id AS chunk_id, c.document_id, c.text, d.source, c.title, c.section, c.page,
       1 - (c.embedding <=> $7) AS similarity, f.text_rank, f.text_all, f.rrf AS rrf_score
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
    section, page, similarity, text_rank, text_all, rrf_score), best first. ``similarity`` is the
    cosine similarity to the query for every row (also rows found only by the text leg);
    ``text_rank`` is NULL for rows the text leg did not return; ``text_all``: the row holds all
    the query's words (the text leg's first group). Run inside a transaction after
    :func:`set_hnsw_options`.
    """
    return await conn.fetch(
        _HYBRID_SQL, *_text_args(tenant_id, query, candidates), embedding, rrf_k, k,
    )
