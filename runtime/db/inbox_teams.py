"""Teams: who sees which conversations, and round-robin assignment of escalations (plain SQL).

A team takes the escalations of its ``channel_ids`` (empty: of every channel). What an agent
sees (:class:`Scope`): conversations assigned to them, those routed to one of their teams, and
unrouted ones on their teams' channels; an agent in no team sees the whole tenant (a small shop
needs no teams). Owners, admins and viewers see everything.

Round-robin (:func:`route_escalation`, inside the escalation's transaction): the team for the
session's channel (a team naming the channel before a catch-all team, older first), then its
member with the oldest ``last_assigned_at`` among those under their limit of open conversations
(``users.max_open_sessions``, else the tenant's ``default_agent_limit``; none: unlimited).
Serialised per team by a transaction-level advisory lock, so two escalations at once never pick
the same free place twice. Nobody free: the conversation waits in the team's queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import Conflict, NotFound

OPEN_STATUSES = ("human_escalated", "human_assigned")


@dataclass(frozen=True)
class Scope:
    """Which sessions a user sees. everything: owners, admins, viewers, agents in no team;
    else ``user_id``'s own, ``team_ids``' and, unrouted, those on ``channel_ids``
    (``all_channels``: a team of theirs covers every channel)."""

    everything: bool
    user_id: UUID | None = None
    team_ids: list[UUID] = field(default_factory=list)
    channel_ids: list[UUID] = field(default_factory=list)
    all_channels: bool = False

    def sql(self, first: int, alias: str = "s") -> tuple[str, list[Any]]:
        """A WHERE fragment (parameters numbered from ``first``) and its arguments."""
        if self.everything:
            return "TRUE", []
        p = first
        clause = (f"({alias}.assignee_id = ${p} OR {alias}.team_id = ANY(${p + 1}::uuid[]) OR "
                  f"({alias}.team_id IS NULL AND (${p + 2}::bool "
                  f"OR {alias}.channel_id = ANY(${p + 3}::uuid[]))))")
        return clause, [self.user_id, self.team_ids, self.all_channels, self.channel_ids]

    def sees(self, row: Any) -> bool:
        """Whether a session row (``assignee_id``, ``team_id``, ``channel_id``) is in scope."""
        if self.everything:
            return True
        if row["assignee_id"] == self.user_id or row["team_id"] in self.team_ids:
            return True
        return row["team_id"] is None and (self.all_channels or row["channel_id"] in self.channel_ids)


async def scope_for(conn: Conn, tenant_id: UUID, user_id: UUID, role: str) -> Scope:
    """The :class:`Scope` of a user."""
    if role != "agent":
        return Scope(everything=True)
    rows = await conn.fetch(
        """SELECT t.id, t.channel_ids FROM teams t JOIN team_members m ON m.team_id = t.id
           WHERE t.tenant_id = $1 AND m.user_id = $2""", tenant_id, user_id)
    if not rows:
        return Scope(everything=True)
    channels = sorted({c for r in rows for c in r["channel_ids"]})
    return Scope(False, user_id, [r["id"] for r in rows], channels,
                 any(not r["channel_ids"] for r in rows))


# ------------------------------------------------------------------ teams
TEAM_COLUMNS = """t.id, t.name, t.channel_ids, t.created_at,
    COALESCE((SELECT array_agg(m.user_id ORDER BY m.user_id) FROM team_members m WHERE m.team_id = t.id),
             '{}') AS member_ids"""


async def list_teams(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's teams with their member ids, oldest first."""
    return await conn.fetch(
        f"SELECT {TEAM_COLUMNS} FROM teams t WHERE t.tenant_id = $1 ORDER BY t.created_at", tenant_id)


async def get_team(conn: Conn, tenant_id: UUID, team_id: UUID) -> asyncpg.Record:
    """One team. Raises NotFound (another tenant's too)."""
    row = await conn.fetchrow(
        f"SELECT {TEAM_COLUMNS} FROM teams t WHERE t.tenant_id = $1 AND t.id = $2", tenant_id, team_id)
    if row is None:
        raise NotFound(f"no team {team_id} in this tenant")
    return row


async def _check_refs(conn: Conn, tenant_id: UUID, member_ids: list[UUID] | None,
                      channel_ids: list[UUID] | None) -> None:
    if member_ids:
        found = await conn.fetchval(
            "SELECT count(*) FROM users WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
            tenant_id, member_ids)
        if found != len(set(member_ids)):
            raise NotFound("member_ids: every member must be a user of this tenant", field="member_ids")
    if channel_ids:
        found = await conn.fetchval(
            "SELECT count(*) FROM channels WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
            tenant_id, channel_ids)
        if found != len(set(channel_ids)):
            raise NotFound("channel_ids: every channel must be one of this tenant's", field="channel_ids")


