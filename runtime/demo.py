"""The demo tenant that ``chat-engine up`` creates on its first start.

It goes through the running app's own HTTP API at ``base_url`` (admin token, then the demo owner's
key), so it exercises exactly what a new user would: create a tenant, set the persona, create a
widget channel allowing the base URL's origin, and ingest the shipped sample knowledge base
(``widget/sample_kb``: a fictional bike-repair shop) or the ``--site`` / ``--pdf`` given. The ids
and the widget token are kept in ``<data dir>/demo.json`` so later starts reuse the demo; the
``/demo`` page (``runtime.api.static``) reads the same file. The demo owner also gets an inbox
login (``owner-<tenant id prefix>@example.com``, login emails being unique across tenants, and a
generated password, kept in the same file, mode 0600), so the agents' page at ``/inbox`` can be
tried at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from runtime.config import Settings

log = logging.getLogger(__name__)

DEMO_FILE = "demo.json"
SAMPLE_KB = Path(__file__).resolve().parent.parent / "widget" / "sample_kb"
BUSINESS = "Spoke & Sprocket Bicycle Repair"
DEMO_CONFIG = {
    "bot_name": "Sarah",
    "business_name": BUSINESS,
    "greeting": "Hi! Got questions? I'm Sarah",
    "persona": "You are Sarah, the friendly assistant of Spoke & Sprocket, a small bike-repair "
    "shop. Answer briefly and only from the shop's information.",
}
HEALTH_WAIT_S = 300.0
INGEST_WAIT_S = 600.0


def demo_origins(base_url: str) -> list[str]:
    """The origins the demo widget accepts: the base URL's, plus its localhost/127.0.0.1 twin."""
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    out = [origin]
    host = (parts.hostname or "").lower()
    twin = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host)
    if twin:
        netloc = twin + (f":{parts.port}" if parts.port else "")
        out.append(f"{parts.scheme}://{netloc}")
    return out


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _store(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.chmod(0o600)  # holds the demo owner's API key
    tmp.replace(path)


def _check(r: httpx.Response, what: str) -> dict[str, Any]:
    if r.status_code >= 400:
        raise RuntimeError(f"{what} failed: HTTP {r.status_code} {r.text[:300]}")
    return dict(r.json())


async def _wait_healthy(client: httpx.AsyncClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app at {client.base_url} did not become healthy in {timeout_s:.0f} s")
        await asyncio.sleep(1.0)


async def _ingest(
    client: httpx.AsyncClient, headers: dict[str, str], site: str | None, pdf: Path | None,
    wait_s: float,
) -> dict[str, Any]:
    """Start one ingestion job (the site and/or PDF given, else the sample KB) and wait for it."""
    data: dict[str, str] = {}
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    if site:
        data["url"] = site
    if pdf is not None:
        files.append(("file", (pdf.name, Path(pdf).expanduser().read_bytes(), "application/pdf")))
    if not site and pdf is None:
        for path in sorted(SAMPLE_KB.glob("*.md")):
            files.append(("file", (path.name, path.read_bytes(), "text/markdown")))
    if files:
        r = await client.post("/v1/kb/ingest", data=data, files=files, headers=headers)
    else:
        r = await client.post("/v1/kb/ingest", json=data, headers=headers)
    job = _check(r, "starting the demo ingestion")
    deadline = time.monotonic() + wait_s
    while job["status"] in ("pending", "running") and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        job = _check(await client.get(f"/v1/kb/jobs/{job['id']}", headers=headers), "ingestion job")
    return job


async def ensure_demo(
    settings: Settings, database_url: str, base_url: str, site: str | None = None,
    pdf: Path | None = None, *, wait_s: float = HEALTH_WAIT_S, ingest_wait_s: float = INGEST_WAIT_S,
) -> dict[str, Any] | None:
    """Create the demo tenant on first start (reuse it later); returns
    ``{"snippet", "tenant_id", "widget_token", "demo_url", "inbox_url", "inbox_email",
    "inbox_password"}``, or None when it could not be set up
    (the reason is logged; the service keeps running).

    ``database_url`` is accepted for the launcher's signature; everything goes through the API.
    A ``site``/``pdf`` given on a later start is ingested into the existing demo tenant.
    """
    del database_url
    path = Path(settings.data_dir).expanduser() / DEMO_FILE
    assert settings.admin_token is not None
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    base = base_url.rstrip("/")
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            await _wait_healthy(client, wait_s)
            info = _load(path)
            if info is not None:
                owner = {"Authorization": f"Bearer {info.get('owner_api_key', '')}"}
                r = await client.get("/v1/channels", headers=owner)
                tokens = [c.get("widget_token") for c in r.json()] if r.status_code == 200 else []
                if info.get("widget_token") in tokens:
                    if "inbox_password" not in info:  # a demo made before the inbox existed
                        info.update(await _inbox_login(client, owner, info["tenant_id"]))
                        _store(path, info)
                    if site or pdf is not None:
                        job = await _ingest(client, owner, site, pdf, ingest_wait_s)
                        log.info("demo ingestion job %s: %s", job["id"], job["status"])
                    return _result(info, base)
                log.info("the stored demo tenant is gone (new database?): creating it again")
            tenant = _check(await client.post("/v1/tenants", json={"name": BUSINESS}, headers=admin),
                            "creating the demo tenant")
            owner = {"Authorization": f"Bearer {tenant['owner_api_key']}"}
            _check(await client.patch("/v1/bot-config", json=DEMO_CONFIG, headers=owner),
                   "configuring the demo bot")
            channel = _check(await client.post("/v1/channels", headers=owner, json={
                "type": "widget", "name": "demo website", "allowed_origins": demo_origins(base),
            }), "creating the demo widget channel")
            info = {
                "tenant_id": tenant["tenant_id"], "owner_api_key": tenant["owner_api_key"],
                "channel_id": channel["id"], "widget_token": channel["widget_token"],
                "business": BUSINESS,
            }
            info.update(await _inbox_login(client, owner, tenant["tenant_id"]))
            _store(path, info)
            job = await _ingest(client, owner, site, pdf, ingest_wait_s)
            if job["status"] != "completed":
                log.warning("demo ingestion job %s ended %s: %s", job["id"], job["status"],
                            job.get("errors"))
            info["ingest_job"] = job["id"]
            _store(path, info)
            return _result(info, base)
    except (RuntimeError, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        log.warning("the demo could not be set up: %s", exc)
        return None


async def _inbox_login(client: httpx.AsyncClient, owner: dict[str, str], tenant_id: str) -> dict[str, str]:
    """Create the demo's inbox login (an owner, ``owner-<tenant id prefix>@example.com``, with a
    generated password); returns ``{"inbox_email", "inbox_password"}``, or ``{}`` when the API
    refuses (logged: the demo works without it)."""
    email, password = f"owner-{tenant_id[:8]}@example.com", secrets.token_urlsafe(12)
    try:
        _check(await client.post("/v1/users", headers=owner, json={
            "name": "Demo owner", "email": email, "role": "owner", "password": password,
        }), "creating the demo's inbox login")
    except RuntimeError as exc:
        log.warning("%s", exc)
        return {}
    return {"inbox_email": email, "inbox_password": password}


def _result(info: dict[str, Any], base: str) -> dict[str, Any]:
    token = info["widget_token"]
    return {
        "snippet": f'<script src="{base}/widget.js" data-widget-token="{token}" async></script>',
        "tenant_id": info["tenant_id"], "widget_token": token, "demo_url": f"{base}/demo",
        "inbox_url": f"{base}/inbox", "inbox_email": info.get("inbox_email"),
        "inbox_password": info.get("inbox_password"),
    }
