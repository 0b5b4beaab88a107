"""One exception hierarchy for the whole runtime.

Each subclass carries an HTTP status, a stable machine ``code`` and a message that says what was
wrong and what to do. They are turned into JSON responses only at the edge (``runtime/api``):
``{"error": {"code": ..., "message": ..., **fields}}``.
"""

from __future__ import annotations

from typing import Any


class ChatEngineError(Exception):
    """Base of every error the runtime raises on purpose.

    status_code: HTTP status used at the edge; code: stable snake_case identifier;
    fields: extra JSON-safe details included in the response body.
    """

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        """JSON body: ``{"error": {"code", "message", ...fields}}``."""
        return {"error": {"code": self.code, "message": self.message, **self.fields}}


class ConfigError(ChatEngineError):
    """Settings are invalid or inconsistent; the message names the CHAT_ENGINE_* variable."""

    code = "config_error"


class Unauthorized(ChatEngineError):
    """Missing, malformed or unknown credentials (401)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ChatEngineError):
    """Valid credentials without the needed role (403). Never used for other tenants' rows."""

    status_code = 403
    code = "forbidden"


class InvalidLogin(Unauthorized):
    """A login or invite that did not work (401); never says which part was wrong."""

    code = "invalid_login"


class CsrfRefused(Forbidden):
    """A write with the login cookie that did not come from a page of this server (403): no
    Origin, another origin, or a missing/wrong X-CSRF-Token."""

    code = "csrf_refused"


class NotFound(ChatEngineError):
    """The row does not exist for this tenant (404); another tenant's row is also 404."""

    status_code = 404
    code = "not_found"


class TenantNotFound(NotFound):
    """No tenant with that id (404)."""

    code = "tenant_not_found"


class SessionNotFound(NotFound):
    """No session with that id for this tenant/channel (404)."""

    code = "session_not_found"


class InvalidInput(ChatEngineError):
    """The request body or parameters are invalid (422); ``field`` names the offending field."""

    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(ChatEngineError):
    """A message, page or upload exceeds its size limit (413)."""

    status_code = 413
    code = "payload_too_large"


class Conflict(ChatEngineError):
    """The request conflicts with the current state, e.g. a closed session (409)."""

    status_code = 409
    code = "conflict"


class RateLimited(ChatEngineError):
    """Too many requests (429); ``retry_after_s`` says when to retry."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class BackendUnavailable(ChatEngineError):
    """Every model backend failed or is saturated (503)."""

    status_code = 503
    code = "backend_unavailable"


class GenerationFailed(ChatEngineError):
    """A backend failed after streaming text; the turn ends with an error, never a retry (502)."""

    status_code = 502
    code = "generation_failed"


class EmbeddingDimensionMismatch(ConfigError):
    """The embedding model's dimension differs from the schema's vector column."""

    code = "embedding_dimension_mismatch"


class IngestionError(ChatEngineError):
    """A knowledge-base source could not be read (recorded per source in the job) (422)."""

    status_code = 422
    code = "ingestion_error"


class SessionPassivating(ChatEngineError):
    """The session's actor is persisting and exiting; call again (a new actor takes over) (503)."""

    status_code = 503
    code = "session_passivating"


class DependencyUnavailable(ChatEngineError):
    """Postgres or Redis is unreachable; nothing was changed, try again shortly (503)."""

    status_code = 503
    code = "dependency_unavailable"


class TurnQueueFull(RateLimited):
    """Too many customer messages already wait for an answer in this conversation (429); the
    message was not stored. ``retry_after_s``: seconds after which sending it again may work."""

    code = "turn_queue_full"

    def __reduce__(self) -> tuple[Any, ...]:  # raised in the actor, re-raised at the ingress
        return (type(self), (self.message, self.retry_after_s))


class TooManyStreams(RateLimited):
    """Too many open event streams for this session or tenant (429); ``retry_after_s`` says when
    a slot may have freed (a closed stream frees its slot at once)."""

    code = "too_many_streams"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.retry_after_s))


class CapacityExceeded(ChatEngineError):
    """No room for another active conversation: the tenant's or the node's cap of live session
    actors is reached (503). ``retry_after_s``: seconds after which a retry may find room (idle
    conversations are passivated and free their place)."""

    status_code = 503
    code = "capacity_exceeded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:  # raised in the Timekeeper or an actor, crosses Ray
        return (type(self), (self.message, self.retry_after_s))


class SlotUnavailable(Conflict):
    """The booking slot is full, has passed or is gone (409): pick another free time
    (``GET /v1/bookings/availability``)."""

    code = "slot_unavailable"


class ActionSourceUnavailable(ChatEngineError):
    """The tenant's own system behind an action (the orders database or endpoint) timed out,
    refused the connection or answered with an error (503); the customer is offered a human."""

    status_code = 503
    code = "action_source_unavailable"
