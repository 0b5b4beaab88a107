"""Admin rows of the API: tenants (platform admin), bot config, channels, users (owner)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, EmailStr, Field, ValidationError, field_validator

from runtime.api.auth import hash_password, new_invite
from runtime.api.channel_setup import ChannelCreate, WidgetChannelCreate, setup_parts
from runtime.api.contract import AUTHED, NonBlankText, Text, error_responses, merge_patch_schema
from runtime.api.deps import Admin, Ctx, Owner
from runtime.api.widget import normalize_origin
from runtime.bot_config import BotConfig, BotStatus, merge_patch
from runtime.channels.registry import adapter_for
from runtime.db import bot_configs, channels, tenants
from runtime.db import users as users_db
from runtime.errors import Conflict, Forbidden, InvalidInput
from runtime.fields import error_message, json_int
from runtime.security import encrypt_secrets, hash_api_key

router = APIRouter(prefix="/v1", tags=["admin"], responses=error_responses(*AUTHED, 404, 409))


# ---------------------------------------------------------------- tenants
class TenantCreate(BaseModel):
    """POST /v1/tenants body."""

    name: NonBlankText = Field(max_length=200)
    owner_name: NonBlankText = Field(default="Owner", max_length=200)
    owner_email: EmailStr | None = None


class TenantCreated(BaseModel):
    """The new tenant, its owner, and the owner's API key (shown once)."""

    tenant_id: UUID
    name: str
    owner_user_id: UUID
    owner_api_key: str
    created_at: datetime


@router.post("/tenants", response_model=TenantCreated, status_code=201)
async def create_tenant(body: TenantCreate, ctx: Ctx, _: Admin) -> TenantCreated:
    """Create a tenant with its owner and a default bot config (platform admin)."""
    async with ctx.pool.acquire() as conn:
        tenant, owner, key = await tenants.create_tenant(
            conn, body.name, body.owner_name, body.owner_email,
            BotConfig().model_dump(mode="json"),
        )
    return TenantCreated(
        tenant_id=tenant["id"], name=tenant["name"], owner_user_id=owner["id"],
        owner_api_key=key, created_at=tenant["created_at"],
    )


# ---------------------------------------------------------------- bot config
class BotConfigOut(BaseModel):
    """GET/PATCH /v1/bot-config response."""

    tenant_id: UUID
    status: BotStatus
    credit_balance: int | None = Field(description="None: unlimited; <= 0 pauses the bot")
    config: BotConfig
    updated_at: datetime


def _config_out(row: Any) -> BotConfigOut:
    return BotConfigOut(
        tenant_id=row["tenant_id"], status=row["status"], credit_balance=row["credit_balance"],
        config=BotConfig.model_validate(row["config"]), updated_at=row["updated_at"],
    )


@router.get("/bot-config", response_model=BotConfigOut)
async def get_bot_config(ctx: Ctx, who: Owner) -> BotConfigOut:
    """The tenant's bot configuration."""
    async with ctx.pool.acquire() as conn:
        return _config_out(await bot_configs.get_bot_config(conn, who.tenant_id))


@router.patch("/bot-config", response_model=BotConfigOut, openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": merge_patch_schema(BotConfig, {"status": {
        "anyOf": [{"enum": ["active", "paused"]}, {"type": "null"}]}})},
}}})
async def patch_bot_config(body: dict[str, Any], ctx: Ctx, who: Owner) -> BotConfigOut:
    """JSON merge patch of the config; ``status`` (active|paused) may be patched too.

    Body example: ``{"greeting": "Hello!", "escalation": {"keywords": ["refund"]}}``.
    A field that fails validation gives 422 naming it (e.g. ``escalation.amount_threshold``).
    """
    patch = dict(body)
    status = patch.pop("status", None)
    if status is not None and status not in ("active", "paused"):
        raise InvalidInput("status: must be 'active' or 'paused'", field="status")
    for forbidden in ("credit_balance", "tenant_id"):
        if forbidden in patch:
            raise InvalidInput(f"{forbidden}: read-only here", field=forbidden)
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await bot_configs.get_bot_config(conn, who.tenant_id, for_update=True)
        merged = merge_patch(row["config"], patch)
        try:
            config = BotConfig.model_validate(merged, strict=True)  # JSON types as the schema says
        except ValidationError as exc:
            fields = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": error_message(e)}
                for e in exc.errors()
            ]
            summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
            raise InvalidInput(f"invalid bot config: {summary}", fields=fields) from None
        new = await bot_configs.update_bot_config(
            conn, who.tenant_id, config.model_dump(mode="json"), status or row["status"]
        )
    return _config_out(new)


