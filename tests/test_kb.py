"""Knowledge base: crawl the fixture site over real HTTP, read PDFs, chunk, embed through the
deployed Embedder, store per tenant, hybrid retrieval, jobs, Q&A, CLI.

The help site is served by a real ``python -m http.server`` whose access log (stderr) is kept, so
"never fetched /internal/" is checked on the server side. The site and the PDFs are ingested once
per module (tenant ``kb_tenant``) and reused.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit
from uuid import UUID

import httpx
import numpy as np
import pytest

from tests.conftest import TenantInfo, free_port, make_tenant, wait_http

HEADER_TEXT = "Plausible Docs | Introduction | Add the script"
FOOTER_TEXTS = ("Made and hosted in the EU", "Content licensed CC BY-SA 4.0")
SECRET = "STAFF-ONLY-4242"


@dataclass
class SiteServer:
    """A static server on 127.0.0.1 and the file its access log goes to."""

    base: str
    log_path: Path

    def access_log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def kb_site(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    """``python -m http.server`` on the fixture site; its stderr is the access log."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("kb-site") / "access.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
             str(fixtures_dir / "kb-site"), str(port)],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/robots.txt")
        yield SiteServer(base=f"http://127.0.0.1:{port}", log_path=log_path)
    finally:
        proc.terminate()
        proc.wait(10)


async def wait_job(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str, timeout_s: float = 300
) -> dict[str, Any]:
    """Poll GET /v1/kb/jobs/{id} until completed or failed."""
    deadline = time.monotonic() + timeout_s
    seen = set()
    while True:
        r = await client.get(f"/v1/kb/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        seen.add(job["status"])
        if job["status"] in ("completed", "failed"):
            job["_seen_statuses"] = seen
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s} s"
        await asyncio.sleep(0.5)


async def search(client: httpx.AsyncClient, tenant: TenantInfo, query: str, k: int = 5
                 ) -> list[dict[str, Any]]:
    r = await client.post("/v1/kb/search", headers=tenant.headers, json={"query": query, "k": k})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def make_encrypted_pdf(src: Path) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(src))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_image_only_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_corrupt_pdf(src: Path) -> bytes:
    data = src.read_bytes()
    # A real header, then garbage where the objects and the cross-reference table should be.
    return data[:9] + os.urandom(4096)


