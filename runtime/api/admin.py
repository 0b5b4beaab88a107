"""Admin rows of the API: tenants (platform admin), bot config, channels, users (owner)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, EmailStr, Field, ValidationError

from runtime.api.channel_setup import ChannelCreate, WidgetChannelCreate, setup_parts
from runtime.api.contract import AUTHED, NonBlankText, error_responses, merge_patch_schema
from runtime.api.deps import Admin, Ctx, Owner
from runtime.api.widget import normalize_origin
from runtime.bot_config import BotConfig, BotStatus, merge_patch
from runtime.channels.registry import adapter_for
from runtime.db import bot_configs, channels, tenants
from runtime.errors import InvalidInput
from runtime.fields import error_message
from runtime.security import encrypt_secrets

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
class UserCreate(BaseModel):
    """POST /v1/users body."""

    name: NonBlankText = Field(max_length=200)
    email: EmailStr | None = None
    role: Literal["agent", "owner"] = "agent"


class UserCreated(BaseModel):
    """The new user and its API key (shown once)."""

    id: UUID
    name: str
    email: str | None
    role: str
    api_key: str


class UserOut(BaseModel):
    """A user, without key material beyond its prefix."""

    id: UUID
    name: str
    email: str | None
    role: str
    api_key_prefix: str
    created_at: datetime


@router.post("/users", response_model=UserCreated, status_code=201)
async def create_user(body: UserCreate, ctx: Ctx, who: Owner) -> UserCreated:
    """Create an agent (or another owner) in the caller's tenant."""
    async with ctx.pool.acquire() as conn:
        row, key = await tenants.create_user(conn, who.tenant_id, body.name, body.email, body.role)
    return UserCreated(id=row["id"], name=row["name"], email=row["email"], role=row["role"],
                       api_key=key)


@router.get("/users", response_model=list[UserOut])
async def list_users(ctx: Ctx, who: Owner) -> list[UserOut]:
    """The tenant's users."""
    async with ctx.pool.acquire() as conn:
        rows = await tenants.list_users(conn, who.tenant_id)
    return [UserOut(**dict(r)) for r in rows]
