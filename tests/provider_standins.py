"""Local stand-ins for the third-party send APIs that the channel senders call.

This machine cannot reach the real providers (Meta's Graph API for WhatsApp, the Telegram Bot API,
Twilio, Mailgun, the Slack Web API), and tests must never call them anyway. ``ProviderStandIns`` is
one Starlette app, served by uvicorn in a background thread on 127.0.0.1, that speaks each
provider's *documented* send request and response shapes, records what it accepted, and can be
told to fail or to answer slowly. It is a stand-in, not an emulator: only the send call of each
provider exists, and only the fields the senders use are checked.

Routes, below the prefixes in ``base_urls`` (what the senders append):

- whatsapp  ``POST /graph/v21.0/{phone_number_id}/messages``, ``Authorization: Bearer <token>``,
  json ``{messaging_product: "whatsapp", to, type: "text", text: {body}}`` -> 200
  ``{messaging_product, contacts: [{input, wa_id}], messages: [{id: "wamid.…"}]}``;
  no bearer -> 401 ``{error: {message, type: "OAuthException", code: 190}}``; bad body -> 400 code 100.
- telegram  ``POST /telegram/bot{token}/sendMessage``, json or form ``{chat_id, text}`` -> 200
  ``{ok: true, result: {message_id, chat: {id}, text, date}}``; bad body -> 400
  ``{ok: false, error_code: 400, description: "Bad Request: …"}``; wrong token -> 401.
- sms (Twilio)  ``POST /twilio/2010-04-01/Accounts/{AccountSid}/Messages.json``, Basic auth
  (AccountSid, AuthToken), form ``To, From | MessagingServiceSid, Body`` -> 201
  ``{sid: "SM<32 hex>", status: "queued", to, from, body, …}``; no auth -> 401
  ``{code: 20003, message: "Authenticate", status: 401}``.
- email (Mailgun)  ``POST /mailgun/v3/{domain}/messages``, Basic auth ("api", key), form
  ``from, to, subject, text | html`` (+ ``h:In-Reply-To``, ``h:References``) -> 200
  ``{id: "<2026…@domain>", message: "Queued. Thank you."}``; no auth -> 401 ``Forbidden``.
- slack  ``POST /slack/api/chat.postMessage``, ``Authorization: Bearer xoxb-…``, json or form
  ``{channel, text, thread_ts?}`` -> 200 ``{ok: true, channel, ts: "<unix>.<6 digits>", message}``;
  no token -> 200 ``{ok: false, error: "not_authed"}`` (Slack reports errors inside HTTP 200).
- zendesk (Tickets API)  ``POST /zendesk/{subdomain}/api/v2/tickets.json``, Basic auth
  (``{email}/token``, api token), json ``{ticket: {subject?, comment: {body}, priority?, requester?,
  tags?, external_id?}}`` -> 201 ``{ticket: {id, url, subject, description, priority, status: "new",
  tags, external_id, …}}`` with ``x-idempotency-lookup: miss``; the same ``Idempotency-Key`` again
  with the same body -> the first answer with ``x-idempotency-lookup: hit`` and no new ticket;
  with another body -> 400 (this error's shape is the stand-in's); no or wrong auth -> 401
  ``{error: "Couldn't authenticate you"}``; no comment body or a bad priority -> 422
  ``{error: "RecordInvalid", description: "Record validation errors", details}``.
- webhook (a generic receiver, not a provider)  ``POST /hooks/{name}``: records the headers and
  the raw body (``Delivery.raw``) of any JSON POST and answers 200 ``{ok: true}``; verifying a
  signature is the test's job.

``fail_next(..., after_commit=True)`` (zendesk, webhook) accepts and records the request, then
answers with the failure anyway: the answer of a request that succeeded is lost (a gateway timeout
after the commit), which is what makes a sender retry something already done.

A request is *accepted* when it reaches a provider's success answer; only those are recorded as
``Delivery``. Every request, accepted or not, counts in ``attempts(provider)``.

Delays model a slow provider: the handler reads the body, sleeps, then checks whether the client
is still there. If the client disconnected during the delay (it timed out), the request is treated
as not accepted and is not recorded: it models a provider that never completed the exchange.
``hold(provider)`` keeps requests the same way until ``release(provider)``, so a test can act
(kill a sender) while a request is certainly in flight, on a machine of any speed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

PROVIDERS = ("whatsapp", "telegram", "sms", "email", "slack", "zendesk", "webhook")
# The credential names ``expect_credentials`` takes, per provider.
CREDENTIALS = {"whatsapp": {"token"}, "telegram": {"token"}, "sms": {"account_sid", "auth_token"},
               "email": {"api_key"}, "slack": {"token"}, "zendesk": {"email", "api_token"},
               "webhook": set()}
ZENDESK_PRIORITIES = ("low", "normal", "high", "urgent")


@dataclass(frozen=True)
class Delivery:
    """One accepted send: who it was for, what it said, and what the provider answered with."""

    provider: str  # "whatsapp" | "telegram" | "sms" | "email" | "slack"
    path: str
    recipient: str  # to / chat_id / To / to / channel
    text: str  # text.body / text / Body / text / text
    payload: dict[str, Any]  # the parsed json or form body
    headers: dict[str, str]
    provider_message_id: str  # wamid.… / message_id / SM… / <…@domain> / ts / ticket id / ""
    received_at: float = field(default_factory=time.monotonic)
    raw: bytes = b""  # the body as received (webhook receivers check signatures over it)


@dataclass
class _Faults:
    fail_remaining: int = 0
    fail_always: bool = False
    status: int = 503
    retry_after: float | None = None
    body: Any = None
    delay_s: float = 0.0
    held: bool = False
    creds: dict[str, str] = field(default_factory=dict)
    after_commit: bool = False


class _Reject(Exception):
    """Raised by a provider's ``send`` to answer with ``response`` (a rejection, not recorded)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _fault_body(provider: str, status: int, retry_after: float | None) -> tuple[int, Any]:
    """The provider's own error shape for an injected failure: (http status, json body)."""
    if provider == "whatsapp":
        code, msg = (130429, "(#130429) Rate limit hit") if status == 429 else (2, "Service unavailable")
        return status, {"error": {"message": msg, "type": "OAuthException", "code": code,
                                  "fbtrace_id": secrets.token_hex(8)}}
    if provider == "telegram":
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": f"HTTP {status}"}
        if status == 429:
            body["description"] = f"Too Many Requests: retry after {int(retry_after or 1)}"
            body["parameters"] = {"retry_after": int(retry_after or 1)}
        return status, body
    if provider == "sms":
        return status, {"code": 20429 if status == 429 else 20500 + status % 100,
                        "message": "Too Many Requests" if status == 429 else "Service Unavailable",
                        "more_info": "https://www.twilio.com/docs/errors", "status": status}
    if provider == "email":
        return status, {"message": "Too many requests" if status == 429 else "Service Unavailable"}
    if provider in ("zendesk", "webhook"):
        return status, {"error": "Too Many Requests" if status == 429 else "Service Unavailable"}
    return status, {"ok": False, "error": "ratelimited" if status == 429 else "service_unavailable"}


