"""Hybrid retrieval over a tenant's knowledge base: HNSW cosine + full text, fused by RRF.

Usage (session actor, ingress, agent API)::

    chunks = await search(pool, embedder_handle, tenant_id, "is there a free trial", k=4)
    covered = bool(chunks) and chunks[0].similarity >= threshold

``embedder`` is the ``Embedder`` Serve deployment handle (``embed.remote(text)`` -> float32
(384,)), or any object whose ``embed`` / ``embed_many`` are plain async methods (e.g.
:class:`ingestion.embed.LocalEmbedder` in the CLI and benchmarks). Pass ``query_embedding`` to
skip embedding altogether.

Vector leg: ``kb_chunks`` is LIST-partitioned by tenant (migration 0005), so ``tenant_id = $1``
prunes to the tenant's own partition and HNSW (cosine) graph; ``hnsw.iterative_scan =
relaxed_order`` stays on so a filter can never starve results; no btree led by tenant_id
(DESIGN.md, Storage). Full-text leg: the partition's GIN on ``tsv``: chunks with all the query's
words, topped up with chunks with any of them, each ranked by ``ts_rank``. Fusion: reciprocal
rank, ``sum(1 / (rrf_k + rank))`` over both legs' top ``candidates``; each result keeps both
legs' own scores.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from runtime.config import get_settings
from runtime.db import Conn
from runtime.db import kb_search as kb_db
from runtime.errors import InvalidInput


@dataclass(frozen=True)
class RetrievedChunk:
    """One retrieved chunk.

    similarity: cosine similarity of the chunk's embedding to the query's, in [-1, 1] (about
      0.1-0.3 for unrelated text, 0.5+ for a passage that answers the question, with MiniLM).
    text_rank: the full-text leg's ``ts_rank`` (>= 0), or None when that leg did not return it.
    text_all: the chunk holds every word of the query (the full-text leg's first group).
    rrf_score: the fused score, ``sum(1 / (rrf_k + rank))`` over the legs that returned it.
    page: 1-based PDF page, None for other sources. source: URL, file name or ``qa:<hash>``.
    """

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
    text_all: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (document_id as a string)."""
        d = asdict(self)
        d["document_id"] = str(self.document_id)
        return d


def _has_remote(method: Any) -> bool:
    return hasattr(method, "remote")


async def embed_query(embedder: Any, text: str) -> np.ndarray:
    """Embedding of one text through a Serve handle or a local embedder: float32 (dim,)."""
    method = embedder.embed
    result = method.remote(text) if _has_remote(method) else method(text)
    if inspect.isawaitable(result):
        result = await result
    return np.asarray(result, dtype=np.float32).reshape(-1)


async def embed_texts(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """Embeddings of ``texts`` (one ``embed_many`` call): float32 (len(texts), dim)."""
    if not texts:
        return np.zeros((0, get_settings().embedding_dim), dtype=np.float32)
    method = embedder.embed_many
    result = method.remote(list(texts)) if _has_remote(method) else method(list(texts))
    if inspect.isawaitable(result):
        result = await result
    arr = np.asarray(result, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise ValueError(f"embedder returned shape {arr.shape} for {len(texts)} texts")
    return arr


async def search(
    pool_or_conn: asyncpg.Pool | asyncpg.Connection,
    embedder: Any,
    tenant_id: UUID,
    query: str,
    k: int = 4,
    *,
    query_embedding: np.ndarray | None = None,
    candidates: int | None = None,
) -> list[RetrievedChunk]:
    """The ``k`` best chunks of ``tenant_id``'s knowledge base for ``query``, best first.

    pool_or_conn: an asyncpg pool (one connection is held for the single round trip) or a
      connection (used as is; a transaction/savepoint is opened on it).
    embedder: Embedder handle or local embedder (see module doc); unused when
      ``query_embedding`` (float32 (dim,), L2-normalised) is given.
    candidates: how many rows each leg contributes to the fusion (default
      ``settings.retrieval_candidates``, at least ``k``).
    Returns [] for an empty knowledge base. Raises InvalidInput for an empty query or k < 1.
    Latency (10 tenants, 100k chunks, this machine): see benchmarks/retrieval.py.
    """
    if not query.strip():
        raise InvalidInput("query: must not be empty", field="query")
    if k < 1:
        raise InvalidInput("k: must be at least 1", field="k")
    settings = get_settings()
    if query_embedding is None:
        query_embedding = await embed_query(embedder, query)
    n = max(k, candidates or settings.retrieval_candidates)

    async def _run(conn: Conn) -> list[asyncpg.Record]:
        async with conn.transaction():
            await kb_db.set_hnsw_options(conn, max(settings.retrieval_ef_search, n))
            return await kb_db.hybrid_search(
                conn, tenant_id, query_embedding, query, k=k, candidates=n,
                rrf_k=settings.retrieval_rrf_k,
            )

    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            rows = await _run(conn)
    else:
        rows = await _run(pool_or_conn)
    return [
        RetrievedChunk(
            chunk_id=r["chunk_id"], document_id=r["document_id"], text=r["text"],
            source=r["source"], title=r["title"], section=r["section"], page=r["page"],
            similarity=float(r["similarity"]),
            text_rank=None if r["text_rank"] is None else float(r["text_rank"]),
            rrf_score=float(r["rrf_score"]), text_all=bool(r["text_all"]),
        )
        for r in rows
    ]