# ---------------------------------------------------------------- channels
class ChannelOut(BaseModel):
    """A channel; widget channels carry their public token and the script-tag snippet."""

    id: UUID
    type: str
    name: str
    status: str
    config: dict[str, Any]
    allowed_origins: list[str]
    widget_token: str | None = None
    snippet: str | None = None
    webhook_url: str | None = Field(default=None, description="register this URL with the provider")
    credentials_set: list[str] = Field(default_factory=list, description="names of the stored secrets")
    created_at: datetime


def public_base(request: Request, ctx: Ctx) -> str:
    """The base URL customers' browsers use to reach this ingress."""
    if ctx.settings.public_base_url is not None:
        return str(ctx.settings.public_base_url).rstrip("/")
    return str(request.base_url).rstrip("/")


def widget_snippet(base: str, token: str) -> str:
    """The one tag an owner pastes into their site."""
    return f'<script src="{base}/widget.js" data-widget-token="{token}" async></script>'


def webhook_url(base: str, channel_type: str, channel_id: Any) -> str:
    """Where a provider delivers a messaging channel's webhooks."""
    return f"{base}/v1/webhooks/{channel_type}/{channel_id}"


def _channel_out(row: Any, base: str, credentials: list[str] | None = None) -> ChannelOut:
    token = row["widget_token"]
    return ChannelOut(
        id=row["id"], type=row["type"], name=row["name"], status=row["status"],
        config=row["config"], allowed_origins=list(row["allowed_origins"]), widget_token=token,
        snippet=widget_snippet(base, token) if token else None,
        webhook_url=webhook_url(base, row["type"], row["id"]) if row["type"] != "widget" else None,
        credentials_set=credentials if credentials is not None else list(row["credential_names"] or []),
        created_at=row["created_at"],
    )


@router.post("/channels", response_model=ChannelOut, status_code=201)
async def create_channel(body: ChannelCreate, request: Request, ctx: Ctx, who: Owner) -> ChannelOut:
    """Create a channel; the body's ``type`` says which setup it needs (see the schema):

    - widget: ``allowed_origins`` (at least one)
    - whatsapp: config ``phone_number_id``; secrets ``access_token``, ``app_secret``, ``verify_token``
    - telegram: secrets ``bot_token``, ``webhook_secret`` (the ``secret_token`` given to setWebhook)
    - sms (Twilio): config ``account_sid`` and ``from_number`` or ``messaging_service_sid``;
      secrets ``auth_token``
    - email (Mailgun): config ``domain``, ``from_address`` (``from_name``); secrets ``api_key``,
      ``webhook_signing_key``
    - slack: config ``bot_user_id`` (its own messages are ignored); secrets ``bot_token``,
      ``signing_secret``

    Secrets are encrypted at rest and never returned; the answer names them and, for messaging
    channels, gives the ``webhook_url`` to register with the provider.
    """
    config, secrets = setup_parts(body)
    origins: list[str] = []
    sealed: dict[str, Any] = {}
    if isinstance(body, WidgetChannelCreate):
        for origin in body.allowed_origins:
            normal = normalize_origin(origin) or origin
            if normal not in origins:
                origins.append(normal)
    else:
        config = adapter_for(body.type).validate_setup(config, secrets)
        sealed = {"enc": encrypt_secrets(ctx.settings, secrets), "keys": sorted(secrets)}
    async with ctx.pool.acquire() as conn:
        row = await channels.create_channel(
            conn, who.tenant_id, body.type, body.name or body.type, config, sealed, origins,
        )
    return _channel_out(row, public_base(request, ctx), sorted(secrets))


@router.get("/channels", response_model=list[ChannelOut])
async def list_channels(request: Request, ctx: Ctx, who: Owner) -> list[ChannelOut]:
    """The tenant's channels."""
    async with ctx.pool.acquire() as conn:
        rows = await channels.list_channels(conn, who.tenant_id)
    base = public_base(request, ctx)
    return [_channel_out(r, base) for r in rows]


