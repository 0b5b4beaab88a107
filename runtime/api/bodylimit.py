"""Request-body caps enforced while the body streams in (ASGI middleware).

A declared ``Content-Length`` over the route's cap is refused with 413 before the app reads the
body; a body of up to :data:`DRAIN_MAX_BYTES` is read to its end and dropped first, so that a
client still sending it can read the 413 (a bigger one is refused before a byte is read). A
body without one (``Transfer-Encoding: chunked``) is refused with 411: Serve's HTTP proxy and
replica queue a request's body as it arrives, before the app reads it (measured: a
chunked 50 MB upload grew them by 54 and 89 MB before any answer), so only a length known up
front can be refused without holding the body. Behind another server the body is also counted
as it arrives and refused with 413 at the first byte past the cap. Caps, in bytes:

- ``/v1/kb/ingest``: ``CHAT_ENGINE_UPLOAD_MAX_BYTES`` plus 64 KiB for the multipart framing and
  form fields (each file is checked against the cap again while it is read);
- ``/v1/webhooks/...``: ``CHAT_ENGINE_WEBHOOK_MAX_BODY_BYTES``;
- everything else: ``CHAT_ENGINE_MAX_REQUEST_BODY_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from runtime.config import Settings, get_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORM_OVERHEAD_BYTES = 64 * 1024
DRAIN_MAX_BYTES = 16 * 1024 * 1024
"""A refused body up to this size is read and dropped before the 413 goes out. Closing a
connection while the client is still sending its body makes the client's TCP stack reset it, and
the reset discards the 413 the client had not read yet: the client sees a broken connection, not
the error. Serve's proxy has already queued such a body, so reading it costs little. Bigger bodies
are refused at once."""
DRAIN_TIMEOUT_S = 10.0  # a client that trickles its refused body is not waited for longer


class BodyTooLarge(HTTPException):
    """The body passed its cap while streaming (413). An HTTPException so the framework's own
    body parsing passes it on instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes: send less "
                              "(upload large files one at a time)")


def body_limit(path: str, settings: Settings) -> int:
    """The cap in bytes for a request to ``path``."""
    if path == "/v1/kb/ingest":
        return settings.upload_max_bytes + FORM_OVERHEAD_BYTES
    if path.startswith("/v1/webhooks/"):
        return settings.webhook_max_body_bytes
    return settings.max_request_body_bytes


class BodyLimitMiddleware:
    """Wraps an ASGI app; see the module doc. ``settings``: defaults to :func:`get_settings`."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"], self.settings or get_settings())
        declared = _content_length(scope)
        if declared is None and _chunked(scope):
            await _refuse(send, "send the body with a Content-Length header: chunked request "
                                "bodies are not accepted", status=411, code="length_required")
            return
        if declared is not None and declared > limit:
            if declared <= DRAIN_MAX_BYTES:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_drain(receive), DRAIN_TIMEOUT_S)
            await _refuse(send, f"the request body of {declared} bytes is over the limit of {limit} "
                                "bytes: send less (upload large files one at a time)")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def _drain(receive: Receive) -> None:
    """Read the request body to its end (or the client's disconnect) and drop it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" and b"chunked" in value.lower()
               for name, value in scope.get("headers", ()))


async def _refuse(send: Send, message: str, *, status: int = 413, code: str = "payload_too_large") -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
