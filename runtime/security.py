"""Secrets the API hands out and checks: API keys (stored as hashes) and widget session tokens.

- API keys: ``ce_sk_`` + 256 random bits, shown once; only their SHA-256 is stored (keys are
  random, so a fast hash is the right tool; passwords, when they come, need argon2).
- Session tokens: HS256 JWTs under CHAT_ENGINE_SESSION_TOKEN_SECRET, bound to the session, its
  tenant and channel, and the host page's origin, expiring after ``session_token_ttl_s``.
- Channel credentials (access tokens, app secrets, signing keys): encrypted at rest with Fernet
  (AES-128-CBC + HMAC-SHA256) under CHAT_ENGINE_SECRETS_KEY; several comma-separated keys rotate
  (the first encrypts, any decrypts). Never returned by the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from uuid import UUID

import jwt
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from runtime.config import Settings
from runtime.errors import ConfigError, SessionNotFound, Unauthorized

KEY_PREFIX = "ce_sk_"


def new_api_key() -> str:
    """A fresh API key: ``ce_sk_`` + 43 url-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Hex SHA-256 of the key (UTF-8)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (any Unicode; never raises)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class SessionClaims:
    """What a valid session token says: the session, its tenant and channel, the origin the
    session was created from, and when it expires (Unix seconds)."""

    session_id: UUID
    tenant_id: UUID
    channel_id: UUID | None
    origin: str | None
    expires_at: int


def _secret(settings: Settings) -> str:
    assert settings.session_token_secret is not None, "resolved by the launcher"
    return settings.session_token_secret.get_secret_value()


def issue_session_token(
    settings: Settings, tenant_id: UUID, session_id: UUID, channel_id: UUID, origin: str
) -> tuple[str, int]:
    """A signed token bound to the session and the host page's origin.

    Returns (token, expires_at as a Unix timestamp).
    """
    exp = int(time.time()) + settings.session_token_ttl_s
    claims = {"sid": str(session_id), "tid": str(tenant_id), "cid": str(channel_id),
              "org": origin, "exp": exp}
    return jwt.encode(claims, _secret(settings), algorithm="HS256"), exp


def verify_session_token(
    settings: Settings, token: str | None, session_id: UUID | None = None
) -> SessionClaims:
    """The token's claims. Raises Unauthorized (missing, bad signature, expired) and
    SessionNotFound (a valid token of another session: 404, never 403)."""
    if not token:
        raise Unauthorized("missing session token: send `Authorization: Bearer <session_token>`")
    try:
        raw = jwt.decode(token, _secret(settings), algorithms=["HS256"],
                         options={"require": ["exp", "sid", "tid"]})
        claims = SessionClaims(
            session_id=UUID(raw["sid"]), tenant_id=UUID(raw["tid"]),
            channel_id=UUID(raw["cid"]) if raw.get("cid") else None, origin=raw.get("org"),
            expires_at=int(raw["exp"]),
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the session token expired: create the session again") from None
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        raise Unauthorized("invalid session token: create the session again") from None
    if session_id is not None and claims.session_id != session_id:
        raise SessionNotFound(f"no session {session_id} for this token")
    return claims


# ------------------------------------------------------------------ channel credentials at rest
def issue_visitor_id(settings: Settings, channel_id: UUID) -> str:
    """A new visitor id for a widget channel: ``v1.<random>.<signature>`` (URL-safe, 52
    characters), signed with the session-token secret and bound to ``channel_id``, so a client
    can keep it (and so its contact) but cannot make one up or name another visitor's."""
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    return f"v1.{nonce}.{_visitor_signature(settings, channel_id, nonce)}"


def verify_visitor_id(settings: Settings, channel_id: UUID, value: str | None) -> str | None:
    """``value`` if it is a visitor id this server issued for ``channel_id``; else None (a
    forged, altered, foreign or old-style id is ignored, never an error)."""
    if not value or not value.startswith("v1.") or value.count(".") != 2:
        return None
    _, nonce, signature = value.split(".")
    return value if same_secret(signature, _visitor_signature(settings, channel_id, nonce)) else None


def _visitor_signature(settings: Settings, channel_id: UUID, nonce: str) -> str:
    mac = hmac.new(_secret(settings).encode(), f"visitor:{channel_id}:{nonce}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode()


def _fernet(settings: Settings) -> MultiFernet:
    if settings.secrets_key is None:
        raise ConfigError("CHAT_ENGINE_SECRETS_KEY is not set: channel credentials cannot be encrypted "
                          "(the launcher generates one in development)")
    try:
        keys = [Fernet(k.strip()) for k in settings.secrets_key.get_secret_value().split(",") if k.strip()]
    except ValueError:
        raise ConfigError("CHAT_ENGINE_SECRETS_KEY: each key must be 32 url-safe base64-encoded bytes "
                          "(Fernet.generate_key())") from None
    return MultiFernet(keys)


def encrypt_secrets(settings: Settings, values: dict[str, str]) -> str:
    """``values`` as one Fernet token (str). Raises ConfigError without a key."""
    return _fernet(settings).encrypt(json.dumps(values).encode()).decode()


def decrypt_secrets(settings: Settings, token: str | None) -> dict[str, str]:
    """The dict :func:`encrypt_secrets` sealed; ``{}`` for None. Raises ConfigError when no
    configured key opens it (the key was changed without keeping the old one for rotation)."""
    if not token:
        return {}
    try:
        return dict(json.loads(_fernet(settings).decrypt(token.encode())))
    except InvalidToken:
        raise ConfigError("channel credentials cannot be decrypted with CHAT_ENGINE_SECRETS_KEY: keep "
                          "the old key after the new one (comma-separated) while rotating") from None
