"""Hardening (issue 16, a first subset): what an attacker or a fuzzer sends gets a clean answer.

- ``/healthz`` names the failing dependency, never its exception text.
- Bearers that are not printable ASCII (non-ASCII, NUL) are a 401 on admin, user and widget routes.
- Allowed origins are strict ``scheme://host[:port]`` values, normalised; the widget compares the
  request's ``Origin`` normalised the same way.
- Client IPs: ``X-Forwarded-For`` is believed only from a trusted proxy
  (CHAT_ENGINE_TRUSTED_PROXIES), also when Serve's uvicorn already rewrote the peer from it.
- The widget token's budget counts only requests with a known token from an allowed origin;
  failures count against a smaller per-IP failure budget.
- The handoff marker is matched exactly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr
from starlette.requests import Request

from runtime.api import app as app_module
from runtime.api import deps
from runtime.api.client_ip import client_ip as _client_ip
from runtime.api.widget import normalize_origin
from runtime.config import Settings, load_settings
from runtime.errors import ConfigError, Unauthorized
from runtime.policy import HANDOFF_MARKER, OutputGuard
from tests.chat_helpers import ORIGIN, widget_channel
from tests.conftest import ADMIN_TOKEN, Services, TenantInfo

NON_ASCII_BEARER = "Bearer tökén".encode()  # httpx only sends bytes for non-ASCII header values


# ------------------------------------------------------------------ helpers
# The budgets the tests' stack runs with (conftest leaves the rate-limit defaults).
IP_LIMIT = Settings().rate_limit_ip_per_min
FAIL_LIMIT = Settings().rate_limit_failures_per_min
WT_LIMIT = Settings().rate_limit_widget_token_per_min


def _limits(services: Services) -> Any:
    from runtime.api.ratelimit import limiter

    return limiter(Settings(redis_url=services.redis_url))


async def _used(services: Services, key: str, limit: int) -> int:
    """Requests counted now against ``key``'s budget of ``limit`` a minute (the limiter's view)."""
    from limits import RateLimitItemPerMinute

    stats = await _limits(services).get_window_stats(RateLimitItemPerMinute(limit), key)
    return int(limit - stats.remaining)


async def _reset(services: Services, key: str, limit: int) -> None:
    """Empty ``key``'s budget, so a test's counts start at 0 (other tests share 127.0.0.1)."""
    from limits import RateLimitItemPerMinute

    await _limits(services).clear(RateLimitItemPerMinute(limit), key)


def _fresh_window() -> None:
    """Wait out the last seconds of the current minute, so a burst stays in one window."""
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.2)


async def _raw_get(app_url: str, path: str, authorization: bytes) -> int:
    """GET ``path`` with a raw ``Authorization`` value (httpx refuses to send NUL); the status."""
    url = urlsplit(app_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + url.netloc.encode()
                     + b"\r\nAuthorization: " + authorization + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    return int(status_line.split()[1])


def _request(peer: str, forwarded_for: list[str] | None = None, port: int = 50000) -> Request:
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded_for or []]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, port)})


# ------------------------------------------------------------------ 1. /healthz
async def _healthz(monkeypatch: pytest.MonkeyPatch, pool: Any, redis_url: str) -> httpx.Response:
    """``/healthz`` of an app whose context holds ``pool`` and a real Redis client on ``redis_url``
    (real servers, or a closed loopback port for a dependency that is down)."""
    from runtime.events import redis_client

    redis = redis_client(redis_url)
    ctx = type("Ctx", (), {"pool": pool, "redis": redis})()

    async def get_context() -> Any:
        return ctx

    monkeypatch.setattr(app_module, "get_context", get_context)
    transport = httpx.ASGITransport(app=app_module.create_app())
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.get("/healthz")
    finally:
        await redis.aclose()


async def test_healthz_names_the_failed_dependency_without_its_text(
    monkeypatch: pytest.MonkeyPatch, services: Services, db: Any
) -> None:
    """A dependency that is down (a closed loopback port, credentials in its URL) is "unavailable"
    with its exception class and the answer a 503; the exception's text (address, port,
    credentials) is not in the body. Twin: the real Postgres and Redis give a 200 "ok"."""
    import asyncpg

    from tests.conftest import free_port

    dead_pg, dead_redis = free_port(), free_port()
    down_pool = await asyncpg.create_pool(f"postgresql://app:hunter2@127.0.0.1:{dead_pg}/prod",
                                          min_size=0, max_size=1)
    try:
        r = await _healthz(monkeypatch, down_pool, services.redis_url)
        assert r.status_code == 503
        body = r.json()
        assert body["postgres"] == "unavailable" and body["redis"] == "ok"
        assert body["status"] == "degraded" and set(body["errors"]) == {"postgres"}
        assert "hunter2" not in r.text and str(dead_pg) not in r.text
    finally:
        await down_pool.close()

    r = await _healthz(monkeypatch, db, f"redis://:s3cretpw@127.0.0.1:{dead_redis}/0")
    assert r.status_code == 503
    assert r.json()["redis"] == "unavailable" and r.json()["postgres"] == "ok"
    assert "s3cretpw" not in r.text and str(dead_redis) not in r.text

    r = await _healthz(monkeypatch, db, services.redis_url)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


# ------------------------------------------------------------------ 2. bearers
@pytest.mark.parametrize("token", ["tökén", "ce_sk_a\x00b", "a\tb", "x" * 2000])
async def test_bearer_outside_printable_ascii_is_refused_before_any_lookup(token: str) -> None:
    """require_admin and require_user refuse a non-ASCII, NUL-containing, control-character or
    overlong bearer with Unauthorized, without touching the database (the pool would fail the
    test). Twin: the admin token itself passes require_admin."""
    class NoPool:
        def acquire(self) -> Any:
            raise AssertionError("the database was asked about an invalid key")

    settings = Settings(admin_token=SecretStr(ADMIN_TOKEN))
    ctx: Any = type("Ctx", (), {"settings": settings, "pool": NoPool()})()

    def request(value: str) -> Request:
        raw = f"Bearer {value}".encode("utf-8", "surrogatepass")
        return Request({"type": "http", "headers": [(b"authorization", raw)]})

    with pytest.raises(Unauthorized):
        await deps.require_admin(request(token), ctx)
    with pytest.raises(Unauthorized):
        await deps.require_user(request(token), ctx)
    await deps.require_admin(request(ADMIN_TOKEN), ctx)  # no raise


async def test_non_ascii_and_nul_bearers_are_401_on_the_live_app(
    client: httpx.AsyncClient, tenant: TenantInfo, app_url: str, admin_headers: dict[str, str],
) -> None:
    """Admin, user and widget routes answer a non-ASCII bearer with a 401 in the error envelope,
    and a NUL-containing bearer is never a server error. Twins: the right tokens work."""
    bad = {b"Authorization": NON_ASCII_BEARER}
    r = await client.post("/v1/tenants", json={"name": "x"}, headers=bad)
    assert r.status_code == 401 and r.json()["error"]["code"]
    r = await client.get("/v1/bot-config", headers=bad)
    assert r.status_code == 401 and r.json()["error"]["code"]
    r = await client.get(f"/v1/widget/sessions/{uuid.uuid4()}/messages", headers=bad)
    assert r.status_code == 401

    # NUL: the HTTP server may refuse the request line itself (400); the app says 401.
    assert await _raw_get(app_url, "/v1/bot-config", b"Bearer ce_sk_a\x00b") in (400, 401)
    assert await _raw_get(app_url, "/v1/bot-config", b"Bearer " + tenant.owner_key.encode()) == 200

    r = await client.get("/v1/bot-config", headers=tenant.headers)
    assert r.status_code == 200
    r = await client.post("/v1/tenants", json={"name": "bearer-ok"}, headers=admin_headers)
    assert r.status_code == 201


# ------------------------------------------------------------------ 3. origins
@pytest.mark.parametrize("bad", [
    "https://shop.example;script-src *", "https://shop.example https://evil.example",
    "https://shop.example,https://evil.example", "https://shop.example/path", "https://shop.example/?q=1",
    "https://user@shop.example", "https://user:pw@shop.example", "ftp://shop.example",
    "https://shop.example:0", "https://shop.example:70000", "https://", "shop.example",
    "https://shop_example.com", "https://sh op.example", "https://999.1.1.1", "https://[::g]",
    "https://shop.example#x", "javascript://shop.example", "https://shop.example:",
    "https://\u0455hop.example", "https://\u212aelvin.example",
])
def test_malformed_origins_are_refused(bad: str) -> None:
    """Anything beyond scheme://host[:port] (http/https) is not an origin."""
    assert normalize_origin(bad) is None


