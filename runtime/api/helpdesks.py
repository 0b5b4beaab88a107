"""Help-desk destinations (owner), and the tickets and leads escalations produce (owner, agent).

- ``POST/GET /v1/helpdesks``, ``GET/DELETE /v1/helpdesks/{id}``: where tickets and leads go: a
  signed generic ``webhook``, ``zendesk`` or ``slack`` (the body's ``kind`` picks the setup).
  Credentials are encrypted at rest and never returned; a webhook's signing secret, when the
  owner leaves it out, is generated and shown once. ``POST /v1/helpdesks/{id}/redrive`` sends the
  destination's dead letters again.
- ``GET /v1/tickets`` (``/{id}`` with its deliveries per destination), ``GET /v1/leads``.

The protocols, the signature scheme and the retry rules are in :mod:`runtime.helpdesk.destinations`
and :mod:`runtime.helpdesk.sender`.
"""

from __future__ import annotations

import secrets as pysecrets
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from runtime.api.channel_setup import Address, Name, Secret
from runtime.api.contract import AUTHED, error_responses
from runtime.api.deps import Ctx, Owner, User
from runtime.api.outbox import Redriven
from runtime.db import helpdesks as helpdesk_db
from runtime.db import outbox as outbox_db
from runtime.db import tickets as ticket_db
from runtime.errors import InvalidInput
from runtime.security import encrypt_secrets

router = APIRouter(prefix="/v1", tags=["helpdesks"], responses=error_responses(*AUTHED, 404))

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
URL_PATTERN = rf"^https?://{_LABEL}(?:\.{_LABEL})*{_PORT}(?:/[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookConfig(_Strict):
    url: str = Field(max_length=2000, pattern=URL_PATTERN, examples=["https://crm.example/hooks/chat-engine"],
                     description="where events are POSTed (https in production; a host name or IPv4)")


class WebhookSecrets(_Strict):
    signing_secret: str | None = Field(
        default=None, min_length=16, max_length=512, pattern=r"^[\x21-\x7e]+$",
        description="HMAC-SHA256 key for X-ChatEngine-Signature; generated and shown once when left out")


class WebhookCreate(_Strict):
    """A signed generic webhook: each ticket and lead is POSTed as JSON, signed."""

    kind: Literal["webhook"]
    name: Name = ""
    config: WebhookConfig
    secrets: WebhookSecrets = Field(default_factory=WebhookSecrets)


class ZendeskConfig(_Strict):
    subdomain: str = Field(max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
                           description="acme for acme.zendesk.com")
    email: Address = Field(description="the Zendesk agent the API token belongs to")
    tags: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,80}$")]] = Field(
        default_factory=list, max_length=10, description="extra tags on every ticket")


class ZendeskSecrets(_Strict):
    api_token: Secret = Field(description="Admin Center > Apps and integrations > Zendesk API token")


class ZendeskCreate(_Strict):
    """Zendesk Support (Tickets API, API-token auth)."""

    kind: Literal["zendesk"]
    name: Name = ""
    config: ZendeskConfig
    secrets: ZendeskSecrets


class SlackConfig(_Strict):
    channel: str = Field(max_length=40, pattern=r"^[CG][A-Z0-9]{6,39}$",
                         description="the channel id (C0123ABCD); invite the app to it")


class SlackSecrets(_Strict):
    bot_token: str = Field(max_length=4096, pattern=r"^xoxb-[\x21-\x7e]+$",
                           description="a Bot User OAuth Token with chat:write")


class SlackCreate(_Strict):
    """A Slack message per ticket, with a link to the inbox."""

    kind: Literal["slack"]
    name: Name = ""
    config: SlackConfig
    secrets: SlackSecrets


HelpdeskCreate = Annotated[WebhookCreate | ZendeskCreate | SlackCreate, Field(discriminator="kind")]


class HelpdeskOut(BaseModel):
    """A destination, without its credentials."""

    id: UUID
    kind: str
    name: str
    status: str
    config: dict[str, Any]
    credentials_set: list[str] = Field(description="names of the stored secrets")
    signing_secret: str | None = Field(
        default=None, description="the generated webhook signing secret: shown once, at creation")
    created_at: datetime


def _out(row: Any, signing_secret: str | None = None) -> HelpdeskOut:
    return HelpdeskOut(id=row["id"], kind=row["kind"], name=row["name"], status=row["status"],
                       config=row["config"], credentials_set=list(row["credential_names"] or []),
                       signing_secret=signing_secret, created_at=row["created_at"])


@router.post("/helpdesks", response_model=HelpdeskOut, status_code=201)
async def create_helpdesk(body: HelpdeskCreate, ctx: Ctx, who: Owner) -> HelpdeskOut:
    """Add a destination for tickets and leads; its ``kind`` says which setup it needs:

    - webhook: config ``url``; secrets ``signing_secret`` (optional: generated and returned once)
    - zendesk: config ``subdomain``, ``email`` (``tags``); secrets ``api_token``
    - slack: config ``channel``; secrets ``bot_token``

    Every later escalation's ticket (and lead) is sent to every destination through the outbox.
    """
    config = body.config.model_dump(exclude_none=True)
    secrets = body.secrets.model_dump(exclude_none=True)
    generated = None
    if isinstance(body, WebhookCreate):
        if ctx.settings.environment == "production" and not config["url"].startswith("https://"):
            raise InvalidInput("config.url must be https:// in production: events carry customer data",
                               field="config.url")
        if "signing_secret" not in secrets:
            generated = secrets["signing_secret"] = "whsec_" + pysecrets.token_urlsafe(32)
    sealed = {"enc": encrypt_secrets(ctx.settings, secrets), "keys": sorted(secrets)}
    async with ctx.pool.acquire() as conn:
        row = await helpdesk_db.create_helpdesk(conn, who.tenant_id, body.kind, body.name or body.kind,
                                                config, sealed)
    return _out(row, generated)


