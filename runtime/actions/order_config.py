"""A tenant's order-status setup: where its orders live and how they are read and shown.

Two sources (a union on ``source``):

- ``postgres``: a DSN (``postgresql://user:password@host:port/database[?sslmode=...]``) and a
  parameterised query whose ``$1`` is the order id, e.g.
  ``SELECT status, eta AS estimated_delivery, carrier, tracking_url, email, phone FROM orders
  WHERE id = $1``. It runs in a read-only transaction under a statement timeout, on a connection
  made to the address the egress policy checked; give it a role that can only read that table.
- ``https``: a URL template with ``{order_id}``, e.g. ``https://shop.example/api/orders/{order_id}``,
  fetched with GET through the crawler's egress policy; 404 means no such order, a JSON object
  is the order. An optional ``authorization`` header value is sent with it.

The DSN and the Authorization value are credentials: sealed with Fernet, never returned. Every
constraint is in the schema, so a request the schema accepts is stored as given; a source that
then fails (an unknown host, a wrong password, a query error) fails at lookup time, where the
customer gets the fallback and the offer of a human, and the error is logged for the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from runtime.actions.entities import OrderIdShape
from runtime.fields import Text

_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*)"
_USERINFO = r"[A-Za-z0-9._~-]+(?::[A-Za-z0-9._~!$&'()*+,;=%-]*)?"
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[SslMode, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DSN_PATTERN = (rf"^postgres(?:ql)?://{_USERINFO}@{_HOST}(?::{_PORT})?/[A-Za-z0-9_.-]{{1,63}}"
               rf"(?:\?sslmode=(?:{'|'.join(SSL_MODES)}))?$")
URL_PATTERN = rf"^https?://{_HOST}(?::{_PORT})?/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*\{{order_id\}}[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(?:\.[A-Za-z_][A-Za-z0-9_]{0,62}){0,3}$"
DEFAULT_TEMPLATE = ("Order {order_id}: {status}.\nEstimated delivery: {estimated_delivery}\n"
                    "Carrier: {carrier}\nTracking: {tracking_url}")
TEMPLATE_FIELDS = ("order_id", "status", "estimated_delivery", "carrier", "tracking_url")

FieldName = Annotated[str, Field(
    pattern=FIELD_NAME, max_length=255,
    description="a column name (postgres) or a JSON key, dots for nesting (https)")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderIdFormat(_Strict):
    """What the tenant's order ids look like (a message with something else is asked again,
    naming this shape)."""

    chars: Literal["digits", "alphanumeric"] = Field(
        default="digits", description="alphanumeric: letters, digits and '-'")
    min_length: int = Field(default=4, ge=1, le=40)
    max_length: int = Field(default=12, ge=1, le=40, description="below min_length counts as min_length")
    prefix: str = Field(
        default="", max_length=8, pattern=r"^[A-Za-z#-]*$",
        description="a fixed start customers may write, e.g. '#' or 'SO-' (optional for them)")

    def shape(self) -> OrderIdShape:
        return OrderIdShape(self.chars, self.min_length, self.max_length, self.prefix)


class OrderFields(_Strict):
    """Where each part of an order is in a row (postgres) or the JSON object (https)."""

    status: FieldName = "status"
    estimated_delivery: FieldName = "estimated_delivery"
    carrier: FieldName = "carrier"
    tracking_url: FieldName = "tracking_url"
    email: FieldName = Field(default="email", description="the order's email (verification)")
    phone: FieldName = Field(default="phone", description="the order's phone number (verification)")


class _OrderStatusBase(_Strict):
    order_id: OrderIdFormat = Field(default_factory=OrderIdFormat)
    fields: OrderFields = Field(default_factory=OrderFields)
    phone_region: str = Field(
        default="US", pattern=r"^[A-Z]{2}$",
        description="ISO 3166 region for phone numbers written without a country code")
    timeout_s: float = Field(default=5.0, ge=0.5, le=30.0,
                             description="the whole lookup (connect and query), seconds")
    result_template: Text = Field(
        default=DEFAULT_TEMPLATE, min_length=1, max_length=1000,
        description="the answer; placeholders {order_id} {status} {estimated_delivery} {carrier} "
        "{tracking_url} (others are left as written)")
    max_failed_lookups: int = Field(
        default=3, ge=1, le=10,
        description="failed lookups or verifications in one conversation before a human takes over")


class PostgresOrderSource(_OrderStatusBase):
    """Orders in the tenant's Postgres database."""

    source: Literal["postgres"]
    dsn: str = Field(max_length=2000, pattern=DSN_PATTERN, description="stored encrypted, never returned",
                     examples=["postgresql://orders_reader:secret@db.shop.example:5432/shop?sslmode=require"])
    query: Text = Field(
        min_length=3, max_length=4000, pattern=r"\$1",
        description="one SELECT with $1 for the order id; run read-only under a statement timeout",
        examples=["SELECT status, eta AS estimated_delivery, carrier, tracking_url, email, phone "
                  "FROM orders WHERE id = $1"])


class HttpsOrderSource(_OrderStatusBase):
    """Orders from the tenant's HTTPS endpoint returning JSON."""

    source: Literal["https"]
    url: str = Field(max_length=2000, pattern=URL_PATTERN,
                     description="with {order_id}; https (http only outside production)",
                     examples=["https://shop.example/api/orders/{order_id}"])
    authorization: str | None = Field(
        default=None, min_length=1, max_length=4096, pattern=r"^[\x20-\x7e]+$",
        description="the Authorization header value, e.g. 'Bearer ...'; stored encrypted, never returned")


OrderSourceSetup = Annotated[PostgresOrderSource | HttpsOrderSource, Field(discriminator="source")]
SECRET_FIELDS = ("dsn", "authorization")


def split_secrets(setup: PostgresOrderSource | HttpsOrderSource) -> tuple[dict[str, Any], dict[str, str]]:
    """(the settings to store as they are, the credentials to seal)."""
    data = setup.model_dump(mode="json")
    secrets = {k: data.pop(k) for k in SECRET_FIELDS if k in data}
    return data, {k: v for k, v in secrets.items() if v is not None}


def load_setup(config: dict[str, Any], secrets: dict[str, str]) -> PostgresOrderSource | HttpsOrderSource:
    """The stored settings and the opened credentials as one setup. Raises ValidationError for a
    row an older version wrote differently."""
    data = {**config, **secrets}
    if data.get("source") == "postgres":
        return PostgresOrderSource.model_validate(data)
    return HttpsOrderSource.model_validate(data)


@dataclass(frozen=True)
class Dsn:
    """A parsed ``postgresql://`` DSN (only the parts :data:`DSN_PATTERN` allows)."""

    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: SslMode

    @property
    def ssl(self) -> SslMode | bool:
        """asyncpg's ``ssl`` argument."""
        return False if self.sslmode == "disable" else self.sslmode

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        """Raises ValueError when ``dsn`` is not one :data:`DSN_PATTERN` accepts."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or not parts.username:
            raise ValueError("not a postgresql://user[:password]@host[:port]/database DSN")
        sslmode: SslMode = "prefer"
        if parts.query:
            key, _, value = parts.query.partition("=")
            modes = {m: m for m in SSL_MODES}
            if key != "sslmode" or value not in modes:
                raise ValueError("the only DSN parameter accepted is sslmode")
            sslmode = modes[value]
        return cls(host=parts.hostname, port=parts.port or 5432, user=unquote(parts.username),
                   password=unquote(parts.password or ""), database=unquote(parts.path.lstrip("/")),
                   sslmode=sslmode)
