"""People logging in to the inbox: email + password, a cookie session, CSRF-safe writes, logout,
invites.

- Passwords: argon2id through argon2-cffi (``PasswordHasher``'s RFC 9106 low-memory profile),
  hashed and checked in a worker thread (tens of ms of CPU each). At least 10 characters.
- Login: ``POST /v1/auth/login {email, password}``. Every attempt counts against the client
  IP's budget (``CHAT_ENGINE_LOGIN_IP_RATE_LIMIT_PER_MIN``) and the email's
  (``CHAT_ENGINE_LOGIN_RATE_LIMIT_PER_MIN``), sliding windows on Redis through ``limits``; any
  failure is the same 401 ``invalid_login`` whatever was wrong
  (unknown email, wrong password, disabled user), and an unknown email costs a hash check too.
- The cookie: ``__Host-ce_session`` (``HttpOnly; Secure; SameSite=Strict; Path=/``), a random
  256-bit token whose SHA-256 is stored in ``login_sessions`` with its expiry
  (``CHAT_ENGINE_LOGIN_SESSION_TTL_HOURS``).
- CSRF: a write authenticated by the cookie needs ``X-CSRF-Token`` (HMAC-SHA256 of the cookie
  value under the session-token secret: only a page of this origin can read it, from the login
  answer or ``GET /v1/auth/me``) and an ``Origin`` equal to this server's own. SameSite=Strict
  already keeps the cookie off cross-site requests; the token and the Origin check do not rely
  on it. API keys (``Authorization: Bearer``) are not ambient credentials and need neither.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, EmailStr, Field

from runtime.api.client_ip import client_ip
from runtime.api.context import AppContext, get_context
from runtime.api.contract import COMMON, error_responses
from runtime.api.ratelimit import rate_limit
from runtime.config import Settings
from runtime.db import users as users_db
from runtime.db.tenants import Principal, principal_for_key
from runtime.errors import CsrfRefused, InvalidInput, InvalidLogin, Unauthorized
from runtime.fields import Text

router = APIRouter(prefix="/v1/auth", tags=["auth"], responses=error_responses(*COMMON, 401))

SESSION_COOKIE = "__Host-ce_session"
PLAIN_SESSION_COOKIE = "ce_session"  # CHAT_ENGINE_COOKIE_SECURE=false (the prefix needs Secure)
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PASSWORD_MIN = 10
PASSWORD_MAX = 256
INVITE_TTL = timedelta(days=7)
INVALID_LOGIN = "email or password is wrong"

Ctx = Annotated[AppContext, Depends(get_context)]


# ---------------------------------------------------------------- passwords
@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Checked against when the email is unknown, so that case costs what a wrong password costs.
    return _hasher().hash(secrets.token_urlsafe(16))


def check_password_rules(password: str, field: str = "password") -> None:
    """Raise InvalidInput unless ``password`` has :data:`PASSWORD_MIN` to :data:`PASSWORD_MAX`
    characters."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidInput(f"{field}: use {PASSWORD_MIN} to {PASSWORD_MAX} characters (a passphrase "
                           "of a few words is good)", field=field)


async def hash_password(password: str) -> str:
    """argon2id hash (encoded, with its parameters and salt), made in a worker thread."""
    check_password_rules(password)
    return await asyncio.to_thread(_hasher().hash, password)