@pytest.mark.parametrize(("given", "expected"), [
    ("https://shop.example", "https://shop.example"),
    ("HTTPS://Shop.Example:443", "https://shop.example"),
    ("http://x.test:80", "http://x.test"),
    ("http://localhost:5000/", "http://localhost:5000"),
    ("https://shop.example:80", "https://shop.example:80"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://[0:0:0:0:0:0:0:1]:8443", "https://[::1]:8443"),
    ("https://xn--shp-jna.example", "https://xn--shp-jna.example"),
])
def test_good_origins_are_normalised(given: str, expected: str) -> None:
    """Origins are lower-cased, lose a trailing slash and the scheme's default port."""
    assert normalize_origin(given) == expected


async def test_channel_origins_validated_and_normalised(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    """POST /v1/channels refuses CSP-breaking or non-origin values with a 422 naming
    allowed_origins; good ones are stored normalised."""
    for bad in ["https://shop.example; script-src *", "https://shop.example/x", "ftp://shop.example",
                "https://a@shop.example", "https://shop.example:70000", "https://shop.example:0"]:
        r = await client.post("/v1/channels", headers=tenant.headers,
                              json={"type": "widget", "allowed_origins": [bad]})
        assert r.status_code == 422, bad
        assert r.json()["error"]["fields"][0]["field"].startswith("allowed_origins"), r.text
    r = await client.post("/v1/channels", headers=tenant.headers, json={
        "type": "widget", "allowed_origins": ["HTTPS://Shop.Example:443", "http://x.test:80",
                                              "http://127.0.0.1:8080/"]})
    assert r.status_code == 201, r.text
    assert r.json()["allowed_origins"] == ["https://shop.example", "http://x.test", "http://127.0.0.1:8080"]


async def test_widget_compares_the_normalised_origin(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    """An Origin equal to an allowed one after normalisation is allowed, answered with the
    canonical origin; a look-alike or a malformed Origin is a 403 without CORS."""
    channel = await widget_channel(client, tenant.headers)
    body = {"widget_token": channel["widget_token"]}
    for bad in ["https://shop.example.evil", "https://shop.example/x", "https://shop.example;x"]:
        r = await client.post("/v1/widget/sessions", json=body, headers={"Origin": bad})
        assert r.status_code == 403, bad
        assert "access-control-allow-origin" not in r.headers
    r = await client.post("/v1/widget/sessions", json=body, headers={"Origin": "https://SHOP.example:443"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN


# ------------------------------------------------------------------ 4. client IPs
def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    """Without trusted proxies, or from a peer outside them, the TCP peer is the client."""
    assert _client_ip(_request("127.0.0.1", ["203.0.113.9"]), []) == "127.0.0.1"
    assert _client_ip(_request("198.51.100.4", ["203.0.113.9"]), ["10.0.0.0/8"]) == "198.51.100.4"
    assert _client_ip(_request("127.0.0.1"), ["10.0.0.0/8"]) == "127.0.0.1"


def test_forwarded_for_is_used_from_a_trusted_proxy() -> None:
    """From a trusted proxy, the right-most X-Forwarded-For entry that is not a trusted proxy is
    the client; what the client wrote to its left is not believed."""
    trusted = ["10.0.0.0/8", "fd00::/8"]
    assert _client_ip(_request("10.0.0.5", ["203.0.113.9"]), trusted) == "203.0.113.9"
    # spoofed left-most entry, then the real client, then a second proxy of ours
    assert _client_ip(_request("10.0.0.5", ["6.6.6.6, 203.0.113.9, 10.1.2.3"]), trusted) == "203.0.113.9"
    assert _client_ip(_request("10.0.0.5", ["6.6.6.6", "203.0.113.9"]), trusted) == "203.0.113.9"
    assert _client_ip(_request("fd00::1", ["2001:db8::7"]), trusted) == "2001:db8::7"
    assert _client_ip(_request("::ffff:10.0.0.5", ["203.0.113.9"]), trusted) == "203.0.113.9"
    # garbage, or only proxies: the last trusted hop stands for the client
    assert _client_ip(_request("10.0.0.5", ["not-an-ip"]), trusted) == "10.0.0.5"
    assert _client_ip(_request("10.0.0.5", ["10.9.9.9"]), trusted) == "10.9.9.9"
    assert _client_ip(_request("10.0.0.5"), trusted) == "10.0.0.5"


def test_server_rewrite_of_the_peer_is_undone() -> None:
    """Serve's uvicorn (proxy headers on, FORWARDED_ALLOW_IPS loopback by default) hands the app a
    client taken from a loopback peer's X-Forwarded-For (port 0): that peer is loopback, not the
    claimed address, unless loopback is a trusted proxy of ours. Twin: a real peer that merely sent
    the header keeps its own address."""
    rewritten = _request("203.0.113.9", ["203.0.113.9"], port=0)
    assert _client_ip(rewritten, []) == "127.0.0.1"
    assert _client_ip(rewritten, ["10.0.0.0/8"]) == "127.0.0.1"
    assert _client_ip(rewritten, ["127.0.0.0/8"]) == "203.0.113.9"
    chained = _request("203.0.113.9", ["6.6.6.6, 203.0.113.9"], port=0)
    assert _client_ip(chained, []) == "127.0.0.1"
    assert _client_ip(chained, ["127.0.0.1"]) == "203.0.113.9"
    assert _client_ip(_request("198.51.100.4", ["203.0.113.9"], port=41000), []) == "198.51.100.4"


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_ENGINE_TRUSTED_PROXIES is a JSON list of CIDRs (normalised); a bad entry fails
    naming the variable. Default: none."""
    assert Settings().trusted_proxies == []
    monkeypatch.setenv("CHAT_ENGINE_TRUSTED_PROXIES", '["10.0.0.1/8", "::1"]')
    assert Settings().trusted_proxies == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("CHAT_ENGINE_TRUSTED_PROXIES", '["10.0.0.0/8", "proxy.internal"]')
    with pytest.raises(ConfigError, match="CHAT_ENGINE_TRUSTED_PROXIES"):
        load_settings()


async def test_spoofed_forwarded_for_does_not_escape_the_ip_limit(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
) -> None:
    """With the default settings, requests with a different X-Forwarded-For each count against
    the peer's (127.0.0.1) per-IP budget; nothing is counted for the spoofed addresses."""
    channel = await widget_channel(client, tenant.headers)
    _fresh_window()
    await _reset(services, "ip:127.0.0.1", IP_LIMIT)
    for spoofed in ["203.0.113.41", "203.0.113.42"]:
        r = await client.post("/v1/widget/sessions", json={"widget_token": channel["widget_token"]},
                              headers={"Origin": ORIGIN, "X-Forwarded-For": spoofed})
        assert r.status_code == 200, r.text
    assert await _used(services, "ip:127.0.0.1", IP_LIMIT) == 2
    assert await _used(services, "ip:203.0.113.41", IP_LIMIT) == 0
    assert await _used(services, "ip:203.0.113.42", IP_LIMIT) == 0


# ------------------------------------------------------------------ 5. widget-token budget
async def test_forged_origins_do_not_spend_the_widget_token_budget(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
) -> None:
    """Requests with a real widget token from a forged origin are 403s counted against the
    per-IP failure budget (30 a minute: then 429), never against the token's budget; a request
    from the real origin is counted there (and still succeeds after the forged burst)."""
    channel = await widget_channel(client, tenant.headers)
    token = channel["widget_token"]
    _fresh_window()
    await _reset(services, "fail:ip:127.0.0.1", FAIL_LIMIT)
    await _reset(services, "ip:127.0.0.1", IP_LIMIT)
    try:
        statuses = []
        for _ in range(FAIL_LIMIT + 1):
            r = await client.post("/v1/widget/sessions", json={"widget_token": token},
                                  headers={"Origin": "https://forged.example"})
            statuses.append(r.status_code)
        assert set(statuses[:-1]) == {403} and statuses[-1] == 429, statuses
        assert int(r.headers["retry-after"]) >= 1
        r = await client.post("/v1/widget/sessions", json={"widget_token": "wt_unknown_token"},
                              headers={"Origin": ORIGIN})
        assert r.status_code == 429  # unknown tokens share the failure budget
        assert await _used(services, f"wt:{token}", WT_LIMIT) == 0
        assert await _used(services, "wt:wt_unknown_token", WT_LIMIT) == 0

        r = await client.post("/v1/widget/sessions", json={"widget_token": token}, headers={"Origin": ORIGIN})
        assert r.status_code == 200, r.text
        assert await _used(services, f"wt:{token}", WT_LIMIT) == 1
    finally:
        # Leave the budgets shared by every test from 127.0.0.1 empty.
        await _reset(services, "fail:ip:127.0.0.1", FAIL_LIMIT)
        await _reset(services, "ip:127.0.0.1", IP_LIMIT)


# ------------------------------------------------------------------ 6. handoff marker
def _guard(text: str, *, split: int | None = None) -> tuple[str | None, str]:
    guard = OutputGuard("canary-0f3a9c")
    parts = [text] if split is None else [text[:split], text[split:]]
    out = "".join(guard.feed(p) for p in parts) + guard.flush()
    return guard.hit, out


@pytest.mark.parametrize("text", [
    "See our human-handoff-guide page for the details.",
    "The HUMAN_HANDOFF setting is in the dashboard.",
    "human handoff", "[human_handoff]", "[HUMAN-HANDOFF]", "[HUMAN HANDOFF]",
])
def test_handoff_marker_lookalikes_do_not_escalate(text: str) -> None:
    """Only the exact marker escalates: words, other case or punctuation are delivered as text."""
    assert _guard(text) == (None, text)


@pytest.mark.parametrize("split", [None, 3, 9])
def test_handoff_marker_itself_escalates(split: int | None) -> None:
    """The documented marker ([HUMAN_HANDOFF], exact case), alone or split across deltas, trips
    the guard and nothing of it is delivered."""
    assert HANDOFF_MARKER == "[HUMAN_HANDOFF]"
    assert _guard(HANDOFF_MARKER, split=split) == ("handoff_marker", "")
