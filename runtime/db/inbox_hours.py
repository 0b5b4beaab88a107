"""The tenant's inbox settings: business hours (timezone-aware), the offline auto-reply, the CSAT
question and the default per-agent limit. Stored as one validated jsonb row per tenant
(``inbox_settings``); a tenant without a row has the defaults (always open, CSAT on).

Business hours are weekly intervals in the tenant's IANA timezone (``zoneinfo``), e.g.
``{"mon": [["09:00", "17:30"]], "sat": [["10:00", "14:00"]]}``, plus holiday dates when closed
all day. An interval may end at ``24:00``; one that ends before it starts runs past midnight.
DST is handled by zoneinfo: a local time is converted with its own day's offset.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema, field_validator

from runtime.db import Conn
from runtime.fields import NonBlankText, json_int

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
DEFAULT_OFFLINE = ("Our team is offline right now. We're back {next_open}, and we'll reply here "
                   "as soon as we are.")
DEFAULT_CSAT_QUESTION = ("How would you rate this conversation? Reply with a number from 1 (poor) "
                         "to 5 (great).")
DEFAULT_CSAT_THANKS = "Thank you for your feedback!"


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


TIMEZONES = sorted(z for z in available_timezones() if "/" in z or z == "UTC")
_ZONES = frozenset(TIMEZONES)
HHMM = Annotated[str, Field(pattern=_HHMM.pattern, description="HH:MM, 24-hour (24:00: midnight at the end)")]
Interval = Annotated[list[HHMM], Field(min_length=2, max_length=2, description="[start, end]; an end before "
                                       "its start runs past midnight; start == end is ignored")]
DaySpans = Annotated[list[Interval], Field(max_length=6)]


def _iso_date_only(value: object) -> object:
    if not isinstance(value, (str, date)):
        raise ValueError("a date is a string YYYY-MM-DD")
    return value


HolidayDate = Annotated[date, BeforeValidator(_iso_date_only),
                        WithJsonSchema({"type": "string", "format": "date"})]


class Weekly(BaseModel):
    """Opening intervals per weekday (local time)."""

    model_config = ConfigDict(extra="forbid")

    mon: DaySpans = Field(default_factory=list)
    tue: DaySpans = Field(default_factory=list)
    wed: DaySpans = Field(default_factory=list)
    thu: DaySpans = Field(default_factory=list)
    fri: DaySpans = Field(default_factory=list)
    sat: DaySpans = Field(default_factory=list)
    sun: DaySpans = Field(default_factory=list)

    def spans(self, day: str) -> list[tuple[int, int]]:
        """The day's intervals in minutes, empty ones left out."""
        out = []
        for start, end in getattr(self, day):
            s, e = _minutes(start), _minutes(end)
            if s != e:
                out.append((s, e))
        return sorted(out)

    def any(self) -> bool:
        return any(self.spans(d) for d in DAYS)


class BusinessHours(BaseModel):
    """enabled: false means always open; timezone: IANA name; weekly: day -> [[start, end]]
    (``HH:MM``, 24-hour); holidays: dates closed all day (local)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, strict=True)
    timezone: str = Field(default="UTC", json_schema_extra={"enum": list[JsonValue](TIMEZONES)})
    weekly: Weekly = Field(default_factory=Weekly)
    holidays: list[HolidayDate] = Field(default_factory=list, max_length=400)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v not in _ZONES:
            raise ValueError(f"{v!r} is not an IANA timezone: use e.g. Europe/Berlin or "
                             "America/New_York")
        return v

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` (aware) falls in the hours (always True when not enabled)."""
        if not self.enabled:
            return True
        local = at.astimezone(self.zone())
        now_min = local.hour * 60 + local.minute
        today = DAYS[local.weekday()]
        yesterday = DAYS[(local.weekday() - 1) % 7]
        if local.date() not in self.holidays:
            for s, e in self.weekly.spans(today):
                if (s < e and s <= now_min < e) or (s > e and now_min >= s):
                    return True
        if (local.date() - timedelta(days=1)) not in self.holidays:
            for s, e in self.weekly.spans(yesterday):
                if s > e and now_min < e:  # yesterday's interval running past midnight
                    return True
        return False

    def next_open(self, at: datetime) -> datetime | None:
        """The next opening (aware, in the tenant's zone) at or after ``at``; ``at`` itself when
        open now; None when no interval is set at all (closed for good)."""
        if self.is_open(at):
            return at.astimezone(self.zone())
        if not self.weekly.any():
            return None
        zone = self.zone()
        local = at.astimezone(zone)
        for offset in range(0, 400):
            day = local.date() + timedelta(days=offset)
            if day in self.holidays:
                continue
            for m, _end in self.weekly.spans(DAYS[day.weekday()]):
                opening = datetime.combine(day, time(m // 60, m % 60), tzinfo=zone)
                if opening > local:
                    return opening
        return None

    def describe_next_open(self, at: datetime) -> str:
        """E.g. ``Monday at 09:00 (Europe/Berlin)``, ``today at 14:00 (UTC)``; ``soon`` when no
        opening is known."""
        nxt = self.next_open(at)
        if nxt is None:
            return "soon"
        local_now = at.astimezone(self.zone())
        days = (nxt.date() - local_now.date()).days
        when = "today" if days == 0 else "tomorrow" if days == 1 else nxt.strftime("%A")
        if days > 6:
            when = nxt.strftime("%A %d %B")
        return f"{when} at {nxt.strftime('%H:%M')} ({self.timezone})"


class CsatSettings(BaseModel):
    """The CSAT question sent when an agent closes a conversation, and the thanks for a score."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, strict=True)
    question: NonBlankText = Field(default=DEFAULT_CSAT_QUESTION, max_length=500)
    thanks: NonBlankText = Field(default=DEFAULT_CSAT_THANKS, max_length=500)


class InboxSettings(BaseModel):
    """A tenant's inbox settings. offline_message: the auto-reply to a customer who asks for a
    human outside business hours (``{next_open}`` is replaced by when the team is back);
    default_agent_limit: open conversations per agent unless the user has their own limit
    (None: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    business_hours: BusinessHours = Field(default_factory=BusinessHours)
    offline_message: NonBlankText = Field(default=DEFAULT_OFFLINE, max_length=1000)
    csat: CsatSettings = Field(default_factory=CsatSettings)
    default_agent_limit: int | None = Field(default=None, ge=1, le=1000, strict=True)

    _ints = field_validator("default_agent_limit", mode="before")(json_int)

    def offline_reply(self, at: datetime) -> str:
        """The offline auto-reply for a request at ``at``."""
        return self.offline_message.replace("{next_open}", self.business_hours.describe_next_open(at))


async def get_inbox_settings(conn: Conn, tenant_id: UUID) -> InboxSettings:
    """The tenant's settings (defaults when none are stored)."""
    raw = await conn.fetchval("SELECT settings FROM inbox_settings WHERE tenant_id = $1", tenant_id)
    return InboxSettings.model_validate(raw or {})


async def put_inbox_settings(conn: Conn, tenant_id: UUID, settings: InboxSettings) -> datetime:
    """Store the tenant's settings; returns when."""
    value: dict[str, Any] = settings.model_dump(mode="json")
    return await conn.fetchval(
        """INSERT INTO inbox_settings (tenant_id, settings) VALUES ($1, $2)
           ON CONFLICT (tenant_id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()
           RETURNING updated_at""", tenant_id, value)


def now_utc() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)
