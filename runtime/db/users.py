"""People who log in: passwords, invites, cookie login sessions, and the users' inbox fields
(plain SQL, every query tenant-scoped except the login lookups, which find the tenant).

Passwords are stored as argon2id hashes made by the caller (``runtime.api.auth``); login
sessions and invites as SHA-256 hashes of random tokens (the token itself is only in the
cookie or the invite link), like API keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import Conflict, NotFound
from runtime.security import hash_api_key, new_api_key

USER_COLUMNS = """id, tenant_id, name, email, role, api_key_prefix, created_at, disabled_at,
    max_open_sessions, (password_hash IS NOT NULL) AS can_log_in,
    (invite_token_hash IS NOT NULL AND invite_expires_at > now()) AS invited"""


def _email_taken(exc: asyncpg.UniqueViolationError) -> Conflict:
    return Conflict("this email already signs in to a workspace: use another email address",
                    field="email")


async def create_user(
    conn: Conn, tenant_id: UUID, name: str, email: str | None, role: str, *,
    password_hash: str | None = None, invite_hash: str | None = None,
    invite_expires_at: datetime | None = None, max_open_sessions: int | None = None,
) -> tuple[asyncpg.Record, str]:
    """Create a user of ``tenant_id`` with an API key (and a password hash, or an invite).

    Returns (row with :data:`USER_COLUMNS`, API key in clear: shown once). Raises Conflict when
    the email already logs in to a workspace (a login email is unique across tenants).
    """
    key = new_api_key()
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO users (tenant_id, name, email, role, api_key_hash, api_key_prefix,
                                   password_hash, password_set_at, invite_token_hash,
                                   invite_expires_at, max_open_sessions)
                VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7::text IS NULL THEN NULL ELSE now() END,
                        $8, $9, $10)
                RETURNING {USER_COLUMNS}""",
            tenant_id, name, email, role, hash_api_key(key), key[:10], password_hash, invite_hash,
            invite_expires_at, max_open_sessions,
        )
    except asyncpg.UniqueViolationError as exc:
        raise _email_taken(exc) from None
    assert row is not None
    return row, key


async def list_users(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's users (never their hashes), oldest first."""
    return await conn.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at", tenant_id
    )


async def get_user(conn: Conn, tenant_id: UUID, user_id: UUID) -> asyncpg.Record:
    """One user of the tenant. Raises NotFound (also for another tenant's user)."""
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id
    )
    if row is None:
        raise NotFound(f"no user {user_id} in this tenant")
    return row


async def update_user(conn: Conn, tenant_id: UUID, user_id: UUID, **fields: Any) -> asyncpg.Record:
    """Set ``name``, ``role``, ``max_open_sessions``, ``password_hash`` and/or ``disabled``
    (True disables now, False enables). A new password or a disabled user ends the user's login
    sessions. Raises NotFound."""
    allowed = {"name", "role", "max_open_sessions", "password_hash", "disabled"}
    assert set(fields) <= allowed, set(fields) - allowed
    sets, args = [], [tenant_id, user_id]
    for col, value in fields.items():
        if col == "disabled":
            sets.append(f"disabled_at = CASE WHEN ${len(args) + 1} THEN COALESCE(disabled_at, now()) "
                        "ELSE NULL END")
        elif col == "password_hash":
            sets.append(f"password_hash = ${len(args) + 1}, password_set_at = now(), "
                        "invite_token_hash = NULL, invite_expires_at = NULL")
        else:
            sets.append(f"{col} = ${len(args) + 1}")
        args.append(value)
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE users SET {", ".join(sets) or "name = name"} WHERE tenant_id = $1 AND id = $2
                RETURNING {USER_COLUMNS}""", *args)
        if row is None:
            raise NotFound(f"no user {user_id} in this tenant")
        if fields.get("disabled") or "password_hash" in fields:
            await end_login_sessions(conn, tenant_id, user_id)
    return row


async def count_owners(conn: Conn, tenant_id: UUID) -> int:
    """Active owners of the tenant (the last one may not be demoted or disabled)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'owner' AND disabled_at IS NULL",
        tenant_id))


