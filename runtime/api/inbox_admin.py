"""The inbox's setup: teams (round-robin routing of escalations), canned responses (typed as
``/shortcut`` in the reply box) and the tenant's inbox settings (business hours, offline
auto-reply, CSAT question, default per-agent limit). Everyone reads; owners and admins write."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from runtime.api.contract import AUTHED, NonBlankText, error_responses
from runtime.api.deps import Ctx, Owner, User
from runtime.db import inbox as inbox_db
from runtime.db import inbox_hours
from runtime.db import inbox_teams as teams_db
from runtime.errors import Conflict

router = APIRouter(prefix="/v1", tags=["inbox"], responses=error_responses(*AUTHED, 404, 409))

SHORTCUT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"


# ---------------------------------------------------------------- teams
class TeamIn(BaseModel):
    """POST /v1/teams body (PATCH: any of these)."""

    name: NonBlankText = Field(max_length=100)
    member_ids: list[UUID] = Field(default_factory=list, max_length=500)
    channel_ids: list[UUID] = Field(default_factory=list, max_length=200,
                                    description="channels whose escalations the team takes; empty: all")


class TeamPatch(BaseModel):
    """PATCH /v1/teams/{id} body; a given ``member_ids`` replaces the members."""

    name: NonBlankText | None = Field(default=None, max_length=100)
    member_ids: list[UUID] | None = Field(default=None, max_length=500)
    channel_ids: list[UUID] | None = Field(default=None, max_length=200)


class TeamOut(BaseModel):
    """A team."""

    id: UUID
    name: str
    member_ids: list[UUID]
    channel_ids: list[UUID]
    created_at: datetime


def _team(r: Any) -> TeamOut:
    return TeamOut(id=r["id"], name=r["name"], member_ids=list(r["member_ids"]),
                   channel_ids=list(r["channel_ids"]), created_at=r["created_at"])


@router.get("/teams", response_model=list[TeamOut])
async def list_teams(ctx: Ctx, who: User) -> list[TeamOut]:
    """The tenant's teams."""
    async with ctx.pool.acquire() as conn:
        return [_team(r) for r in await teams_db.list_teams(conn, who.tenant_id)]


@router.post("/teams", response_model=TeamOut, status_code=201)
async def create_team(body: TeamIn, ctx: Ctx, who: Owner) -> TeamOut:
    """Create a team: escalations on its channels are assigned round-robin to its members, each
    up to their limit of open conversations. 409 for a name in use; 404 for a member or channel
    that is not this tenant's."""
    async with ctx.pool.acquire() as conn:
        return _team(await teams_db.save_team(conn, who.tenant_id, None, body.name, body.member_ids,
                                              body.channel_ids))


@router.patch("/teams/{team_id}", response_model=TeamOut)
async def patch_team(team_id: UUID, body: TeamPatch, ctx: Ctx, who: Owner) -> TeamOut:
    """Rename a team, replace its members or its channels."""
    async with ctx.pool.acquire() as conn:
        return _team(await teams_db.save_team(conn, who.tenant_id, team_id, body.name, body.member_ids,
                                              body.channel_ids))


@router.delete("/teams/{team_id}", status_code=204)
async def delete_team(team_id: UUID, ctx: Ctx, who: Owner) -> Response:
    """Delete a team; its conversations stay, unrouted."""
    async with ctx.pool.acquire() as conn:
        await teams_db.delete_team(conn, who.tenant_id, team_id)
    return Response(status_code=204)


# ---------------------------------------------------------------- canned responses
class CannedIn(BaseModel):
    """POST /v1/inbox/canned body. shortcut: typed as ``/shortcut`` in the reply box."""

    shortcut: str = Field(pattern=SHORTCUT_PATTERN, description="lower-case letters, digits, - and _")
    title: NonBlankText = Field(max_length=200)
    text: NonBlankText = Field(max_length=10_000)