def _basic_auth(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        user, sep, password = base64.b64decode(value).decode().partition(":")
        if sep and user and password:
            return user, password
    return None


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class ProviderStandIns:
    """The five stand-ins on one local port. ``with ProviderStandIns() as s:`` starts and stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._attempts = dict.fromkeys(PROVIDERS, 0)
        self._abandoned = dict.fromkeys(PROVIDERS, 0)
        self._parked = dict.fromkeys(PROVIDERS, 0)
        self._faults = {p: _Faults() for p in PROVIDERS}
        self._ids = itertools.count(1)
        self._zendesk_keys: dict[str, tuple[bytes, int, Any]] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = Starlette(routes=[
            Route("/graph/v21.0/{phone_number_id}/messages", self._whatsapp, methods=["POST"]),
            Route("/telegram/bot{token}/sendMessage", self._telegram, methods=["POST"]),
            Route("/twilio/2010-04-01/Accounts/{sid}/Messages.json", self._twilio, methods=["POST"]),
            Route("/mailgun/v3/{domain}/messages", self._mailgun, methods=["POST"]),
            Route("/slack/api/chat.postMessage", self._slack, methods=["POST"]),
            Route("/zendesk/{subdomain}/api/v2/tickets.json", self._zendesk, methods=["POST"]),
            Route("/hooks/{name}", self._webhook, methods=["POST"]),
        ])

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ProviderStandIns:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="provider-standins", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the provider stand-ins did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ProviderStandIns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_urls(self) -> dict[str, str]:
        root = f"http://127.0.0.1:{self.port}"
        return {"whatsapp_api_base": f"{root}/graph/v21.0", "telegram_api_base": f"{root}/telegram",
                "twilio_api_base": f"{root}/twilio", "mailgun_api_base": f"{root}/mailgun",
                "slack_api_base": f"{root}/slack/api", "zendesk_api_base": f"{root}/zendesk/{{subdomain}}"}

    def env(self) -> dict[str, str]:
        """``CHAT_ENGINE_WHATSAPP_API_BASE`` … ``CHAT_ENGINE_ZENDESK_API_BASE`` pointing here."""
        return {f"CHAT_ENGINE_{k.upper()}": v for k, v in self.base_urls.items()}

    def webhook_url(self, name: str) -> str:
        """A generic webhook receiver's URL here (``POST /hooks/{name}``)."""
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    # -- records -----------------------------------------------------------------------------------
    def deliveries(self, provider: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if provider in (None, d.provider)]

    def attempts(self, provider: str) -> int:
        """All requests this provider got, accepted, rejected or abandoned."""
        with self._lock:
            return self._attempts[provider]

    def abandoned(self, provider: str) -> int:
        """Requests whose client went away while they were delayed or held (answered 499, not
        recorded)."""
        with self._lock:
            return self._abandoned[provider]

    def parked(self, provider: str) -> int:
        """Requests held now (see ``hold``)."""
        with self._lock:
            return self._parked[provider]

    def clear(self) -> None:
        with self._lock:
            self._deliveries.clear()
            self._attempts = dict.fromkeys(PROVIDERS, 0)
            self._abandoned = dict.fromkeys(PROVIDERS, 0)
            self._zendesk_keys.clear()

    def _met(self, provider: str, count: int) -> list[Delivery] | None:
        got = self.deliveries(provider)
        return got if len(got) >= count else None

    def _timeout(self, provider: str, count: int, timeout_s: float) -> AssertionError:
        got = [(d.recipient, d.text) for d in self.deliveries(provider)]
        return AssertionError(f"{provider}: wanted {count} deliveries in {timeout_s}s, got {len(got)} "
                              f"({self.attempts(provider)} attempts): {got!r}")

    async def wait_for(self, provider: str, count: int = 1, timeout_s: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while (got := self._met(provider, count)) is None:
            if time.monotonic() > deadline:
                raise self._timeout(provider, count, timeout_s)
            await asyncio.sleep(0.02)
        return got

    def wait_for_sync(self, provider: str, count: int = 1, timeout_s: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while (got := self._met(provider, count)) is None:
            if time.monotonic() > deadline:
                raise self._timeout(provider, count, timeout_s)
            time.sleep(0.02)
        return got

    # -- faults ------------------------------------------------------------------------------------
    def fail_next(self, provider: str, n: int = 1, status: int = 503, retry_after: float | None = None,
                  body: Any = None, *, after_commit: bool = False) -> None:
        """Fail the next ``n`` requests with ``status`` (body: the provider's error shape by default).
        after_commit: accept (and record) each first, then answer with the failure: a lost answer."""
        with self._lock:
            f = self._faults[provider]
            f.fail_remaining, f.status, f.retry_after, f.body = n, status, retry_after, body
            f.after_commit = after_commit

    def fail_always(self, provider: str, status: int = 503, retry_after: float | None = None,
                    body: Any = None) -> None:
        """Fail every request until ``recover(provider)``."""
        with self._lock:
            f = self._faults[provider]
            f.fail_always, f.status, f.retry_after, f.body = True, status, retry_after, body
            f.after_commit = False

    def recover(self, provider: str) -> None:
        with self._lock:
            f = self._faults[provider]
            f.fail_always, f.fail_remaining, f.after_commit = False, 0, False

    def delay(self, provider: str, seconds: float) -> None:
        """Answer each request after ``seconds``; abandoned ones (client gone) are not recorded."""
        with self._lock:
            self._faults[provider].delay_s = seconds

    def hold(self, provider: str) -> None:
        """Keep every request (read, not answered) until ``release(provider)``: a provider stuck
        mid-exchange, for as long as a test needs, however slow the machine. A held request whose
        client goes away is abandoned (499, not recorded) as soon as that is seen."""
        with self._lock:
            self._faults[provider].held = True

    def release(self, provider: str) -> None:
        """Let held requests (and new ones) through."""
        with self._lock:
            self._faults[provider].held = False

    def expect_credentials(self, provider: str, **creds: str) -> None:
        """Accept only these credentials (names in ``CREDENTIALS``); default: any non-empty one."""
        if unknown := set(creds) - CREDENTIALS[provider]:
            raise ValueError(f"{provider} has no credential {sorted(unknown)}")
        with self._lock:
            self._faults[provider].creds = dict(creds)

    def reset(self) -> None:
        """Clear faults, delays, expected credentials and records."""
        with self._lock:
            for f in self._faults.values():
                f.held = False  # a request parked on the old faults goes on
            self._faults = {p: _Faults() for p in PROVIDERS}
        self.clear()

    # -- the shared request path -------------------------------------------------------------------
    async def _handle(self, provider: str, request: Request, send: Any) -> Response:
        """Count, read, delay, inject faults, then ``send(payload, creds)`` -> (response, Delivery)."""
        with self._lock:
            self._attempts[provider] += 1
        raw = await request.body()  # read before the delay: is_disconnected() must not eat the body
        if "multipart/" in request.headers.get("content-type", ""):
            payload: dict[str, Any] = {k: str(v) for k, v in (await request.form()).items()}
        elif "json" in request.headers.get("content-type", ""):
            try:
                payload = await request.json()
            except ValueError:
                payload = {}
        else:
            payload = {}
            for k, v in parse_qsl(raw.decode(errors="replace"), keep_blank_values=True):
                payload[k] = f"{payload[k]}, {v}" if k in payload else v
        f = self._faults[provider]
        if f.delay_s or f.held:
            await asyncio.sleep(f.delay_s)
            if f.held:
                with self._lock:
                    self._parked[provider] += 1
                try:
                    while f.held and not await request.is_disconnected():
                        await asyncio.sleep(0.02)
                finally:
                    with self._lock:
                        self._parked[provider] -= 1
            if await request.is_disconnected():
                with self._lock:
                    self._abandoned[provider] += 1
                return Response(status_code=499)  # nobody reads it: the exchange never completed
        with self._lock:
            failing = f.fail_always or f.fail_remaining > 0
            if f.fail_remaining > 0:
                f.fail_remaining -= 1
            status, retry_after, body, creds = f.status, f.retry_after, f.body, dict(f.creds)
            after_commit = f.after_commit
        if failing and after_commit:
            with contextlib.suppress(_Reject):
                _, done = send(payload if isinstance(payload, dict) else {}, creds)
                if done is not None:
                    with self._lock:
                        self._deliveries.append(done)
        if failing:
            if provider == "slack" and status == 429 and retry_after is None:
                retry_after = 1  # Slack always says when to come back
            status, default = _fault_body(provider, status, retry_after)
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
            return JSONResponse(default if body is None else body, status_code=status, headers=headers)
        try:
            response, delivery = send(payload if isinstance(payload, dict) else {}, creds)
        except _Reject as rejected:
            return rejected.response
        if delivery is not None:  # None: a repeat the provider recognised (nothing new was done)
            with self._lock:
                self._deliveries.append(delivery)
        return response

    def _delivery(self, provider: str, request: Request, recipient: Any, text: Any, payload: dict[str, Any],
                  message_id: str, raw: bytes = b"") -> Delivery:
        return Delivery(provider, request.url.path, str(recipient), str(text), payload,
                        dict(request.headers), message_id, raw=raw)

    # -- one handler per provider ------------------------------------------------------------------
    async def _whatsapp(self, request: Request) -> Response:
        def graph_error(status: int, code: int, message: str) -> _Reject:
            return _Reject(JSONResponse({"error": {"message": message, "type": "OAuthException", "code": code,
                                                   "fbtrace_id": secrets.token_hex(8)}}, status_code=status))

        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            token = _bearer(request)
            if not token or creds.get("token", token) != token:
                raise graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
            text = p.get("text") if isinstance(p.get("text"), dict) else {}
            well_formed = p.get("messaging_product") == "whatsapp" and p.get("type", "text") == "text"
            if not (well_formed and p.get("to") and text.get("body")):
                raise graph_error(400, 100, "(#100) Invalid parameter")
            wamid = "wamid." + secrets.token_urlsafe(24)
            body = {"messaging_product": "whatsapp", "contacts": [{"input": p["to"], "wa_id": p["to"]}],
                    "messages": [{"id": wamid}]}
            return JSONResponse(body), self._delivery("whatsapp", request, p["to"], text["body"], p, wamid)

        return await self._handle("whatsapp", request, send)

    async def _telegram(self, request: Request) -> Response:
        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            token = request.path_params["token"]
            if creds.get("token", token) != token:
                raise _Reject(JSONResponse({"ok": False, "error_code": 401, "description": "Unauthorized"},
                                           status_code=401))
            for name in ("chat_id", "text"):
                if p.get(name) in (None, ""):
                    what = "chat not found" if name == "chat_id" else "message text is empty"
                    raise _Reject(JSONResponse({"ok": False, "error_code": 400,
                                                "description": f"Bad Request: {what}"}, status_code=400))
            message_id = next(self._ids)
            result = {"message_id": message_id, "from": {"id": 1, "is_bot": True, "first_name": "stand-in"},
                      "chat": {"id": p["chat_id"]}, "date": int(time.time()), "text": p["text"]}
            return (JSONResponse({"ok": True, "result": result}),
                    self._delivery("telegram", request, p["chat_id"], p["text"], p, str(message_id)))

        return await self._handle("telegram", request, send)

    async def _twilio(self, request: Request) -> Response:
        def twilio_error(status: int, code: int, message: str) -> _Reject:
            return _Reject(JSONResponse({"code": code, "message": message, "status": status,
                                         "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                                        status_code=status))

        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            auth = _basic_auth(request)
            want = (creds.get("account_sid"), creds.get("auth_token"))
            if auth is None or any(w is not None and w != got for w, got in zip(want, auth, strict=True)):
                raise twilio_error(401, 20003, "Authenticate")
            if not p.get("To"):
                raise twilio_error(400, 21604, "A 'To' phone number is required.")
            if not (p.get("From") or p.get("MessagingServiceSid")):
                raise twilio_error(400, 21603, "A 'From' phone number is required.")
            if not p.get("Body"):
                raise twilio_error(400, 21602, "Message body is required.")
            sid, account = "SM" + secrets.token_hex(16), request.path_params["sid"]
            body = {"sid": sid, "account_sid": account, "status": "queued", "to": p["To"],
                    "from": p.get("From"), "messaging_service_sid": p.get("MessagingServiceSid"),
                    "body": p["Body"], "direction": "outbound-api", "num_segments": "1",
                    "date_created": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"),
                    "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json"}
            return (JSONResponse(body, status_code=201),
                    self._delivery("sms", request, p["To"], p["Body"], p, sid))

        return await self._handle("sms", request, send)

    async def _mailgun(self, request: Request) -> Response:
        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            auth = _basic_auth(request)
            if auth is None or auth[0] != "api" or creds.get("api_key", auth[1]) != auth[1]:
                raise _Reject(PlainTextResponse("Forbidden", status_code=401))
            for name in ("from", "to"):
                if not p.get(name):
                    missing = {"message": f"'{name}' parameter is missing"}
                    raise _Reject(JSONResponse(missing, status_code=400))
            if not (p.get("text") or p.get("html")):
                raise _Reject(JSONResponse({"message": "Need at least one of 'text' or 'html' parameters "
                                                       "specified"}, status_code=400))
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            mid = f"<{stamp}.{secrets.token_hex(8)}@{request.path_params['domain']}>"
            return (JSONResponse({"id": mid, "message": "Queued. Thank you."}),
                    self._delivery("email", request, p["to"], p.get("text") or p.get("html"), p, mid))

        return await self._handle("email", request, send)

    async def _slack(self, request: Request) -> Response:
        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            token = _bearer(request) or str(p.get("token") or "")
            error = ("not_authed" if not token else "invalid_auth" if creds.get("token", token) != token
                     else "channel_not_found" if not p.get("channel")
                     else "no_text" if not (p.get("text") or p.get("blocks")) else None)
            if error:
                raise _Reject(JSONResponse({"ok": False, "error": error}))
            ts = f"{int(time.time())}.{next(self._ids) % 1_000_000:06d}"
            message = {"type": "message", "subtype": "bot_message", "text": p.get("text", ""), "ts": ts,
                       "bot_id": "B0STANDIN", "user": "U0STANDIN"}
            if p.get("thread_ts"):
                message["thread_ts"] = p["thread_ts"]
            return (JSONResponse({"ok": True, "channel": p["channel"], "ts": ts, "message": message}),
                    self._delivery("slack", request, p["channel"], p.get("text", ""), p, ts))

        return await self._handle("slack", request, send)

    async def _zendesk(self, request: Request) -> Response:
        raw = await request.body()

        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery | None]:
            auth = _basic_auth(request)
            email, _, token_word = (auth[0] if auth else "").rpartition("/")
            wrong = auth is None or token_word != "token" or not email
            if not wrong and auth is not None:
                wrong = creds.get("email", email) != email or creds.get("api_token", auth[1]) != auth[1]
            if wrong:
                raise _Reject(JSONResponse({"error": "Couldn't authenticate you"}, status_code=401))
            key = request.headers.get("idempotency-key")
            if key:
                with self._lock:
                    seen = self._zendesk_keys.get(key)
                if seen is not None:
                    if seen[0] != raw:
                        raise _Reject(JSONResponse({"error": "IdempotentRequestError",
                                                    "description": "the key was used with another body"},
                                                   status_code=400))
                    return JSONResponse(seen[2], status_code=seen[1],
                                        headers={"x-idempotency-lookup": "hit"}), None
            t = p.get("ticket") if isinstance(p.get("ticket"), dict) else {}
            comment = t.get("comment") if isinstance(t.get("comment"), dict) else {}
            errors = {}
            if not comment.get("body"):
                errors["description"] = [{"description": "Description: cannot be blank",
                                          "error": "BlankValue"}]
            if t.get("priority") is not None and t["priority"] not in ZENDESK_PRIORITIES:
                errors["priority"] = [{"description": "Priority: is invalid", "error": "InvalidValue"}]
            if errors:
                invalid = {"error": "RecordInvalid", "description": "Record validation errors",
                           "details": errors}
                raise _Reject(JSONResponse(invalid, status_code=422))
            ticket_id = next(self._ids)
            sub = request.path_params["subdomain"]
            ticket = {"id": ticket_id, "url": f"https://{sub}.zendesk.com/api/v2/tickets/{ticket_id}.json",
                      "subject": t.get("subject"), "description": comment["body"],
                      "priority": t.get("priority"),
                      "status": "new", "tags": t.get("tags") or [], "external_id": t.get("external_id"),
                      "requester_id": 1000 + ticket_id,
                      "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            answer = {"ticket": ticket}
            if key:
                with self._lock:
                    self._zendesk_keys[key] = (raw, 201, answer)
            return (JSONResponse(answer, status_code=201, headers={"x-idempotency-lookup": "miss",
                                                                    "Location": ticket["url"]}),
                    self._delivery("zendesk", request, sub, comment["body"], p, str(ticket_id), raw))

        return await self._handle("zendesk", request, send)

    async def _webhook(self, request: Request) -> Response:
        raw = await request.body()

        def send(p: dict[str, Any], creds: dict[str, str]) -> tuple[Response, Delivery]:
            name = request.path_params["name"]
            return (JSONResponse({"ok": True}),
                    self._delivery("webhook", request, name, request.headers.get("x-chatengine-event", ""), p,
                                   "", raw))

        return await self._handle("webhook", request, send)
