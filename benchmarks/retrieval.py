"""Knowledge-base benchmark; prints one JSON object.

1. Ingestion: crawl the fixture help site (served by ``python -m http.server``) and ingest it with
   the real pipeline (extract, chunk, embed with the in-process model, store): pages/s, chunks/s.
2. Retrieval at N chunks over 10 tenants (``--quick``: 2k; default: 10k and 100k): vector-leg
   (per-tenant partition's HNSW + ``hnsw.iterative_scan``), full-text-leg (GIN) and fused
   ``runtime.retrieval.search``
   latency p50/p99 in ms, and recall@5 of the vector leg against exact search per tenant (the
   leg as search runs it: ``retrieval_candidates`` rows from HNSW, best 5 of them).

Synthetic chunks are built from the fixture: each takes a random real chunk (site + billing PDF),
keeps ~80% of its sentences, and gets the embedding ``normalise(a*v_i + (1-a)*v_j + noise)`` with
a second random chunk j, a ~ U(0.5, 1) and Gaussian noise (sigma 0.01 per dimension), so vectors
fill the space between real ones instead of forming tight clusters of near-ties. Queries are
the fixture's section headings and questions, embedded with the real model. Everything runs in a
private embedded Postgres in a temp dir.

Usage: ``python benchmarks/retrieval.py [--quick] [--sizes 10000,100000] [--queries 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FIXTURES = (REPO.parent / "shared" / "fixtures").resolve()
TENANTS = 10
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CHAT_ENGINE_CRAWL_ALLOW_PRIVATE", "true")  # the fixture site is on 127.0.0.1


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of ``values``, nearest rank; rounded to 0.01."""
    s = sorted(values)
    idx = min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))
    return round(s[idx], 2)


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": round(statistics.mean(ms), 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def new_tenant(pool: Any, name: str) -> UUID:
    async with pool.acquire() as conn:
        return UUID(str(await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id", name)))


async def bench_ingestion(pool: Any, embedder: Any, max_pages: int) -> dict[str, Any]:
    from ingestion.jobs import IngestSpec, SourceFile, run_job
    from runtime.db import kb_jobs as kb_db

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(FIXTURES / "kb-site"), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/robots.txt", timeout=1)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        tenant = await new_tenant(pool, "bench-ingest")
        async with pool.acquire() as conn:
            job = await kb_db.create_job(conn, tenant, {})
        spec = IngestSpec(url=f"http://127.0.0.1:{port}/index.html", max_pages=max_pages)
        t0 = time.perf_counter()
        state = await run_job(pool, embedder, job["id"], tenant, spec)
        site_s = time.perf_counter() - t0
        pdf = FIXTURES / "kb-pdf" / "billing-guide.pdf"
        async with pool.acquire() as conn:
            job2 = await kb_db.create_job(conn, tenant, {})
        t1 = time.perf_counter()
        pdf_state = await run_job(pool, embedder, job2["id"], tenant, IngestSpec(),
                                  [SourceFile(pdf.name, pdf.read_bytes())])
        pdf_s = time.perf_counter() - t1
    finally:
        server.terminate()
        server.wait(10)
    return {
        "tenant": tenant,
        "site": {
            "pages": state.pages_fetched, "documents": state.documents, "chunks": state.chunks,
            "errors": len(state.errors), "seconds": round(site_s, 2),
            "pages_per_s": round(state.pages_fetched / site_s, 1),
            "chunks_per_s": round(state.chunks / site_s, 1),
        },
        "pdf": {
            "pages": 12, "chunks": pdf_state.chunks, "seconds": round(pdf_s, 2),
            "chunks_per_s": round(pdf_state.chunks / pdf_s, 1),
        },
    }


async def load_corpus(pool: Any, tenant: UUID) -> tuple[list[str], np.ndarray, list[str]]:
    """The ingested fixture chunks (texts, embeddings) and query strings (headings)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT text, section, title, embedding FROM kb_chunks WHERE tenant_id = $1 "
            "ORDER BY id", tenant)
    texts = [r["text"] for r in rows]
    vecs = np.stack([np.asarray(getattr(r["embedding"], "to_numpy", lambda e=r["embedding"]: e)(),
                                dtype=np.float32) for r in rows])
    queries = sorted({r["section"].split(" > ")[-1] for r in rows if r["section"]}
                     | {r["title"] for r in rows if r["title"]})
    return texts, vecs, queries


async def fill(pool: Any, tenants: list[UUID], texts: list[str], vecs: np.ndarray, n: int,
               rng: np.random.Generator) -> None:
    """Replace all kb_chunks with ``n`` synthetic chunks spread over ``tenants``."""
    from runtime.db.kb_documents import ChunkRow  # noqa: F401 - documents the row shape

    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM kb_documents WHERE tenant_id = ANY($1::uuid[])", tenants)
        idx_defs = [r["indexdef"] for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'kb_chunks' "
            "AND indexname IN ('kb_chunks_embedding_hnsw', 'kb_chunks_tsv_gin')")]
        await conn.execute("DROP INDEX IF EXISTS kb_chunks_embedding_hnsw, kb_chunks_tsv_gin")
        per_tenant = n // len(tenants)
        for t_i, tenant in enumerate(tenants):
            docs = []
            for d in range(max(1, per_tenant // 100)):
                docs.append(await conn.fetchval(
                    "INSERT INTO kb_documents (tenant_id, source, kind, title, content_hash) "
                    "VALUES ($1, $2, 'web', $3, 'x') RETURNING id",
                    tenant, f"https://t{t_i}.example/doc{d}", f"doc {d}"))
            base = rng.integers(0, len(texts), per_tenant)
            partner = rng.integers(0, len(texts), per_tenant)
            mix = rng.uniform(0.5, 1.0, (per_tenant, 1)).astype(np.float32)
            noise = rng.normal(0, 0.01, (per_tenant, vecs.shape[1])).astype(np.float32)
            emb = mix * vecs[base] + (1 - mix) * vecs[partner] + noise
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            records = []
            for j in range(per_tenant):
                sentences = texts[base[j]].split(". ")
                keep = [s for s in sentences if rng.random() < 0.8] or sentences[:1]
                records.append((tenant, docs[j % len(docs)], j, ". ".join(keep), "", "", None,
                                len(keep) * 12, emb[j]))
            await conn.copy_records_to_table(
                "kb_chunks", records=records,
                columns=("tenant_id", "document_id", "ord", "text", "title", "section", "page",
                         "token_count", "embedding"))
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for d in idx_defs:
            # A partitioned table's index reads "ON ONLY kb_chunks"; without ONLY it is built
            # on every tenant's partition.
            await conn.execute(d.replace(" ON ONLY ", " ON "))
        await conn.execute("ANALYZE kb_chunks")


async def bench_retrieval(pool: Any, tenants: list[UUID], queries: list[str],
                          qvecs: np.ndarray, n_queries: int, rng: random.Random
                          ) -> dict[str, Any]:
    from runtime.config import get_settings
    from runtime.db import kb_search as kb_db
    from runtime.retrieval import search

    settings = get_settings()
    vec_ms: list[float] = []
    text_ms: list[float] = []
    fused_ms: list[float] = []
    recalls: list[float] = []
    plans: set[str] = set()
    async with pool.acquire() as conn:
        for i in range(n_queries):
            tenant = tenants[i % len(tenants)]
            qi = rng.randrange(len(queries))
            q, qv = queries[qi], qvecs[qi]
            async with conn.transaction():
                await kb_db.set_hnsw_options(conn, settings.retrieval_ef_search)
                if i == 0:
                    plan = await conn.fetch(
                        "EXPLAIN SELECT id FROM kb_chunks WHERE tenant_id = $1 "
                        "ORDER BY embedding <=> $2 LIMIT 20", tenant, qv)
                    plans.add(" / ".join(
                        re.sub(r"'\[[^']*\]'", "'<query>'", r[0].strip()) for r in plan[:3]))
                t0 = time.perf_counter()
                approx = await kb_db.vector_leg(conn, tenant, qv, 5,
                                                fetch=settings.retrieval_candidates)
                vec_ms.append((time.perf_counter() - t0) * 1000)
            async with conn.transaction():
                exact = await kb_db.exact_vector_leg(conn, tenant, qv, 5)
            got, want = {r["id"] for r in approx}, {r["id"] for r in exact}
            recalls.append(len(got & want) / max(1, len(want)))
            t0 = time.perf_counter()
            await kb_db.text_leg(conn, tenant, q, settings.retrieval_candidates)
            text_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await search(conn, None, tenant, q, k=4, query_embedding=qv)
            fused_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "vector_leg": summary(vec_ms), "text_leg": summary(text_ms),
        "fused_search": summary(fused_ms),
        "recall_at_5": round(statistics.mean(recalls), 4), "queries": n_queries,
        "vector_plan": sorted(plans),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from ingestion.embed import LocalEmbedder
    from runtime.config import get_settings
    from runtime.db.migrate import upgrade
    from runtime.db.pool import create_pool
    from runtime.services import EmbeddedPostgres

    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    n_queries = args.queries or (50 if args.quick else 300)
    tmp = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    out: dict[str, Any] = {"benchmark": "retrieval", "quick": args.quick, "tenants": TENANTS}
    try:
        dsn = pg.start()
        os.environ["CHAT_ENGINE_DATABASE_URL"] = dsn
        get_settings.cache_clear()
        await asyncio.to_thread(upgrade, dsn)
        pool = await create_pool(dsn, min_size=1, max_size=6)
        t0 = time.perf_counter()
        embedder = LocalEmbedder(threads=args.threads)
        out["model_load_s"] = round(time.perf_counter() - t0, 2)
        ing = await bench_ingestion(pool, embedder, 30 if args.quick else 500)
        out["ingestion"] = {"site": ing["site"], "pdf": ing["pdf"]}
        texts, vecs, queries = await load_corpus(pool, ing["tenant"])
        qvecs = await embedder.embed_many(queries)
        t = time.perf_counter()
        for _ in range(20):
            await embedder.embed(queries[0])
        out["query_embedding_ms_mean"] = round((time.perf_counter() - t) / 20 * 1000, 2)
        embedder.close()
        tenants = [await new_tenant(pool, f"bench-{i}") for i in range(TENANTS)]
        rng = np.random.default_rng(7)
        out["corpus"] = {"real_chunks": len(texts), "queries": len(queries)}
        out["retrieval"] = {}
        for n in sizes:
            t = time.perf_counter()
            await fill(pool, tenants, texts, vecs, n, rng)
            load_s = time.perf_counter() - t
            res = await bench_retrieval(pool, tenants, queries, qvecs, n_queries,
                                        random.Random(n))
            res["load_and_index_s"] = round(load_s, 1)
            out["retrieval"][str(n)] = res
        await pool.close()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    settings = get_settings()
    out["settings"] = {"ef_search": settings.retrieval_ef_search,
                       "candidates": settings.retrieval_candidates,
                       "text_match_cap": settings.retrieval_text_match_cap,
                       "layout": "kb_chunks LIST-partitioned by tenant; "
                                 "HNSW m=16, ef_construction=128 per partition"}
    out["targets"] = {"vector_p99_ms_at_100k": 10, "fused_p99_ms": 20, "recall_at_5": 0.97}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2k chunks, 30 pages (CI)")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma-separated")
    parser.add_argument("--queries", type=int, default=0, help="queries per size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for embedding")
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=2, default=str))
