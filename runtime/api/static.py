"""The widget's static side: ``/widget.js`` for host pages, the iframe chat page, its assets, the
greeting for the launcher bubble, the ``/demo`` page that ``chat-engine up`` sets up, and the
agents' inbox page (``/inbox``, with the owner's dashboard script when it is installed).

The chat page is served per widget token so that it can send ``Content-Security-Policy:
frame-ancestors`` with exactly the channel's allowed origins (only those sites may frame it).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

import widget
from runtime.api.admin import public_base, widget_snippet
from runtime.api.deps import Ctx
from runtime.api.widget import normalize_origin
from runtime.bot_config import BotConfig
from runtime.db import bot_configs, channels, inbox_hours

router = APIRouter(tags=["widget"], include_in_schema=False)

WIDGET_DIR = Path(next(iter(widget.__path__))).resolve()
DEMO_FILE = "demo.json"
ASSET_TYPES = {
    "widget.js": "text/javascript; charset=utf-8",
    "frame.js": "text/javascript; charset=utf-8",
    "frame.css": "text/css; charset=utf-8",
    "inbox.js": "text/javascript; charset=utf-8",
    "inbox.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "vendor/chart.umd.min.js": "text/javascript; charset=utf-8",
}
VENDOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(?:js|css)")
# The inbox page: same-origin only, nothing inline, never framed (clickjacking), no referrer.
INBOX_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSET_CACHE = "public, max-age=300"
FRAME_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
)


@lru_cache(maxsize=16)
def _read(name: str) -> tuple[bytes, str]:
    """A widget file's bytes and a strong ETag (read once per process)."""
    data = (WIDGET_DIR / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _asset(name: str, request: Request) -> Response:
    data, etag = _read(name)
    headers = {"Cache-Control": ASSET_CACHE, "ETag": etag, "X-Content-Type-Options": "nosniff",
               "Cross-Origin-Resource-Policy": "cross-origin"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ASSET_TYPES[name], headers=headers)


@router.get("/widget.js")
async def widget_js(request: Request) -> Response:
    """The host-page script (cacheable; the widget token is read from its own tag)."""
    return _asset("widget.js", request)


@router.get("/widget/frame.js")
async def frame_js(request: Request) -> Response:
    """The chat window's script."""
    return _asset("frame.js", request)


@router.get("/widget/frame.css")
async def frame_css(request: Request) -> Response:
    """The chat window's styles."""
    return _asset("frame.css", request)


@router.get("/widget/inbox.js")
async def inbox_js(request: Request) -> Response:
    """The inbox page's script."""
    return _asset("inbox.js", request)


@router.get("/widget/inbox.css")
async def inbox_css(request: Request) -> Response:
    """The inbox page's styles."""
    return _asset("inbox.css", request)


@router.get("/widget/dashboard.js")
async def dashboard_js(request: Request) -> Response:
    """The owner's dashboard (charts; installed with the analytics), 404 until it is."""
    return _optional_asset("dashboard.js", request)


@router.get("/widget/dashboard.css")
async def dashboard_css(request: Request) -> Response:
    """The dashboard's styles, 404 until installed."""
    return _optional_asset("dashboard.css", request)


@router.get("/widget/vendor/{name}")
async def vendor_asset(name: str, request: Request) -> Response:
    """A library vendored for the dashboard (``widget/vendor/*.js`` or ``*.css``), 404 otherwise."""
    if not VENDOR_NAME.fullmatch(name) or not (WIDGET_DIR / "vendor" / name).is_file():
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    data, etag = _read("vendor/" + name)
    headers = {"Cache-Control": ASSET_CACHE, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    kind = "text/css; charset=utf-8" if name.endswith(".css") else "text/javascript; charset=utf-8"
    return Response(data, media_type=kind, headers=headers)


def _optional_asset(name: str, request: Request) -> Response:
    if not (WIDGET_DIR / name).is_file():
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    return _asset(name, request)


@router.get("/inbox")
async def inbox_page() -> Response:
    """The agents' inbox (login, queue, conversations, the owner's dashboard)."""
    return HTMLResponse(_read("inbox.html")[0], headers={
        "Content-Security-Policy": INBOX_CSP,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    })


def _error_page(status: int, title: str, text: str) -> HTMLResponse:
    body = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<body style='font:15px system-ui;margin:2em'><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p>")
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/widget/frame")
async def frame(ctx: Ctx, wt: str = "") -> Response:
    """The iframe chat page of one widget channel, framable only by its allowed origins."""
    async with ctx.pool.acquire() as conn:
        channel = await channels.channel_by_widget_token(conn, wt) if wt else None
    if channel is None:
        return _error_page(404, "Chat not found",
                           "Unknown widget token: copy the snippet from the channel again.")
    # Only well-formed origins reach the CSP (rows stored before origins were validated may hold
    # `;` or spaces, which would add directives).
    origins = [o for o in (normalize_origin(x) for x in channel["allowed_origins"] if x) if o]
    page = _read("frame.html")[0].decode().replace("{{ALLOWED_ORIGINS}}", html.escape(" ".join(origins)))
    return HTMLResponse(page, headers={
        "Content-Security-Policy": FRAME_CSP.format(ancestors=" ".join(origins) or "'none'"),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    })


@router.get("/widget/config")
async def widget_config(request: Request, ctx: Ctx, wt: str = "") -> Response:
    """The bot's name and greeting for the launcher bubble, and whether the team is offline
    (business hours); no session is created.

    Answered with CORS only for the channel's allowed origins; unknown token: 404.
    """
    origin = normalize_origin(request.headers.get("origin") or "") or ""
    async with ctx.pool.acquire() as conn:
        channel = await channels.channel_by_widget_token(conn, wt) if wt else None
        if channel is None:
            return JSONResponse({"error": {"code": "not_found", "message": "unknown widget token"}},
                                status_code=404)
        cfg = BotConfig.model_validate(
            (await bot_configs.get_bot_config(conn, channel["tenant_id"]))["config"]
        )
        hours = (await inbox_hours.get_inbox_settings(conn, channel["tenant_id"])).business_hours
    headers = {"Cache-Control": "no-store", "Vary": "Origin"}
    if origin and origin in {normalize_origin(o) for o in channel["allowed_origins"]}:
        headers["Access-Control-Allow-Origin"] = origin
    return JSONResponse({"bot_name": cfg.bot_name, "greeting": cfg.greeting,
                         "offline": not hours.is_open(inbox_hours.now_utc())}, headers=headers)


def demo_info(data_dir: Path) -> dict[str, Any] | None:
    """The demo tenant's ids and widget token stored by ``runtime.demo`` (None: no demo yet)."""
    path = Path(data_dir).expanduser() / DEMO_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@router.get("/demo")
async def demo(request: Request, ctx: Ctx) -> Response:
    """A sample host page with the demo tenant's widget on it."""
    info = demo_info(ctx.settings.data_dir) or {}
    channel = None
    if info.get("widget_token"):
        async with ctx.pool.acquire() as conn:
            channel = await channels.channel_by_widget_token(conn, str(info["widget_token"]))
    if channel is None:
        return _error_page(404, "No demo yet",
                           "The demo tenant is created by `chat-engine up` on its first start "
                           "(with the models deployed).")
    base = public_base(request, ctx)
    snippet = widget_snippet(html.escape(base, quote=True), html.escape(channel["widget_token"], quote=True))
    page = _read("demo.html")[0].decode()
    page = page.replace("{{BUSINESS}}", html.escape(str(info.get("business", "Demo"))))
    page = page.replace("{{SNIPPET_TEXT}}", html.escape(snippet)).replace("{{SNIPPET}}", snippet)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})
