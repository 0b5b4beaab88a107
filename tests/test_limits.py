"""Bounded input on the live stack: request bodies capped while they stream, invalid text and
out-of-range integers refused with the field named, the framework's own errors in the project's
envelope, a per-tenant cap on ingestion jobs, rate limits through the ``limits`` library (and
what happens when Redis is gone), and server-signed visitor ids.

Traffic goes to loopback only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import types
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI, Request

from runtime.api.ratelimit import rate_limit
from runtime.config import Settings
from runtime.db import kb_jobs
from runtime.errors import DependencyUnavailable, RateLimited
from tests.conftest import TenantInfo

MB = 1024 * 1024


def _raw_request(app_url: str, head: str) -> tuple[int, bytes, bool]:
    """Send ``head`` alone, no body byte, and read the answer; returns (status, response bytes,
    whether the server then closed the connection). A raw socket, so an answer that comes before
    the body is seen as such: a server that waits for the body never answers here."""
    u = urlsplit(app_url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    try:
        sock.sendall(head.encode())
        data = _read_response(sock)
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = False
    finally:
        sock.close()
    return int(data.split(b" ", 2)[1]), data, closed


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response from ``sock``: its head and a body of its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


def _body_json(data: bytes) -> Any:
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


# ------------------------------------------------------------------ bodies
def test_declared_oversized_upload_refused_before_the_body(app_url: str, tenant: TenantInfo) -> None:
    """A 50 MB upload that says so in Content-Length gets 413 before any of its body is sent,
    and the server closes the connection rather than wait for the body."""
    u = urlsplit(app_url)
    head = (f"POST /v1/kb/ingest HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {tenant.owner_key}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {50 * MB}\r\n\r\n")
    status, data, closed = _raw_request(app_url, head)
    assert status == 413, data[:300]
    assert _body_json(data)["error"]["code"] == "payload_too_large"
    assert closed, "the server kept the connection open for a body it refused"


def test_refused_body_still_arriving_gets_its_413_not_a_reset(app_url: str, tenant: TenantInfo) -> None:
    """A JSON body over the cap, declared and sent in pieces over ~0.3 s (a client on a slow
    link): the server reads it to its end before answering, so every piece is sent without a
    reset and the client reads the 413. (Answering at once and closing the connection while the
    body was still arriving reset it, and the client lost the 413: seen in CI.)"""
    u = urlsplit(app_url)
    size = 3 * MB // 2
    head = (f"POST /v1/kb/qa HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {tenant.owner_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n")
    body = (b'{"question": "q", "answer": "' + b"x" * size)[:size]
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    try:
        sock.sendall(head.encode())
        piece = len(body) // 15 + 1
        for i in range(0, len(body), piece):
            sock.sendall(body[i:i + piece])  # a reset here fails the test
            time.sleep(0.02)
        data = _read_response(sock)
    finally:
        sock.close()
    assert int(data.split(b" ", 2)[1]) == 413, data[:300]
    assert _body_json(data)["error"]["code"] == "payload_too_large"
    # Within the cap, the same route accepts.
    r = httpx.post(f"{app_url}/v1/kb/qa", headers=tenant.headers, timeout=60,
                   json={"question": "Do you ship abroad?", "answer": "Yes, to the EU."})
    assert r.status_code == 201, r.text


def test_chunked_upload_refused_before_the_body(app_url: str, tenant: TenantInfo) -> None:
    """A body without Content-Length is 411 before any of it is sent (Serve would queue it
    before the app could count it), and the connection is closed; the same upload with its
    length is accepted (the positive twin)."""
    u = urlsplit(app_url)
    head = (f"POST /v1/kb/ingest HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {tenant.owner_key}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, data, closed = _raw_request(app_url, head)
    assert status == 411, data[:300]
    assert _body_json(data)["error"]["code"] == "length_required"
    assert closed, "the server kept the connection open for a body it refused"
    r = httpx.post(f"{app_url}/v1/kb/ingest", headers=tenant.headers, timeout=60,
                   files={"file": ("hours.md", b"# Hours\n\nWe open at nine.", "text/markdown")})
    assert r.status_code == 202, r.text


async def test_body_counted_while_streaming_behind_another_server() -> None:
    """The middleware itself, as any ASGI server drives it: a body whose chunks pass the cap
    (declared length or not) ends in 413 at the first chunk past it, and the app never gets the
    rest; a body within the cap reaches the app whole."""
    from runtime.api.bodylimit import BodyLimitMiddleware
    from runtime.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    wrapped = BodyLimitMiddleware(app, Settings(max_request_body_bytes=4096))

    async def call(chunks: list[bytes]) -> tuple[int, Any, int]:
        pending = list(chunks)
        given = 0
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            nonlocal given
            body = pending.pop(0) if pending else b""
            given += len(body)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [], "query_string": b"",
                 "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("127.0.0.1", 1),
                 "root_path": ""}
        await wrapped(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return status, json.loads(body), given

    status, body, given = await call([b"x" * 1000] * 20)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert given <= 5000, given  # stopped at the chunk that passed 4096
    status, body, _ = await call([b"x" * 1000] * 4)
    assert status == 200 and body == {"bytes": 4000}


async def test_json_bodies_capped_and_text_limited(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    """A JSON body over CHAT_ENGINE_MAX_REQUEST_BODY_BYTES is 413; ingestion text over its own
    limit is 422 naming ``text``; within both, the same routes accept."""
    big = "x" * (1_100_000)
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": "q", "answer": big})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={"text": "y" * 2_000_001})
    assert r.status_code == 422 and r.json()["error"]["field"] == "text", r.text[:300]
    r = await client.post("/v1/kb/qa", headers=tenant.headers,
                          json={"question": "Do you ship abroad?", "answer": "Yes, to the EU."})
    assert r.status_code == 201, r.text


# ------------------------------------------------------------------ input hygiene
async def test_nul_and_non_characters_refused_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    """NUL, U+FFFF and whitespace-only text are 422 with the field named (nothing stored); the
    same request with clean text is stored."""
    for question in ["Do you\u0000 ship?", "Do you ship?\uffff", " \u3000 "]:
        r = await client.post("/v1/kb/qa", headers=tenant.headers,
                              json={"question": question, "answer": "Yes."})
        assert r.status_code == 422, (question, r.text)
        fields = r.json()["error"]["fields"]
        assert fields[0]["field"] == "question" and "pattern" not in fields[0]["message"], fields
    r = await client.post("/v1/kb/qa", headers=tenant.headers,
                          json={"question": "Do you ship?", "answer": "Yes."})
    assert r.status_code == 201, r.text
    docs = (await client.get("/v1/kb/documents", headers=tenant.headers, params={"kind": "qa"})).json()
    assert docs["total"] == 1


async def test_integer_parameters_bounded(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    """A huge offset is 422 naming it (it used to reach Postgres and fail with 500); a normal
    one answers."""
    r = await client.get("/v1/kb/documents", headers=tenant.headers,
                         params={"offset": 208451683612107737002934272})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "offset", r.text
    r = await client.get("/v1/kb/documents", headers=tenant.headers, params={"offset": 10})
    assert r.status_code == 200 and r.json()["documents"] == []


async def test_framework_errors_use_the_envelope(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    """Malformed JSON, an unknown route and a wrong method answer with ``{"error": ...}``; a 405
    lists every method of the path in ``Allow``."""
    r = await client.post("/v1/kb/qa", headers={**tenant.headers, "content-type": "application/json"},
                          content=b'{"question": ')
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input" and "detail" not in r.json()
    r = await client.get("/v1/no-such-route", headers=tenant.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.request("OPTIONS", "/v1/channels", headers=tenant.headers)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}, r.headers
    r = await client.get("/v1/outbox/redrive", headers=tenant.headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST", (r.status_code, r.headers)
    r = await client.get("/v1/channels", headers=tenant.headers)
    assert r.status_code == 200


async def test_channel_setup_schema_names_what_each_type_needs(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    """An SMS channel without its account SID is 422 naming config.account_sid; unknown fields
    are refused; a complete one is created."""
    r = await client.post("/v1/channels", headers=tenant.headers, json={"type": "sms"})
    assert r.status_code == 422
    assert {f["field"] for f in r.json()["error"]["fields"]} >= {"config", "secrets"}, r.text
    good = {"type": "sms", "config": {"account_sid": "AC" + "0" * 32, "from_number": "+14155552671"},
            "secrets": {"auth_token": "tok"}}
    r = await client.post("/v1/channels", headers=tenant.headers, json={**good, "extra": 1})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "extra", r.text
    r = await client.post("/v1/channels", headers=tenant.headers, json=good)
    assert r.status_code == 201 and r.json()["config"]["from_number"] == "+14155552671", r.text


# ------------------------------------------------------------------ ingestion jobs
async def test_ingestion_jobs_capped_per_tenant(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any,
) -> None:
    """With CHAT_ENGINE_MAX_INGESTION_JOBS_PER_TENANT (2) jobs pending, a third is 429 with
    Retry-After and creates nothing; once one finishes, the next is accepted. Two racing
    requests at the cap's edge cannot both pass (a per-tenant lock)."""
    tid = UUID(tenant.id)
    async with db.acquire() as conn:
        held = [await kb_jobs.create_job(conn, tid, {"files": []}) for _ in range(2)]
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={"text": "hello"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    assert "ingestion jobs" in r.json()["error"]["message"]
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM kb_jobs WHERE tenant_id = $1", tid) == 2
        await conn.execute("UPDATE kb_jobs SET status = 'completed' WHERE id = $1", held[0]["id"])

    async def one() -> str:
        async with db.acquire() as conn:
            try:
                await kb_jobs.create_job(conn, tid, {"files": []}, max_active=2)
                return "created"
            except RateLimited:
                return "refused"

    results = sorted(await asyncio.gather(one(), one(), one()))
    assert results == ["created", "refused", "refused"], results
    async with db.acquire() as conn:
        await conn.execute("UPDATE kb_jobs SET status = 'completed' WHERE tenant_id = $1", tid)
    r = await client.post("/v1/kb/ingest", headers=tenant.headers, json={"text": "hello"})
    assert r.status_code == 202, r.text


# ------------------------------------------------------------------ rate limits
async def test_rate_limit_counts_and_fails_open_or_closed(services: Any) -> None:
    """The limits-based budget refuses the (N+1)th request with a Retry-After within a minute;
    with Redis unreachable it lets requests through (fail open, the default) or answers 503
    (fail closed), as configured."""
    ctx = types.SimpleNamespace(settings=Settings(redis_url=services.redis_url))
    key = f"test:{uuid4()}"
    for _ in range(3):
        await rate_limit(ctx, key, 3)
    with pytest.raises(RateLimited) as err:
        await rate_limit(ctx, key, 3)
    assert 1 <= err.value.retry_after_s <= 60
    with socket.socket() as s:  # a closed loopback port
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    open_ctx = types.SimpleNamespace(settings=Settings(redis_url=dead, rate_limit_fail_open=True))
    assert await rate_limit(open_ctx, "k", 1) is None  # let through
    with pytest.raises(DependencyUnavailable):
        await rate_limit(types.SimpleNamespace(
            settings=Settings(redis_url=dead, rate_limit_fail_open=False)), "k", 1)


# ------------------------------------------------------------------ visitor ids
async def test_visitor_ids_are_signed_by_the_server(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any,
) -> None:
    """A session returns a signed visitor_id; sending it back keeps the contact. A made-up,
    altered or other channel's id is ignored: a new contact and a new id (so nobody can take over
    another visitor's contact by naming it)."""
    origin = "https://visitors.test"
    ids = []
    for _ in range(2):
        r = await client.post("/v1/channels", headers=tenant.headers,
                              json={"type": "widget", "allowed_origins": [origin]})
        ids.append(r.json()["widget_token"])
    wt, other_wt = ids

    async def session(token: str, visitor: str | None) -> dict[str, Any]:
        r = await client.post("/v1/widget/sessions", headers={"Origin": origin},
                              json={"widget_token": token, "visitor_id": visitor})
        assert r.status_code == 200, r.text
        return r.json()

    async def contact(session_id: str) -> Any:
        async with db.acquire() as conn:
            return await conn.fetchval("SELECT contact_id FROM sessions WHERE id = $1", UUID(session_id))

    first = await session(wt, None)
    visitor = first["visitor_id"]
    assert visitor.startswith("v1.") and len(visitor) > 40
    again = await session(wt, visitor)
    assert again["visitor_id"] == visitor
    assert await contact(again["session_id"]) == await contact(first["session_id"])
    foreign = (await session(other_wt, None))["visitor_id"]
    for forged in ["visitor-123", visitor[:-2] + ("AA" if not visitor.endswith("AA") else "BB"), foreign]:
        s = await session(wt, forged)
        assert s["visitor_id"] not in (forged, visitor), forged
        assert await contact(s["session_id"]) != await contact(first["session_id"]), forged