class CannedPatch(BaseModel):
    """PATCH /v1/inbox/canned/{id} body."""

    shortcut: str | None = Field(default=None, pattern=SHORTCUT_PATTERN)
    title: NonBlankText | None = Field(default=None, max_length=200)
    text: NonBlankText | None = Field(default=None, max_length=10_000)


class CannedOut(BaseModel):
    """A canned response."""

    id: UUID
    shortcut: str
    title: str
    text: str
    created_at: datetime
    updated_at: datetime


def _canned(r: Any) -> CannedOut:
    return CannedOut(**{k: r[k] for k in CannedOut.model_fields})


@router.get("/inbox/canned", response_model=list[CannedOut])
async def list_canned(ctx: Ctx, who: User) -> list[CannedOut]:
    """The tenant's canned responses, by shortcut."""
    async with ctx.pool.acquire() as conn:
        return [_canned(r) for r in await inbox_db.list_canned(conn, who.tenant_id)]


async def _save_canned(ctx: Any, who: Any, canned_id: UUID | None, body: Any) -> CannedOut:
    try:
        async with ctx.pool.acquire() as conn:
            row = await inbox_db.save_canned(conn, who.tenant_id, canned_id, body.shortcut, body.title,
                                             body.text, who.user_id)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"the shortcut /{body.shortcut} is in use: pick another", field="shortcut") from None
    return _canned(row)


@router.post("/inbox/canned", response_model=CannedOut, status_code=201)
async def create_canned(body: CannedIn, ctx: Ctx, who: Owner) -> CannedOut:
    """Create a canned response (409 for a shortcut in use)."""
    return await _save_canned(ctx, who, None, body)


@router.patch("/inbox/canned/{canned_id}", response_model=CannedOut)
async def patch_canned(canned_id: UUID, body: CannedPatch, ctx: Ctx, who: Owner) -> CannedOut:
    """Change a canned response's shortcut, title or text."""
    return await _save_canned(ctx, who, canned_id, body)


@router.delete("/inbox/canned/{canned_id}", status_code=204)
async def delete_canned(canned_id: UUID, ctx: Ctx, who: Owner) -> Response:
    """Delete a canned response."""
    async with ctx.pool.acquire() as conn:
        await inbox_db.delete_canned(conn, who.tenant_id, canned_id)
    return Response(status_code=204)


# ---------------------------------------------------------------- settings
class SettingsOut(BaseModel):
    """The inbox settings, and whether the team is within business hours now."""

    settings: inbox_hours.InboxSettings
    open_now: bool
    next_open: datetime | None
    updated_at: datetime | None = None


def _settings_out(s: inbox_hours.InboxSettings, updated: datetime | None = None) -> SettingsOut:
    at = inbox_hours.now_utc()
    return SettingsOut(settings=s, open_now=s.business_hours.is_open(at),
                       next_open=s.business_hours.next_open(at), updated_at=updated)


@router.get("/inbox/settings", response_model=SettingsOut)
async def get_settings(ctx: Ctx, who: User) -> SettingsOut:
    """Business hours, offline auto-reply, CSAT and the default per-agent limit."""
    async with ctx.pool.acquire() as conn:
        return _settings_out(await inbox_hours.get_inbox_settings(conn, who.tenant_id))


@router.put("/inbox/settings", response_model=SettingsOut)
async def put_settings(body: inbox_hours.InboxSettings, ctx: Ctx, who: Owner) -> SettingsOut:
    """Replace the settings (omitted fields take their defaults). Business hours: ``{"enabled":
    true, "timezone": "Europe/Berlin", "weekly": {"mon": [["09:00", "17:00"]]}, "holidays":
    ["2026-12-25"]}``; outside them an escalation gets ``offline_message`` (``{next_open}`` is
    filled in), its SLA counts from the next opening, and the widget shows the offline state.
    A field that fails validation: 422 naming it."""
    async with ctx.pool.acquire() as conn:
        updated = await inbox_hours.put_inbox_settings(conn, who.tenant_id, body)
    return _settings_out(body, updated)