@router.get("/channels/{channel_id}", response_model=ChannelOut)
async def get_channel(channel_id: UUID, request: Request, ctx: Ctx, who: Owner) -> ChannelOut:
    """One channel (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        row = await channels.get_channel(conn, who.tenant_id, channel_id)
    return _channel_out(row, public_base(request, ctx))


# ---------------------------------------------------------------- users
Role = Literal["owner", "admin", "agent", "viewer"]


class UserCreate(BaseModel):
    """POST /v1/users body. Give a ``password`` (the person logs in to the inbox with the email
    at once) or ``invite: true`` (an invite token is returned once, redeemed at POST
    /v1/auth/invite), or neither (an API key only, for integrations)."""

    name: NonBlankText = Field(max_length=200)
    email: EmailStr | None = None
    role: Role = "agent"
    password: Text | None = Field(default=None, min_length=10, max_length=256)
    invite: bool = Field(default=False, strict=True)
    max_open_sessions: int | None = Field(default=None, ge=1, le=1000, strict=True,
                                          description="open conversations at once (round-robin limit)")

    _ints = field_validator("max_open_sessions", mode="before")(json_int)


class UserCreated(BaseModel):
    """The new user and its API key (shown once), and the invite token when one was asked for."""

    id: UUID
    name: str
    email: str | None
    role: str
    api_key: str
    invite_token: str | None = None
    invite_expires_at: datetime | None = None


class UserOut(BaseModel):
    """A user, without key material beyond its prefix."""

    id: UUID
    name: str
    email: str | None
    role: str
    api_key_prefix: str
    created_at: datetime
    can_log_in: bool = False
    invited: bool = False
    disabled: bool = False
    max_open_sessions: int | None = None


def _user_out(r: Any) -> UserOut:
    return UserOut(**{k: r[k] for k in ("id", "name", "email", "role", "api_key_prefix", "created_at",
                                        "can_log_in", "invited", "max_open_sessions")},
                   disabled=r["disabled_at"] is not None)


def _may_grant(who: Any, role: str) -> None:
    if role == "owner" and who.role != "owner":
        raise Forbidden("only an owner can make someone an owner")


@router.post("/users", response_model=UserCreated, status_code=201)
async def create_user(body: UserCreate, ctx: Ctx, who: Owner) -> UserCreated:
    """Create a user in the caller's tenant (owners and admins; only owners create owners).
    Roles: owner, admin (the setup and the inbox), agent (the inbox), viewer (reads only). An
    email that already logs in to a workspace: 409."""
    _may_grant(who, body.role)
    # Conflicts between fields the schema cannot express: 409, naming the field.
    if (body.password or body.invite) and body.email is None:
        raise Conflict("email: a user who logs in needs an email address", field="email")
    if body.password and body.invite:
        raise Conflict("invite: give a password or ask for an invite, not both", field="invite")
    password_hash = await hash_password(body.password) if body.password else None
    invite, expires = new_invite() if body.invite else (None, None)
    async with ctx.pool.acquire() as conn:
        row, key = await users_db.create_user(
            conn, who.tenant_id, body.name, body.email, body.role, password_hash=password_hash,
            invite_hash=hash_api_key(invite) if invite else None, invite_expires_at=expires,
            max_open_sessions=body.max_open_sessions)
    return UserCreated(id=row["id"], name=row["name"], email=row["email"], role=row["role"],
                       api_key=key, invite_token=invite, invite_expires_at=expires)


@router.get("/users", response_model=list[UserOut])
async def list_users(ctx: Ctx, who: Owner) -> list[UserOut]:
    """The tenant's users."""
    async with ctx.pool.acquire() as conn:
        rows = await users_db.list_users(conn, who.tenant_id)
    return [_user_out(r) for r in rows]


class UserPatch(BaseModel):
    """PATCH /v1/users/{id} body: any of these."""

    name: NonBlankText | None = Field(default=None, max_length=200)
    role: Role | None = None
    password: Text | None = Field(default=None, min_length=10, max_length=256,
                                  description="a new password; ends the user's logins")
    disabled: bool | None = Field(default=None, strict=True,
                                  description="true ends the user's logins and keys")
    max_open_sessions: int | None = Field(default=None, ge=1, le=1000, strict=True)

    _ints = field_validator("max_open_sessions", mode="before")(json_int)


@router.patch("/users/{user_id}", response_model=UserOut)
async def patch_user(user_id: UUID, body: UserPatch, ctx: Ctx, who: Owner) -> UserOut:
    """Change a user's name, role, password, limit, or disable them (owners and admins; an
    admin cannot change an owner or make one; the last active owner stays an active owner)."""
    fields: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"password"})
    fields = {k: v for k, v in fields.items() if v is not None or k == "max_open_sessions"}
    if body.password is not None:
        fields["password_hash"] = await hash_password(body.password)
    async with ctx.pool.acquire() as conn, conn.transaction():
        target = await users_db.get_user(conn, who.tenant_id, user_id)
        if target["role"] == "owner" and who.role != "owner":
            raise Forbidden("only an owner can change an owner")
        if "role" in fields:
            _may_grant(who, fields["role"])
        demoted = target["role"] == "owner" and (
            fields.get("role", "owner") != "owner" or bool(fields.get("disabled")))
        if demoted and await users_db.count_owners(conn, who.tenant_id) <= 1:
            raise Conflict("this is the last active owner: make someone else an owner first")
        row = await users_db.update_user(conn, who.tenant_id, user_id, **fields)
    return _user_out(row)