@router.get("/helpdesks", response_model=list[HelpdeskOut])
async def list_helpdesks(ctx: Ctx, who: Owner) -> list[HelpdeskOut]:
    """The tenant's destinations, oldest first."""
    async with ctx.pool.acquire() as conn:
        rows = await helpdesk_db.list_helpdesks(conn, who.tenant_id)
    return [_out(r) for r in rows]


@router.get("/helpdesks/{helpdesk_id}", response_model=HelpdeskOut)
async def get_helpdesk(helpdesk_id: UUID, ctx: Ctx, who: Owner) -> HelpdeskOut:
    """One destination (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        return _out(await helpdesk_db.get_helpdesk(conn, who.tenant_id, helpdesk_id))


@router.delete("/helpdesks/{helpdesk_id}", status_code=204)
async def delete_helpdesk(helpdesk_id: UUID, ctx: Ctx, who: Owner) -> Response:
    """Remove a destination; its unsent and dead rows go with it (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        await helpdesk_db.delete_helpdesk(conn, who.tenant_id, helpdesk_id)
    return Response(status_code=204)


@router.post("/helpdesks/{helpdesk_id}/redrive", response_model=Redriven)
async def redrive_helpdesk(helpdesk_id: UUID, ctx: Ctx, who: Owner) -> Redriven:
    """Send every dead row of the destination again now (after fixing its setup, or once it is
    back up); ``{"redriven": n}``."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        await helpdesk_db.get_helpdesk(conn, who.tenant_id, helpdesk_id)
        n = await outbox_db.redrive(conn, who.tenant_id, helpdesk_id=helpdesk_id)
    return Redriven(redriven=n)


# ---------------------------------------------------------------- tickets and leads
Priority = Literal["low", "normal", "high", "critical"]


class TicketDelivery(BaseModel):
    """The ticket's outbox row for one destination."""

    outbox_id: int
    helpdesk_id: UUID | None
    status: str = Field(description="pending | sending | sent | dead")
    attempts: int
    last_error: str | None
    provider_id: str | None = Field(description="the destination's id for it (Zendesk ticket id, Slack ts)")
    sent_at: datetime | None


class TicketOut(BaseModel):
    """A ticket an escalation opened: priority from the trigger (refund and billing disputes high,
    legal threats critical), category from the signal, an extractive summary of the customer's
    key messages, and links to the transcript (``GET /v1/sessions/{id}/log``) and the inbox."""

    id: UUID
    session_id: UUID
    escalation_id: UUID | None
    contact_id: UUID | None
    lead_id: UUID | None
    subject: str
    summary: str
    transcript_url: str
    inbox_url: str
    priority: str
    category: str
    signal: str | None
    reason: str
    status: str
    created_at: datetime
    deliveries: list[TicketDelivery] | None = Field(
        default=None, description="per destination (GET /v1/tickets/{id} only)")


def _ticket(row: Any, deliveries: list[Any] | None = None) -> TicketOut:
    fields = {k: row[k] for k in TicketOut.model_fields if k != "deliveries"}
    out = None
    if deliveries is not None:
        out = [TicketDelivery(outbox_id=d["id"], helpdesk_id=d["helpdesk_id"], status=d["status"],
                              attempts=d["attempts"], last_error=d["last_error"],
                              provider_id=d["provider_message_id"], sent_at=d["sent_at"]) for d in deliveries]
    return TicketOut(**fields, deliveries=out)


@router.get("/tickets", response_model=list[TicketOut])
async def list_tickets(
    ctx: Ctx, who: User, session_id: UUID | None = None, priority: Priority | None = None,
    category: str | None = Query(default=None, max_length=40, pattern=r"^[a-z_]+$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[TicketOut]:
    """The tenant's tickets, newest first (by session, priority or category)."""
    async with ctx.pool.acquire() as conn:
        rows = await ticket_db.list_tickets(conn, who.tenant_id, session_id=session_id, priority=priority,
                                            category=category, limit=limit)
    return [_ticket(r) for r in rows]


@router.get("/tickets/{ticket_id}", response_model=TicketOut)
async def get_ticket(ticket_id: UUID, ctx: Ctx, who: User) -> TicketOut:
    """One ticket with its delivery to each destination (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        row = await ticket_db.get_ticket(conn, who.tenant_id, ticket_id)
        deliveries = await ticket_db.ticket_deliveries(conn, who.tenant_id, ticket_id, row["session_id"])
    return _ticket(row, list(deliveries))


class LeadOut(BaseModel):
    """A lead: captured by lead capture (``source=lead_capture``) or found at an escalation
    (``escalation``: the contact left an email or phone and showed a buying signal)."""

    id: UUID
    session_id: UUID | None
    contact_id: UUID | None
    ticket_id: UUID | None = Field(description="the ticket that carried it to the help desks")
    email: str | None
    phone: str | None
    name: str | None
    topic: str | None
    question: str | None
    source: str
    buying_signal: str | None = Field(description="pricing | quote | demo | buy | trial | topic:<t>")
    forwarded_at: datetime | None = Field(description="when it was enqueued to the destinations")
    created_at: datetime


@router.get("/leads", response_model=list[LeadOut])
async def list_leads(
    ctx: Ctx, who: User, session_id: UUID | None = None,
    source: Literal["lead_capture", "escalation"] | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[LeadOut]:
    """The tenant's leads, newest first."""
    async with ctx.pool.acquire() as conn:
        rows = await ticket_db.list_leads(conn, who.tenant_id, session_id=session_id, source=source,
                                          limit=limit)
    return [LeadOut(**{k: r[k] for k in LeadOut.model_fields}) for r in rows]