@pytest.fixture(scope="module")
async def kb_client(app_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
async def kb_tenant(kb_client: httpx.AsyncClient) -> TenantInfo:
    return await make_tenant(kb_client, "kb-site-owner")


@pytest.fixture(scope="module")
async def site_job(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, kb_site: SiteServer
) -> dict[str, Any]:
    t0 = time.monotonic()
    r = await kb_client.post("/v1/kb/ingest", headers=kb_tenant.headers,
                             json={"url": f"{kb_site.base}/index.html"})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    job = await wait_job(kb_client, kb_tenant.headers, r.json()["id"])
    job["_elapsed_s"] = time.monotonic() - t0
    return job


@pytest.fixture(scope="module")
async def pdf_job(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, fixtures_dir: Path, site_job: Any
) -> dict[str, Any]:
    pdf = fixtures_dir / "kb-pdf" / "billing-guide.pdf"
    files = [
        ("file", ("billing-guide.pdf", pdf.read_bytes(), "application/pdf")),
        ("file", ("corrupt.pdf", make_corrupt_pdf(pdf), "application/pdf")),
        ("file", ("encrypted.pdf", make_encrypted_pdf(pdf), "application/pdf")),
        ("file", ("scanned.pdf", make_image_only_pdf(), "application/pdf")),
    ]
    r = await kb_client.post("/v1/kb/ingest", headers=kb_tenant.headers, files=files)
    assert r.status_code == 202, r.text
    return await wait_job(kb_client, kb_tenant.headers, r.json()["id"])


def expected_missing_paths(site_dir: Path) -> set[str]:
    """Oracle, independent of the crawler: on-site link targets (from every fixture page) that
    are neither a file of the site nor under /internal/."""
    pages = [ln.strip()[1:] for ln in (site_dir.parent / "kb-site-pages.txt").read_text()
             .splitlines() if ln.strip()]
    missing = set()
    for page in pages:
        html = (site_dir / page.lstrip("/")).read_text()
        for href in re.findall(r'<a\b[^>]*\bhref="([^"]*)"', html):
            url = urldefrag(urljoin(f"http://site.test{page}", href))[0]
            parts = urlsplit(url)
            if parts.netloc != "site.test" or parts.path.startswith("/internal/"):
                continue
            if not (site_dir / parts.path.lstrip("/")).is_file():
                missing.add(parts.path)
    return missing


# ---------------------------------------------------------------- crawling
async def test_crawl_ingests_exactly_the_listed_pages(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, site_job: dict[str, Any],
    kb_site: SiteServer, fixtures_dir: Path,
) -> None:
    job = site_job
    assert job["status"] == "completed", job
    assert {"completed"} <= job["_seen_statuses"]
    listed = {ln.strip()[1:] for ln in (fixtures_dir / "kb-site-pages.txt").read_text()
              .splitlines() if ln.strip()}
    assert len(listed) == 123
    r = await kb_client.get("/v1/kb/documents", headers=kb_tenant.headers,
                            params={"kind": "web", "limit": 1000})
    docs = r.json()
    sources = {d["source"] for d in docs["documents"]}
    assert docs["total"] == 123
    assert sources == {kb_site.base + p for p in listed}
    assert job["documents"] == 123 and job["pages_fetched"] == 123
    assert all(d["chunk_count"] >= 1 for d in docs["documents"])

    # Missing pages are recorded as 404 errors, each once, and nothing else failed.
    missing = expected_missing_paths(fixtures_dir / "kb-site")
    not_found = {e["source"].removeprefix(kb_site.base) for e in job["errors"]}
    assert all(e["status"] == 404 and "404" in e["error"] for e in job["errors"]), job["errors"]
    assert not_found == missing
    assert job["error_count"] == len(missing) == len(job["errors"])
    assert {"/billing.html", "/subscription-plans.html", "/invoice-email.html"} <= not_found

    # Off-site and protocol-relative links were seen and not followed.
    assert job["skipped"].get("offsite", 0) >= 15
    for d in docs["documents"]:
        assert d["source"].startswith(kb_site.base + "/")

    # The server never received a request for /internal/, and did receive the crawl.
    log = kb_site.access_log()
    assert "/internal/" not in log
    assert '"GET /robots.txt ' in log and '"GET /2fa.html ' in log
    assert '"GET /proxy/guides/nginx.html ' in log


async def test_no_boilerplate_or_disallowed_text_in_chunks(
    db: Any, kb_tenant: TenantInfo, site_job: dict[str, Any]
) -> None:
    from ingestion.chunking import load_tokenizer

    rows = await db.fetch(
        "SELECT c.text, c.section, c.token_count, d.source FROM kb_chunks c "
        "JOIN kb_documents d ON d.id = c.document_id WHERE c.tenant_id = $1 AND d.kind = 'web'",
        UUID(kb_tenant.id),
    )
    assert len(rows) == site_job["chunks"] > 123
    for row in rows:
        text = row["text"]
        assert HEADER_TEXT not in text
        for footer in FOOTER_TEXTS:
            assert footer not in text, (row["source"], text)
        assert SECRET not in text
        assert "useBaseUrl" not in text and "@context" not in text
    # Every chunk fits the embedding budget, counted again with the model's own tokenizer.
    tok = load_tokenizer()
    counts = [len(e.ids) for e in tok.encode_batch([r["text"] for r in rows],
                                                    add_special_tokens=False)]
    assert max(counts) <= 200
    # Headings travel with their sections.
    sections = {(r["source"].rsplit("/", 1)[-1], r["section"]) for r in rows}
    assert ("2fa.html", "How to generate new recovery codes") in sections
    recovery = [r["text"] for r in rows if r["section"] == "How to generate new recovery codes"]
    assert any(t.startswith("How to generate new recovery codes\n") for t in recovery)


# ---------------------------------------------------------------- PDFs and retrieval
async def test_pdf_pages_and_bad_pdfs_are_per_source_errors(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, pdf_job: dict[str, Any], db: Any,
) -> None:
    job = pdf_job
    assert job["status"] == "completed", job
    assert job["documents"] == 1
    errors = {e["source"]: e["error"] for e in job["errors"]}
    assert set(errors) == {"corrupt.pdf", "encrypted.pdf", "scanned.pdf"}
    assert "corrupt" in errors["corrupt.pdf"]
    assert "encrypted" in errors["encrypted.pdf"] and "password" in errors["encrypted.pdf"]
    assert "no extractable text" in errors["scanned.pdf"]
    # Nothing of the failed files was stored; the good one has chunks for every page.
    docs = (await kb_client.get("/v1/kb/documents", headers=kb_tenant.headers,
                                params={"kind": "pdf"})).json()["documents"]
    assert [d["source"] for d in docs] == ["billing-guide.pdf"]
    pages = await db.fetch(
        "SELECT DISTINCT page FROM kb_chunks WHERE document_id = $1 AND tenant_id = $2",
        UUID(docs[0]["id"]), UUID(kb_tenant.id),
    )
    assert {r["page"] for r in pages} == set(range(1, 13))
    chunks = (await kb_client.get(f"/v1/kb/documents/{docs[0]['id']}/chunks",
                                  headers=kb_tenant.headers)).json()
    assert len(chunks) == docs[0]["chunk_count"] and all(c["page"] for c in chunks)


async def test_free_trial_question_finds_the_pdf(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, pdf_job: dict[str, Any]
) -> None:
    hits = await search(kb_client, kb_tenant, "is there a free trial", k=5)
    assert len(hits) == 5
    top3 = [h["source"] for h in hits[:3]]
    assert "billing-guide.pdf" in top3, [(h["source"], h["section"]) for h in hits]
    pdf_hit = next(h for h in hits[:3] if h["source"] == "billing-guide.pdf")
    assert pdf_hit["page"] in range(1, 13)
    assert "trial" in pdf_hit["text"].lower()
    for h in hits:
        assert -1.0 <= h["similarity"] <= 1.0 and h["rrf_score"] > 0
    assert hits == sorted(hits, key=lambda h: -h["rrf_score"])
    assert any(h["text_rank"] is not None for h in hits)
    # A site question finds the site.
    hits = await search(kb_client, kb_tenant, "how do I enable two-factor authentication", k=3)
    assert hits[0]["source"].endswith("/2fa.html")
    assert hits[0]["similarity"] > 0.5


async def test_tenant_isolation_in_search(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, pdf_job: dict[str, Any],
    tenant: TenantInfo,
) -> None:
    r = await kb_client.post("/v1/kb/qa", headers=tenant.headers, json={
        "question": "Is there a free trial of the Model Z kettle subscription?",
        "answer": "Yes: the Model Z kettle subscription has a 7-day free trial, no card needed.",
    })
    assert r.status_code == 201, r.text
    b_chunks = set(r.json()["chunk_ids"])
    a_ids = {r["id"] for r in await search_ids(kb_client, kb_tenant, "is there a free trial")}
    b_hits = await search(kb_client, tenant, "is there a free trial", k=10)
    assert b_hits, "tenant B must find its own entry"
    assert {h["chunk_id"] for h in b_hits} == b_chunks
    assert not ({h["chunk_id"] for h in b_hits} & a_ids)
    assert all(h["source"].startswith("qa:") for h in b_hits)
    # And A does not see B's entry.
    a_hits = await search(kb_client, kb_tenant, "Model Z kettle subscription trial", k=10)
    assert a_hits and not ({h["chunk_id"] for h in a_hits} & b_chunks)
    # Another tenant's job and documents are 404.
    r = await kb_client.get(f"/v1/kb/jobs/{pdf_job['id']}", headers=tenant.headers)
    assert r.status_code == 404
    doc_id = a_hits[0]["document_id"]
    assert (await kb_client.delete(f"/v1/kb/documents/{doc_id}",
                                   headers=tenant.headers)).status_code == 404
    assert (await kb_client.get(f"/v1/kb/documents/{doc_id}",
                                headers=kb_tenant.headers)).status_code == 200


async def search_ids(client: httpx.AsyncClient, tenant: TenantInfo, q: str) -> list[dict[str, Any]]:
    return [{"id": h["chunk_id"]} for h in await search(client, tenant, q, k=20)]


async def test_reingest_swaps_chunks_and_keeps_the_count(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, pdf_job: dict[str, Any],
    fixtures_dir: Path, db: Any,
) -> None:
    pdf = (fixtures_dir / "kb-pdf" / "billing-guide.pdf").read_bytes()
    tid = UUID(kb_tenant.id)

    async def billing() -> tuple[int, set[int]]:
        rows = await db.fetch(
            "SELECT c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
            "WHERE d.tenant_id = $1 AND d.source = 'billing-guide.pdf'", tid)
        return len(rows), {r["id"] for r in rows}

    total_before = await db.fetchval("SELECT count(*) FROM kb_chunks WHERE tenant_id = $1", tid)
    n_before, ids_before = await billing()
    # Unchanged content: skipped, nothing rewritten.
    r = await kb_client.post("/v1/kb/ingest", headers=kb_tenant.headers,
                             files=[("pdf", ("billing-guide.pdf", pdf, "application/pdf"))])
    job = await wait_job(kb_client, kb_tenant.headers, r.json()["id"])
    assert job["status"] == "completed" and job["unchanged"] == 1 and job["documents"] == 0
    assert await billing() == (n_before, ids_before)
    # Forced: the chunks are swapped (new ids), the count is the same.
    r = await kb_client.post("/v1/kb/ingest", headers=kb_tenant.headers, data={"force": "true"},
                             files=[("pdf", ("billing-guide.pdf", pdf, "application/pdf"))])
    job = await wait_job(kb_client, kb_tenant.headers, r.json()["id"])
    assert job["status"] == "completed" and job["documents"] == 1
    n_after, ids_after = await billing()
    assert n_after == n_before and not (ids_after & ids_before)
    assert await db.fetchval(
        "SELECT count(*) FROM kb_chunks WHERE tenant_id = $1", tid) == total_before


# ---------------------------------------------------------------- Q&A, deletion, bad input
async def test_qa_is_searchable_on_return_and_deletable(
    client: httpx.AsyncClient, tenant: TenantInfo
) -> None:
    q = "Do you ship gift cards to Iceland?"
    r = await client.post("/v1/kb/qa", headers=tenant.headers,
                          json={"question": q, "answer": "Gift cards are digital; no shipping."})
    assert r.status_code == 201, r.text
    entry = r.json()
    hits = await search(client, tenant, "can gift cards be shipped to Iceland", k=3)
    assert hits[0]["chunk_id"] in entry["chunk_ids"] and hits[0]["similarity"] > 0.5
    assert hits[0]["text"].startswith(f"Q: {q}\nA: ")
    # The same question again replaces the answer (one document, new chunks).
    r = await client.post("/v1/kb/qa", headers=tenant.headers,
                          json={"question": q.upper(), "answer": "Yes, by e-mail, instantly."})
    assert r.status_code == 201 and r.json()["document_id"] == entry["document_id"]
    docs = (await client.get("/v1/kb/documents", headers=tenant.headers)).json()
    assert docs["total"] == 1 and docs["documents"][0]["metadata"]["answer"].startswith("Yes")
    hits = await search(client, tenant, "gift cards Iceland", k=3)
    assert "instantly" in hits[0]["text"]
    # Deleting the document removes its chunks.
    r = await client.delete(f"/v1/kb/documents/{entry['document_id']}", headers=tenant.headers)
    assert r.status_code == 204
    assert await search(client, tenant, "gift cards Iceland", k=3) == []
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": "", "answer": "x"})
    assert r.status_code == 422


class _BadSiteHandler(BaseHTTPRequestHandler):
    pages = {
        "/start.html": b"<html><head><title>Start</title></head><body><main><h1>Start</h1>"
        b"<p>Links to everything that can go wrong when crawling a small shop's help pages.</p>"
        b'<a href="/ok.html">ok</a> <a href="/image.png">image</a> <a href="/missing.html">x</a>'
        b' <a href="/to-offsite">off</a> <a href="/big.html">big</a>'
        b' <a href="/moved">moved</a></main></body></html>',
        "/ok.html": b"<html><head><title>Returns</title></head><body><main><h1>Returns policy"
        b"</h1><p>You can return any unused kettle within 30 days for a full refund.</p>"
        b"</main></body></html>",
        "/ok2.html": b"<html><head><title>Shipping</title></head><body><main><h1>Shipping</h1>"
        b"<p>Orders ship within two business days from our warehouse in Porto.</p>"
        b"</main></body></html>",
    }
    requests: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.requests.append(self.path)
        if self.path in self.pages:
            body = self.pages[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
        elif self.path == "/image.png":
            body = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        elif self.path == "/big.html":
            body = b"<html><body><p>" + b"big " * 800_000 + b"</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        elif self.path == "/to-offsite":
            self.send_response(302)
            self.send_header("Location", "http://offsite.invalid/landing.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        elif self.path == "/moved":
            self.send_response(301)
            self.send_header("Location", "/ok2.html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body = b"not found"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def test_bad_urls_are_per_source_errors(
    client: httpx.AsyncClient, tenant: TenantInfo
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadSiteHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        r = await client.post("/v1/kb/ingest", headers=tenant.headers,
                              json={"url": f"{base}/start.html"})
        assert r.status_code == 202, r.text
        job = await wait_job(client, tenant.headers, r.json()["id"], timeout_s=120)
    finally:
        server.shutdown()
        server.server_close()
    assert job["status"] == "completed", job
    errors = {e["source"].removeprefix(base): e["error"] for e in job["errors"]}
    assert set(errors) == {"/image.png", "/missing.html", "/to-offsite", "/big.html"}, errors
    assert "not an HTML page" in errors["/image.png"] and "image/png" in errors["/image.png"]
    assert errors["/missing.html"].startswith("HTTP 404")
    assert "off-site" in errors["/to-offsite"] and "offsite.invalid" in errors["/to-offsite"]
    assert "too large" in errors["/big.html"]
    docs = (await client.get("/v1/kb/documents", headers=tenant.headers)).json()["documents"]
    assert {d["source"].removeprefix(base) for d in docs} == {
        "/start.html", "/ok.html", "/ok2.html"}
    assert job["documents"] == 3
    hits = await search(client, tenant, "how long do I have to return a kettle", k=1)
    assert hits[0]["source"] == f"{base}/ok.html"


async def test_ingest_request_validation(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={})
    assert r.status_code == 422 and "nothing to ingest" in r.json()["error"]["message"]
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={"url": "ftp://x"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "url"
    r = await client.post("/v1/kb/ingest", json={"url": "http://example.com"})
    assert r.status_code == 401
    # Pasted Markdown is a valid source on its own.
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={
        "text": "# Opening hours\n\nWe are open 9-17 on weekdays.\n\n## Holidays\n\n"
                "Closed on public holidays.", "name": "hours.md", "title": "Opening hours"})
    assert r.status_code == 202
    job = await wait_job(client, tenant.headers, r.json()["id"], timeout_s=60)
    assert job["status"] == "completed" and job["documents"] == 1
    hits = await search(client, tenant, "are you open on public holidays", k=1)
    assert hits[0]["source"] == "hours.md" and hits[0]["section"] == "Holidays"


# ---------------------------------------------------------------- storage invariants, CLI
async def test_failed_replace_leaves_previous_version(db: Any) -> None:
    from runtime.db import kb_documents as kb_db

    async with db.acquire() as conn:
        tid = await conn.fetchval("INSERT INTO tenants (name) VALUES ('kb-tx') RETURNING id")
        rows = [kb_db.ChunkRow(ord=i, text=f"chunk {i}", title="T", section="", page=None,
                               token_count=2) for i in range(3)]
        vecs = np.eye(3, 384, dtype=np.float32)
        doc_id, ids = await kb_db.replace_document(
            conn, tid, source="doc", kind="text", title="T", content_hash="a", size_bytes=1,
            chunks=rows, embeddings=vecs)
        bad = np.ones((2, 383), dtype=np.float32)  # wrong dimension: the insert fails
        with pytest.raises(Exception, match="383|dimension"):
            await kb_db.replace_document(
                conn, tid, source="doc", kind="text", title="T2", content_hash="b",
                size_bytes=1, chunks=rows[:2], embeddings=bad)
        kept = await conn.fetch("SELECT id FROM kb_chunks WHERE document_id = $1", doc_id)
        assert sorted(r["id"] for r in kept) == ids
        doc = await kb_db.get_document(conn, tid, doc_id)
        assert doc["title"] == "T" and doc["content_hash"] == "a" and doc["chunk_count"] == 3
        assert await kb_db.delete_document(conn, tid, doc_id) == 3
        assert await conn.fetchval(
            "SELECT count(*) FROM kb_chunks WHERE document_id = $1", doc_id) == 0
        await conn.execute("DELETE FROM tenants WHERE id = $1", tid)


async def test_no_btree_on_chunk_tenant_and_hnsw_used(db: Any) -> None:
    rows = await db.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'kb_chunks'")
    defs = [r["indexdef"] for r in rows]
    assert any("USING hnsw (embedding vector_cosine_ops)" in d for d in defs)
    assert any("USING gin (tsv)" in d for d in defs)
    assert not any(re.search(r"btree \(tenant_id", d) for d in defs), defs
    assert any(re.search(r"btree \(id, tenant_id\)", d) for d in defs), defs  # the primary key


async def test_each_tenant_has_its_own_chunk_partition(db: Any) -> None:
    async with db.acquire() as conn:
        tid, other = [await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id", name)
            for name in ("kb-part-a", "kb-part-b")]
        part, other_part = "kb_chunks_t" + tid.hex, "kb_chunks_t" + other.hex
        for p in (part, other_part):
            assert await conn.fetchval("SELECT to_regclass($1)::text", p) == p
        # Its own HNSW index, and a search for the tenant reads that partition alone.
        idx = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", part)
        assert any("USING hnsw (embedding vector_cosine_ops)" in r["indexdef"] for r in idx)
        storage = await conn.fetchval(  # vectors inline, not TOASTed (fast exact scans)
            "SELECT attstorage FROM pg_attribute WHERE attrelid = $1::regclass "
            "AND attname = 'embedding'", part)
        assert storage == b"p"
        # A knowledge base big enough that the planner prefers the graph over a scan and sort.
        doc = await conn.fetchval(
            "INSERT INTO kb_documents (tenant_id, source, kind, content_hash) "
            "VALUES ($1, 'bulk', 'text', 'h') RETURNING id", tid)
        vecs = np.random.default_rng(3).normal(size=(8000, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        await conn.copy_records_to_table(
            "kb_chunks", records=[(tid, doc, i, "x", 1, vecs[i]) for i in range(len(vecs))],
            columns=("tenant_id", "document_id", "ord", "text", "token_count", "embedding"))
        await conn.execute(f"ANALYZE {part}")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT id FROM kb_chunks WHERE tenant_id = $1 "
            "ORDER BY embedding <=> $2 LIMIT 5", tid, vecs[0]))
        assert f"on {part}" in plan and "embedding_idx" in plan, plan
        assert other_part not in plan
        # A new tenant's partition is attached while a search holds kb_chunks open (no
        # ACCESS EXCLUSIVE lock that would queue every search behind it).
        async with db.acquire() as reader, reader.transaction():
            await reader.fetchval("SELECT count(*) FROM kb_chunks WHERE tenant_id = $1", tid)
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                third = await conn.fetchval(
                    "INSERT INTO tenants (name) VALUES ('kb-part-c') RETURNING id")
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'kb_chunks'::regclass "
            "AND inhrelid = to_regclass($1)", "kb_chunks_t" + third.hex) == 1
        await conn.execute("DELETE FROM tenants WHERE id = $1", third)
        # Deleting a tenant drops its partition with it, and only its own.
        await conn.execute("DELETE FROM tenants WHERE id = $1", tid)
        assert await conn.fetchval("SELECT to_regclass($1)", part) is None
        assert await conn.fetchval("SELECT to_regclass($1)::text", other_part) == other_part
        await conn.execute("DELETE FROM tenants WHERE id = $1", other)


class _SlowEmbedder:
    """The deployed Embedder behind a delay: a source whose embedding takes ``delay_s``."""

    def __init__(self, handle: Any, delay_s: float) -> None:
        self.handle, self.delay_s = handle, delay_s

    async def embed_many(self, texts: list[str]) -> Any:
        await asyncio.sleep(self.delay_s)
        return await self.handle.embed_many.remote(texts)

    async def embed(self, text: str) -> Any:
        return await self.handle.embed.remote(text)


async def test_running_job_heartbeats_through_a_long_source(app_url: str, db: Any) -> None:
    from ray import serve

    from ingestion.jobs import IngestSpec, run_job
    from runtime.config import get_settings
    from runtime.db import kb_jobs as kb_db

    settings = get_settings().model_copy(update={"kb_job_heartbeat_s": 0.3})
    embedder = _SlowEmbedder(serve.get_deployment_handle("Embedder", app_name="chat"), 3.0)
    async with db.acquire() as conn:
        tid = await conn.fetchval("INSERT INTO tenants (name) VALUES ('kb-beat') RETURNING id")
        job = await kb_db.create_job(conn, tid, {})
    spec = IngestSpec(text="# Returns\n\nBikes can be returned within 30 days.", name="returns")
    task = asyncio.create_task(run_job(db, embedder, job["id"], tid, spec, settings=settings))
    beats: set[Any] = set()
    while not task.done():
        row = await db.fetchrow("SELECT status, heartbeat_at FROM kb_jobs WHERE id = $1", job["id"])
        if row["status"] == "running":
            beats.add(row["heartbeat_at"])
        await asyncio.sleep(0.1)
    state = await task
    # One source stalled for 3 s with no progress to write, and the job still reported alive.
    assert len(beats) >= 4, beats
    assert state.status == "completed" and state.documents == 1
    done = await db.fetchrow("SELECT status FROM kb_jobs WHERE id = $1", job["id"])
    assert done["status"] == "completed"
    await db.execute("DELETE FROM tenants WHERE id = $1", tid)


async def test_orphaned_job_is_failed_and_a_live_one_kept(
    kb_client: httpx.AsyncClient, kb_tenant: TenantInfo, db: Any
) -> None:
    tid = UUID(kb_tenant.id)
    orphan, live = [await db.fetchval(
        "INSERT INTO kb_jobs (tenant_id, status, started_at, heartbeat_at) "
        "VALUES ($1, 'running', now() - interval '1 hour', now() - $2::text::interval) RETURNING id",
        tid, age) for age in ("1 hour", "0 seconds")]
    try:
        # The Timekeeper sweeps every kb_job_heartbeat_s (1 s in tests); stale after 120 s.
        deadline = time.monotonic() + 30
        while True:
            r = await kb_client.get(f"/v1/kb/jobs/{orphan}", headers=kb_tenant.headers)
            job = r.json()
            if job["status"] != "running" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert job["status"] == "failed", job
        assert "interrupted" in job["message"] and "submit the job again" in job["message"]
        assert job["finished_at"] is not None
        r = await kb_client.get(f"/v1/kb/jobs/{live}", headers=kb_tenant.headers)
        assert r.json()["status"] == "running" and r.json()["message"] is None
    finally:
        await db.execute("DELETE FROM kb_jobs WHERE id = ANY($1::uuid[])", [orphan, live])


def test_cli_ingest_pdf_with_progress(
    services: Any, fixtures_dir: Path, tmp_path: Path
) -> None:
    import asyncpg

    async def new_tenant() -> str:
        conn = await asyncpg.connect(services.database_url)
        try:
            return str(await conn.fetchval(
                "INSERT INTO tenants (name) VALUES ('kb-cli') RETURNING id"))
        finally:
            await conn.close()

    tid = asyncio.run(new_tenant())
    notes = tmp_path / "notes.md"
    notes.write_text("# Warranty\n\nEvery kettle has a two-year warranty.\n")
    env = {**os.environ, "COLUMNS": "120"}
    exe = str(Path(sys.executable).parent / "chat-engine")
    proc = subprocess.run(
        [exe, "ingest", "--tenant", tid, "--embedder", "local",
         "--pdf", str(fixtures_dir / "kb-pdf" / "billing-guide.pdf"), "--pdf", str(notes)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "completed: 2 documents" in out and "0 errors" in out
    assert "ingesting" in out and "2/2" in out  # the progress bar's last state
    bad = subprocess.run(
        [exe, "ingest", "--tenant", "not-a-uuid", "--pdf",
         str(notes)], env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "not a tenant id" in bad.stdout + bad.stderr
