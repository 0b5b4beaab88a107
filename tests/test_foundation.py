"""Foundation: migrations, auth and tenant isolation, bot-config validation, settings errors,
embedded Postgres persistence. All on the real embedded Postgres/Redis and the deployed app."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import Services, TenantInfo, make_tenant

FOUNDATION_TABLES = {
    "tenants", "users", "bot_configs", "channels", "contacts", "sessions", "messages",
    "leads", "escalations", "events", "usage",
}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    return {r["tablename"] for r in rows}


async def test_migrations_from_empty_database(services: Services) -> None:
    from runtime.db.migrate import current_revision, downgrade, upgrade

    admin = await asyncpg.connect(services.database_url)
    name = "migtest_" + os.urandom(4).hex()
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        dsn = services.database_url.rsplit("/", 1)[0] + f"/{name}"
        assert current_revision(dsn) is None
        await asyncio.to_thread(upgrade, dsn)
        conn = await asyncpg.connect(dsn)
        try:
            assert FOUNDATION_TABLES <= await _tables(conn)
            ext = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
            assert ext is not None
        finally:
            await conn.close()
        head = current_revision(dsn)
        assert head is not None
        # Down to empty and up again: every revision is reversible.
        await asyncio.to_thread(downgrade, dsn, "base")
        conn = await asyncpg.connect(dsn)
        try:
            assert not (FOUNDATION_TABLES & await _tables(conn))
        finally:
            await conn.close()
        await asyncio.to_thread(upgrade, dsn)
        assert current_revision(dsn) == head
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_missing_or_wrong_key_is_401(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    r = await client.get("/v1/bot-config")
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = await client.get("/v1/bot-config", headers={"Authorization": "Bearer ce_sk_wrong"})
    assert r.status_code == 401
    r = await client.get("/v1/bot-config", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["tenant_id"] == tenant.id


async def test_admin_token_required_for_tenants(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/tenants", json={"name": "x"}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401
    created = await make_tenant(client, "admin-ok")
    assert created.owner_key.startswith("ce_sk_")


async def test_tenant_cannot_see_another_tenants_rows(
    client: httpx.AsyncClient, tenant: TenantInfo
) -> None:
    other = await make_tenant(client, "other-tenant")
    r = await client.post(
        "/v1/channels", headers=tenant.headers,
        json={"type": "widget", "name": "site", "allowed_origins": ["https://shop.example"]},
    )
    assert r.status_code == 201, r.text
    channel = r.json()
    assert channel["widget_token"].startswith("wt_")
    assert channel["widget_token"] in channel["snippet"]
    assert "/widget.js" in channel["snippet"]

    # Owner reads its own channel (200); the other tenant gets 404, never 403.
    assert (await client.get(f"/v1/channels/{channel['id']}", headers=tenant.headers)).status_code == 200
    r = await client.get(f"/v1/channels/{channel['id']}", headers=other.headers)
    assert r.status_code == 404
    listed = (await client.get("/v1/channels", headers=other.headers)).json()
    assert channel["id"] not in [c["id"] for c in listed]
    mine = (await client.get("/v1/channels", headers=tenant.headers)).json()
    assert channel["id"] in [c["id"] for c in mine]

    # Bot config changes stay within the tenant.
    r = await client.patch("/v1/bot-config", headers=other.headers, json={"greeting": "Other hi"})
    assert r.status_code == 200
    mine_cfg = (await client.get("/v1/bot-config", headers=tenant.headers)).json()
    assert mine_cfg["config"]["greeting"] != "Other hi"
    other_cfg = (await client.get("/v1/bot-config", headers=other.headers)).json()
    assert other_cfg["config"]["greeting"] == "Other hi"


async def test_agent_key_cannot_administer(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    r = await client.post("/v1/users", headers=tenant.headers, json={"name": "Ana", "role": "agent"})
    assert r.status_code == 201
    agent_key = r.json()["api_key"]
    r = await client.patch(
        "/v1/bot-config", headers={"Authorization": f"Bearer {agent_key}"}, json={"greeting": "x"}
    )
    assert r.status_code == 403
    users = (await client.get("/v1/users", headers=tenant.headers)).json()
    assert {"Ana", "Owner"} <= {u["name"] for u in users}


async def test_invalid_bot_config_is_422_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantInfo
) -> None:
    r = await client.patch(
        "/v1/bot-config", headers=tenant.headers,
        json={"escalation": {"negative_sentiment_threshold": 7}},
    )
    assert r.status_code == 422
    body = r.json()["error"]
    assert "escalation.negative_sentiment_threshold" in body["message"]
    r = await client.patch("/v1/bot-config", headers=tenant.headers, json={"greting": "typo"})
    assert r.status_code == 422
    assert "greting" in r.json()["error"]["message"]
    # The valid twin is accepted and stored.
    r = await client.patch(
        "/v1/bot-config", headers=tenant.headers,
        json={"greeting": "Hello there", "escalation": {"keywords": ["refund"]}, "status": "paused"},
    )
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["config"]["greeting"] == "Hello there"
    assert cfg["config"]["escalation"]["keywords"] == ["refund"]
    assert cfg["status"] == "paused"


async def test_widget_channel_needs_origins(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    r = await client.post("/v1/channels", headers=tenant.headers, json={"type": "widget"})
    assert r.status_code == 422
    assert "allowed_origins" in r.json()["error"]["message"]
    r = await client.post(
        "/v1/channels", headers=tenant.headers,
        json={"type": "widget", "allowed_origins": ["not an origin"]},
    )
    assert r.status_code == 422
    r = await client.post(
        "/v1/channels", headers=tenant.headers,
        json={"type": "widget", "allowed_origins": ["http://localhost:5000/"]},
    )
    assert r.status_code == 201
    assert r.json()["allowed_origins"] == ["http://localhost:5000"]


async def test_openapi_and_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/tenants" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


def test_embedded_postgres_restart_keeps_data() -> None:
    from runtime.services import EmbeddedPostgres

    pgdata = Path(tempfile.mkdtemp(prefix="pg-restart-")) / "pg"

    async def write(dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        await conn.close()

    async def read(dsn: str) -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT v FROM kept")
        finally:
            await conn.close()

    pg = EmbeddedPostgres(pgdata)
    asyncio.run(write(pg.start()))
    pg.stop()
    pg2 = EmbeddedPostgres(pgdata)
    try:
        assert asyncio.run(read(pg2.start())) == "still here"
    finally:
        pg2.stop()


def test_invalid_settings_fail_naming_the_variable() -> None:
    from runtime.config import load_settings
    from runtime.errors import ConfigError

    assert load_settings(port=8123).port == 8123
    with pytest.raises(ConfigError, match="CHAT_ENGINE_PORT"):
        load_settings(port="not-a-port")
    with pytest.raises(ConfigError, match="CHAT_ENGINE_ADMIN_TOKEN"):
        load_settings(environment="production", admin_token=None)
    # The launcher itself refuses to start and names the variable.
    env = {**os.environ, "CHAT_ENGINE_DATABASE_URL": "mysql://nope", "CHAT_ENGINE_DATA_DIR":
           tempfile.mkdtemp()}
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "up"], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "CHAT_ENGINE_DATABASE_URL" in proc.stdout + proc.stderr