async def save_team(conn: Conn, tenant_id: UUID, team_id: UUID | None, name: str | None,
                    member_ids: list[UUID] | None, channel_ids: list[UUID] | None) -> asyncpg.Record:
    """Create (``team_id`` None) or update a team; a given ``member_ids`` replaces the members.
    Raises NotFound (the team, or a member or channel that is not this tenant's), Conflict (the
    name is taken)."""
    await _check_refs(conn, tenant_id, member_ids, channel_ids)
    async with conn.transaction():
        try:
            if team_id is None:
                team_id = await conn.fetchval(
                    "INSERT INTO teams (tenant_id, name, channel_ids) VALUES ($1, $2, $3) RETURNING id",
                    tenant_id, name, sorted(set(channel_ids or [])))
            else:
                done = await conn.fetchval(
                    """UPDATE teams SET name = COALESCE($3, name), channel_ids = COALESCE($4, channel_ids)
                       WHERE tenant_id = $1 AND id = $2 RETURNING id""",
                    tenant_id, team_id, name,
                    sorted(set(channel_ids)) if channel_ids is not None else None)
                if done is None:
                    raise NotFound(f"no team {team_id} in this tenant")
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a team named {name!r} exists already: pick another name", field="name") from None
        if member_ids is not None:
            await conn.execute("DELETE FROM team_members WHERE team_id = $1", team_id)
            await conn.executemany(
                "INSERT INTO team_members (tenant_id, team_id, user_id) VALUES ($1, $2, $3)",
                [(tenant_id, team_id, u) for u in sorted(set(member_ids))])
    assert team_id is not None
    return await get_team(conn, tenant_id, team_id)


async def delete_team(conn: Conn, tenant_id: UUID, team_id: UUID) -> None:
    """Delete a team (its conversations become unrouted). Raises NotFound."""
    res = await conn.execute("DELETE FROM teams WHERE tenant_id = $1 AND id = $2", tenant_id, team_id)
    if not res.endswith(" 1"):
        raise NotFound(f"no team {team_id} in this tenant")


# ------------------------------------------------------------------ limits and routing
async def open_sessions_of(conn: Conn, tenant_id: UUID, user_id: UUID) -> int:
    """Conversations assigned to the user and not closed or handed back."""
    return int(await conn.fetchval(
        """SELECT count(*) FROM sessions WHERE tenant_id = $1 AND assignee_id = $2
           AND status IN ('human_escalated', 'human_assigned')""", tenant_id, user_id))


async def limit_of(conn: Conn, tenant_id: UUID, user_id: UUID) -> int | None:
    """The user's limit of open conversations (their own, else the tenant's default; None:
    unlimited)."""
    return await conn.fetchval(
        """SELECT COALESCE(u.max_open_sessions, (s.settings->>'default_agent_limit')::int)
           FROM users u LEFT JOIN inbox_settings s ON s.tenant_id = u.tenant_id
           WHERE u.tenant_id = $1 AND u.id = $2""", tenant_id, user_id)


async def route_escalation(conn: Conn, tenant_id: UUID, channel_id: UUID) -> tuple[UUID | None, UUID | None]:
    """(team id, assignee id) for a new escalation on ``channel_id``, in the caller's
    transaction (see the module doc); (None, None) when no team takes the channel. The chosen
    agent's ``last_assigned_at`` moves to now."""
    team_id = await conn.fetchval(
        """SELECT id FROM teams
           WHERE tenant_id = $1 AND (cardinality(channel_ids) = 0 OR $2 = ANY(channel_ids))
           ORDER BY cardinality(channel_ids) = 0, created_at, id LIMIT 1""", tenant_id, channel_id)
    if team_id is None:
        return None, None
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"rr:{team_id}")
    agent = await conn.fetchval(
        """SELECT u.id FROM team_members m JOIN users u ON u.id = m.user_id
           LEFT JOIN inbox_settings st ON st.tenant_id = u.tenant_id
           WHERE m.team_id = $2 AND u.tenant_id = $1 AND u.disabled_at IS NULL AND u.role <> 'viewer'
             AND (COALESCE(u.max_open_sessions, (st.settings->>'default_agent_limit')::int) IS NULL
                  OR (SELECT count(*) FROM sessions s WHERE s.tenant_id = $1 AND s.assignee_id = u.id
                      AND s.status IN ('human_escalated', 'human_assigned'))
                     < COALESCE(u.max_open_sessions, (st.settings->>'default_agent_limit')::int))
           ORDER BY u.last_assigned_at NULLS FIRST, u.created_at, u.id LIMIT 1""", tenant_id, team_id)
    if agent is not None:
        await conn.execute("UPDATE users SET last_assigned_at = clock_timestamp() WHERE id = $1", agent)
    return team_id, agent