# ------------------------------------------------------------------ logging in
async def login_candidate(conn: Conn, email: str) -> asyncpg.Record | None:
    """The active user who logs in with ``email`` (case-insensitive), with its password hash;
    None when nobody does (unknown, invited only, or disabled)."""
    return await conn.fetchrow(
        """SELECT id, tenant_id, name, email, role, password_hash FROM users
           WHERE lower(email) = lower($1) AND password_hash IS NOT NULL AND disabled_at IS NULL""",
        email,
    )


async def set_password_hash(conn: Conn, tenant_id: UUID, user_id: UUID, password_hash: str) -> None:
    """Replace a hash (argon2's ``check_needs_rehash`` after a login with older parameters)."""
    await conn.execute(
        "UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND id = $2",
        tenant_id, user_id, password_hash,
    )


async def redeem_invite(conn: Conn, invite_token: str, password_hash: str) -> asyncpg.Record | None:
    """Set the password of the user invited with ``invite_token`` (unexpired) and consume the
    invite; returns the user (id, tenant_id, name, email, role) or None."""
    return await conn.fetchrow(
        """UPDATE users SET password_hash = $2, password_set_at = now(), invite_token_hash = NULL,
                            invite_expires_at = NULL
           WHERE invite_token_hash = $1 AND invite_expires_at > now() AND disabled_at IS NULL
           RETURNING id, tenant_id, name, email, role""",
        hash_api_key(invite_token), password_hash,
    )


async def create_login_session(
    conn: Conn, tenant_id: UUID, user_id: UUID, token: str, expires_at: datetime,
    user_agent: str | None, ip: str | None,
) -> UUID:
    """Store a login session under the hash of its cookie ``token``; expired ones of the user
    are removed on the way. Returns its id."""
    await conn.execute("DELETE FROM login_sessions WHERE user_id = $1 AND expires_at < now()", user_id)
    return await conn.fetchval(
        """INSERT INTO login_sessions (tenant_id, user_id, token_hash, expires_at, user_agent, ip)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        tenant_id, user_id, hash_api_key(token), expires_at, (user_agent or "")[:300] or None, ip,
    )


async def principal_for_login(conn: Conn, token: str, touch_after_s: float = 60.0) -> asyncpg.Record | None:
    """The user behind a login-session cookie: ``session_id``, ``user_id``, ``tenant_id``,
    ``role``, ``name``; None when unknown, expired or the user is disabled. ``last_seen_at``
    is refreshed at most every ``touch_after_s`` seconds."""
    row = await conn.fetchrow(
        """SELECT ls.id AS session_id, ls.last_seen_at, u.id AS user_id, u.tenant_id, u.role, u.name
           FROM login_sessions ls JOIN users u ON u.id = ls.user_id AND u.tenant_id = ls.tenant_id
           WHERE ls.token_hash = $1 AND ls.expires_at > now() AND u.disabled_at IS NULL""",
        hash_api_key(token),
    )
    if row is not None:
        await conn.execute(
            """UPDATE login_sessions SET last_seen_at = now()
               WHERE id = $1 AND last_seen_at < now() - make_interval(secs => $2)""",
            row["session_id"], touch_after_s,
        )
    return row


async def end_login_session(conn: Conn, token: str) -> bool:
    """Log out: delete the login session of cookie ``token``; True if there was one."""
    res = await conn.execute("DELETE FROM login_sessions WHERE token_hash = $1", hash_api_key(token))
    return res.endswith(" 1")


async def end_login_sessions(conn: Conn, tenant_id: UUID, user_id: UUID) -> None:
    """End every login session of a user (disabled, new password)."""
    await conn.execute("DELETE FROM login_sessions WHERE tenant_id = $1 AND user_id = $2",
                       tenant_id, user_id)