async def verify_password(stored: str | None, password: str) -> tuple[bool, bool]:
    """(matches, needs a rehash) for ``password`` against a stored hash (None: the dummy one,
    which never matches). Runs in a worker thread; never raises for a bad hash."""
    def check() -> tuple[bool, bool]:
        try:
            _hasher().verify(stored or _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        return stored is not None, stored is not None and _hasher().check_needs_rehash(stored)
    return await asyncio.to_thread(check)


# ---------------------------------------------------------------- cookies and CSRF
def session_cookie_name(settings: Settings) -> str:
    """``__Host-ce_session``, or ``ce_session`` when cookies are not marked Secure."""
    return SESSION_COOKIE if settings.cookie_secure else PLAIN_SESSION_COOKIE


def csrf_token(settings: Settings, cookie_value: str) -> str:
    """The CSRF token bound to a login cookie: url-safe base64 of HMAC-SHA256 under
    CHAT_ENGINE_SESSION_TOKEN_SECRET."""
    secret = settings.session_token_secret
    assert secret is not None, "CHAT_ENGINE_SESSION_TOKEN_SECRET is resolved by the launcher"
    mac = hmac.new(secret.get_secret_value().encode(), b"csrf:" + cookie_value.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def own_origins(request: Request, settings: Settings) -> set[str]:
    """The origins this server is reached at: the request's own (``Host``) and
    CHAT_ENGINE_PUBLIC_BASE_URL's."""
    base = str(request.base_url).rstrip("/")
    out = {base.lower()}
    if settings.public_base_url is not None:
        u = settings.public_base_url
        port = f":{u.port}" if u.port and u.port not in (80, 443) else ""
        out.add(f"{u.scheme}://{u.host}{port}".lower())
    return out


def check_csrf(request: Request, settings: Settings, cookie_value: str) -> None:
    """A cookie-authenticated write must come from a page of this origin. Raises Forbidden
    naming what is missing or wrong."""
    origin = (request.headers.get("origin") or "").lower().rstrip("/")
    if not origin or origin == "null":
        raise CsrfRefused("a write with the login cookie needs the browser's Origin header; API "
                        "clients use `Authorization: Bearer <key>` instead")
    if origin not in own_origins(request, settings):
        raise CsrfRefused(f"origin {origin[:100]} may not write with this login: only pages of this "
                        "server may")
    given = request.headers.get(CSRF_HEADER) or ""
    if not given or not hmac.compare_digest(given.encode(), csrf_token(settings, cookie_value).encode()):
        raise CsrfRefused("missing or wrong X-CSRF-Token header: send the csrf_token from the login "
                        "answer or GET /v1/auth/me")


async def principal_from_cookie(request: Request, ctx: AppContext) -> Principal | None:
    """The logged-in user of the request's login cookie (checking CSRF on writes); None when
    there is no cookie. Raises Unauthorized (an expired or ended login) and Forbidden (CSRF)."""
    value = request.cookies.get(session_cookie_name(ctx.settings))
    if not value:
        return None
    if len(value) > 200:
        raise Unauthorized("invalid login cookie: log in again")
    async with ctx.pool.acquire() as conn:
        row = await users_db.principal_for_login(conn, value)
    if row is None:
        raise Unauthorized("your login expired or was ended: log in again")
    if request.method not in SAFE_METHODS:
        check_csrf(request, ctx.settings, value)
    return Principal(row["user_id"], row["tenant_id"], row["role"], row["name"], via="cookie")


# ---------------------------------------------------------------- routes
class LoginIn(BaseModel):
    """POST /v1/auth/login body."""

    email: EmailStr = Field(max_length=320)
    password: Text = Field(min_length=1, max_length=PASSWORD_MAX)


class Me(BaseModel):
    """Who is logged in, and the CSRF token for writes (with the cookie)."""

    user_id: UUID
    tenant_id: UUID
    name: str
    email: str | None
    role: str
    csrf_token: str | None = Field(default=None, description="send as X-CSRF-Token on writes")


def _set_cookie(response: Response, settings: Settings, value: str, max_age: int) -> None:
    response.set_cookie(session_cookie_name(settings), value, max_age=max_age, path="/",
                        httponly=True, secure=settings.cookie_secure, samesite="strict")


@router.post("/login", response_model=Me, responses=error_responses(401, 429))
async def login(body: LoginIn, request: Request, ctx: Ctx) -> JSONResponse:
    """Log in with email and password: sets the login cookie and returns the user and the CSRF
    token. Any failure is 401 ``invalid_login`` (which part was wrong is not said); too many
    attempts from one IP or for one email: 429 with ``Retry-After``."""
    settings = ctx.settings
    ip = client_ip(request, settings.trusted_proxies)
    email = body.email.strip().lower()
    await rate_limit(ctx, f"login:ip:{ip}", settings.login_ip_rate_limit_per_min)
    await rate_limit(ctx, "login:email:" + hashlib.sha256(email.encode()).hexdigest()[:32],
                     settings.login_rate_limit_per_min)
    async with ctx.pool.acquire() as conn:
        user = await users_db.login_candidate(conn, email)
    ok, rehash = await verify_password(user["password_hash"] if user else None, body.password)
    if user is None or not ok:
        raise InvalidLogin(INVALID_LOGIN)
    return await _start_login(request, ctx, user, rehash_with=body.password if rehash else None)


async def _start_login(request: Request, ctx: AppContext, user: Any,
                       rehash_with: str | None = None) -> JSONResponse:
    settings = ctx.settings
    token = secrets.token_urlsafe(32)
    ttl = timedelta(hours=settings.login_session_ttl_hours)
    async with ctx.pool.acquire() as conn:
        if rehash_with is not None:
            new_hash = await hash_password(rehash_with)
            await users_db.set_password_hash(conn, user["tenant_id"], user["id"], new_hash)
        await users_db.create_login_session(
            conn, user["tenant_id"], user["id"], token, datetime.now(UTC) + ttl,
            request.headers.get("user-agent"), client_ip(request, settings.trusted_proxies))
    me = Me(user_id=user["id"], tenant_id=user["tenant_id"], name=user["name"], email=user["email"],
            role=user["role"], csrf_token=csrf_token(settings, token))
    response = JSONResponse(me.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
    _set_cookie(response, settings, token, int(ttl.total_seconds()))
    return response


async def _cookie_user(request: Request, ctx: Ctx) -> Principal:
    principal = await principal_from_cookie(request, ctx)
    if principal is None:
        raise Unauthorized("not logged in: POST /v1/auth/login first")
    return principal


@router.post("/logout", status_code=204, responses=error_responses(401, 403))
async def logout(request: Request, ctx: Ctx, _: Annotated[Principal, Depends(_cookie_user)]) -> Response:
    """End this login (the cookie is cleared and its session deleted; CSRF-checked)."""
    value = request.cookies.get(session_cookie_name(ctx.settings), "")
    async with ctx.pool.acquire() as conn:
        await users_db.end_login_session(conn, value)
    response = Response(status_code=204)
    _set_cookie(response, ctx.settings, "", 0)
    return response


@router.get("/me", response_model=Me, responses=error_responses(401, 403))
async def me(request: Request, ctx: Ctx) -> JSONResponse:
    """Who is calling (the login cookie, or an API key), with the CSRF token for a cookie."""
    principal = await principal_from_cookie(request, ctx)
    token = None
    if principal is None:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        async with ctx.pool.acquire() as conn:
            principal = (await principal_for_key(conn, key.strip())
                         if scheme.lower() == "bearer" and key.strip() else None)
        if principal is None:
            raise Unauthorized("not logged in: POST /v1/auth/login, or send `Authorization: Bearer <key>`")
    else:
        token = csrf_token(ctx.settings, request.cookies[session_cookie_name(ctx.settings)])
    async with ctx.pool.acquire() as conn:
        row = await users_db.get_user(conn, principal.tenant_id, principal.user_id)
    out = Me(user_id=row["id"], tenant_id=row["tenant_id"], name=row["name"], email=row["email"],
             role=row["role"], csrf_token=token)
    return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


class InviteAccept(BaseModel):
    """POST /v1/auth/invite body: the invite token (shown once to whoever invited) and the new
    password."""

    token: str = Field(min_length=20, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    password: Text = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)


@router.post("/invite", response_model=Me, responses=error_responses(401, 429))
async def accept_invite(body: InviteAccept, request: Request, ctx: Ctx) -> JSONResponse:
    """Redeem an invite: set the password and log in. An unknown, used or expired invite: 401
    (ask for a new one). Rate-limited per IP like the login."""
    ip = client_ip(request, ctx.settings.trusted_proxies)
    await rate_limit(ctx, f"login:ip:{ip}", ctx.settings.login_ip_rate_limit_per_min)
    password_hash = await hash_password(body.password)
    async with ctx.pool.acquire() as conn:
        user = await users_db.redeem_invite(conn, body.token, password_hash)
    if user is None:
        raise InvalidLogin("this invite is unknown, used or expired: ask for a new one")
    return await _start_login(request, ctx, user)


def new_invite() -> tuple[str, datetime]:
    """A fresh invite token (shown once) and its expiry (:data:`INVITE_TTL`)."""
    return secrets.token_urlsafe(32), datetime.now(UTC) + INVITE_TTL
