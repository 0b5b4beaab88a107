"""The bookings action (service businesses): check availability, book, look up and cancel, from
the chat.

Planning (no I/O) reads the service ("a haircut"), a day ("tomorrow", "on Friday", "12 December",
"2026-12-12"), a choice from the offered times ("2", "the second one"), a booking reference
(``BK-7KQ2M9XD``) and the contact to book under: the sender's number on WhatsApp/SMS, the sender's
address on email, an email the contact gave earlier, or one asked for on the widget.

Executing (I/O, :mod:`runtime.db.bookings`): availability lists up to :data:`OFFER` free times; a
booking is made in one transaction that locks the slot (a time taken meanwhile is refused and the
free times offered again); a customer sees and cancels only their own bookings (made from their
contact, or under their verified number or address), and a reference that is not theirs gets the
same reply as one that does not exist.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from runtime.actions.entities import (
    find_booking_reference,
    find_choice,
    find_email,
    find_phone,
    is_no,
    is_yes,
)
from runtime.actions.types import ActionSession, PendingAction, Step
from runtime.db import Conn
from runtime.db import bookings as book_db
from runtime.errors import NotFound, SlotUnavailable

ACTION = "bookings"
OFFER = 5
HORIZON_DAYS = 14
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = {m: i + 1 for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                           "oct", "nov", "dec"])}
_ISO = re.compile(r"\b(20\d{2})-(\d{1,2})-(\d{1,2})\b")
_DAY_MONTH = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]{3,9})\b")
_MONTH_DAY = re.compile(r"\b([a-z]{3,9})\s+(\d{1,2})(?:st|nd|rd|th)?\b")

ASK_SERVICE = "Which would you like to book: {names}?"
ASK_CONTACT = ("Great choice: {label}. What email address should I put the booking under? "
               "(Reply \"no\" to stop.)")
NO_TIMES = "Sorry, there are no free times for {service} {when}. Would another day suit you?"
BOOKED = ("You're booked: {service} on {label}. Your reference is {reference}. To cancel, write "
          "\"cancel booking {reference}\".")
TAKEN = "Sorry, {label} was just taken. "
NONE_FOUND = "I can't find an upcoming booking of yours. You can book one by telling me what you'd like."
NOT_YOURS = ("I couldn't find an upcoming booking {reference} of yours. Please check the reference in "
             "your confirmation, or ask for a person from our team.")
CANCELLED = "Done: your booking {reference} ({service} on {label}) is cancelled."
KEPT = "Alright, your booking stays as it is."
STOPPED = "No problem, nothing was booked."


def _pending(step: str, asks: int = 1, **data: Any) -> PendingAction:
    return PendingAction(action=ACTION, step=step, data=data, asks=asks)


def label(starts_at: datetime, tz: str) -> str:
    """A slot time as customers read it in the service's time zone: ``Tue 15 Dec, 10:00``."""
    return starts_at.astimezone(ZoneInfo(tz)).strftime("%a %d %b, %H:%M")


def find_day(text: str, today: date) -> date | None:
    """A day in ``text`` on or after ``today``: today, tomorrow, a weekday (the next one), an ISO
    date, "12 December" / "December 12" (this year, or next if passed). None when there is none."""
    low = text.lower()
    if re.search(r"\btoday\b", low):
        return today
    if re.search(r"\btomorrow\b", low):
        return today + timedelta(days=1)
    m = _ISO.search(low)
    if m:
        try:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            return None
    for pattern, day_first in ((_DAY_MONTH, True), (_MONTH_DAY, False)):
        for m in pattern.finditer(low):
            day_s, month_s = (m.group(1), m.group(2)) if day_first else (m.group(2), m.group(1))
            month = _MONTHS.get(month_s[:3])
            if month is None:
                continue
            try:
                found = date(today.year, month, int(day_s))
                return found if found >= today else date(today.year + 1, month, int(day_s))
            except ValueError:
                return None
    for i, name in enumerate(_WEEKDAYS):
        if re.search(rf"\b{name}s?\b|\b{name[:3]}\b", low):
            ahead = (i - today.weekday()) % 7
            return today + timedelta(days=ahead)
    return None


def match_service(text: str, services: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service ``text`` names (its name, or every word of it longer than 2 letters, in any
    case; a plural is fine), or the only service there is."""
    low = text.lower()
    for svc in sorted(services, key=lambda s: -len(s["name"])):
        name = svc["name"].lower()
        words = [w for w in re.findall(r"[a-z0-9]+", name) if len(w) > 2]
        if name in low or (words and all(re.search(rf"\b{re.escape(w)}s?\b", low) for w in words)):
            return svc
    return services[0] if len(services) == 1 else None


def _contact(text: str, session: ActionSession) -> dict[str, str] | None:
    """Who to book under: the sender's number or address on the channel, an email in ``text``, or
    the number written in it."""
    if session.messaging_phone:
        return {"phone": session.messaging_phone}
    if session.email_address:
        return {"email": session.email_address}
    email = find_email(text)
    if email:
        return {"email": email}
    phone = find_phone(text)
    if phone:
        return {"phone": phone}
    return None


def start(text: str, trigger: str, session: ActionSession, services: list[dict[str, Any]],
          today: date) -> Step:
    """The first step for a message that triggered the action (``trigger``: booking_new,
    booking_lookup or booking_cancel); ``services``: the tenant's active services (id, name)."""
    if trigger == "booking_cancel":
        ref = find_booking_reference(text)
        return Step(request={"action": ACTION, "op": "cancel", "reference": ref})
    if trigger == "booking_lookup":
        return Step(request={"action": ACTION, "op": "mine"})
    svc = match_service(text, services)
    day = find_day(text, today)
    if svc is None:
        names = ", ".join(s["name"] for s in services[:8])
        return Step(ASK_SERVICE.format(names=names), "booking_ask_service",
                    _pending("service", day=day.isoformat() if day else None))
    return Step(request={"action": ACTION, "op": "availability", "service_id": str(svc["id"]),
                         "day": day.isoformat() if day else None})


def resume(text: str, pending: PendingAction, session: ActionSession, services: list[dict[str, Any]],
           today: date) -> Step | None:
    """The next step while ``pending`` waits, or None when the message is not an answer to it."""
    data = pending.data
    if pending.step == "service":
        svc = match_service(text, services) if len(services) > 1 else None
        if svc is None:
            return None
        day = find_day(text, today) or (date.fromisoformat(data["day"]) if data.get("day") else None)
        return Step(request={"action": ACTION, "op": "availability", "service_id": str(svc["id"]),
                             "day": day.isoformat() if day else None})
    if pending.step == "slot":
        offered: list[list[str]] = data.get("slots", [])
        choice = find_choice(text, len(offered))
        if choice is not None:
            slot_id, slot_label = offered[choice - 1]
            who = _contact(text, session)
            if who is None:
                return Step(ASK_CONTACT.format(label=slot_label), "booking_ask_contact",
                            _pending("contact", slot_id=slot_id, label=slot_label,
                                     service_id=data.get("service_id")))
            return Step(request={"action": ACTION, "op": "create", "slot_id": slot_id,
                                 "service_id": data.get("service_id"), "label": slot_label, **who})
        if is_no(text):
            return Step(STOPPED, "booking_stopped")
        day = find_day(text, today)
        if day is not None and data.get("service_id"):
            return Step(request={"action": ACTION, "op": "availability",
                                 "service_id": data["service_id"], "day": day.isoformat()})
        return None
    if pending.step == "contact":
        if is_no(text):
            return Step(STOPPED, "booking_stopped")
        email = find_email(text)
        phone = None if email else find_phone(text)
        if email or phone:
            who = {"email": email} if email else {"phone": str(phone)}
            return Step(request={"action": ACTION, "op": "create", "slot_id": data["slot_id"],
                                 "service_id": data.get("service_id"), "label": data.get("label"), **who})
        if pending.asks < 2 and len(text.split()) <= 6:
            return Step(ASK_CONTACT.format(label=data.get("label", "")), "booking_ask_contact",
                        _pending("contact", pending.asks + 1, **data))
        return None
    if pending.step == "cancel_confirm":
        if is_yes(text):
            return Step(request={"action": ACTION, "op": "cancel", "booking_id": data["booking_id"]})
        if is_no(text):
            return Step(KEPT, "booking_kept")
        return None
    return None


async def execute(conn: Conn, tenant_id: UUID, request: dict[str, Any], session: ActionSession) -> Step:
    """Carry out a validated booking request (op: availability | create | mine | cancel)."""
    op = request["op"]
    if op == "availability":
        return await _availability(conn, tenant_id, UUID(request["service_id"]), request.get("day"))
    if op == "create":
        return await _create(conn, tenant_id, request, session)
    mine = await book_db.customer_bookings(
        conn, tenant_id, contact_id=session.contact_id, phone=session.messaging_phone,
        email=session.email_address)
    if op == "mine":
        if not mine:
            return Step(NONE_FOUND, "booking_none")
        lines = [f"- {b['service_name']} on {label(b['starts_at'], b['timezone'])} (ref {b['reference']})"
                 for b in mine[:5]]
        return Step("Your upcoming bookings:\n" + "\n".join(lines), "booking_lookup")
    # cancel
    if request.get("booking_id"):
        target = [b for b in mine if str(b["id"]) == request["booking_id"]]
        if not target:
            return Step(NONE_FOUND, "booking_none")
        return await _cancel(conn, tenant_id, target[0])
    reference = request.get("reference")
    if reference:
        target = [b for b in mine if b["reference"] == reference]
        if not target:
            return Step(NOT_YOURS.format(reference=reference), "booking_not_found")
        return await _cancel(conn, tenant_id, target[0])
    if not mine:
        return Step(NONE_FOUND, "booking_none")
    if len(mine) == 1:
        b = mine[0]
        return Step(f"Cancel your booking {b['reference']}: {b['service_name']} on "
                    f"{label(b['starts_at'], b['timezone'])}? Reply \"yes\" to cancel it.",
                    "booking_cancel_confirm", _pending("cancel_confirm", booking_id=str(b["id"])))
    lines = [f"- {b['reference']}: {b['service_name']} on {label(b['starts_at'], b['timezone'])}"
             for b in mine[:5]]
    return Step("Which booking should I cancel? Write \"cancel booking\" and its reference:\n"
                + "\n".join(lines), "booking_cancel_which")


async def _cancel(conn: Conn, tenant_id: UUID, booking: Any) -> Step:
    row = await book_db.cancel_booking(conn, tenant_id, booking["id"])
    return Step(CANCELLED.format(reference=row["reference"], service=row["service_name"],
                                 label=label(row["starts_at"], row["timezone"])), "booking_cancelled")


async def _availability(conn: Conn, tenant_id: UUID, service_id: UUID, day: str | None,
                        prefix: str = "") -> Step:
    try:
        svc = await book_db.get_service(conn, tenant_id, service_id)
    except NotFound:
        return Step("Sorry, that service can't be booked any more.", "booking_none")
    tz = ZoneInfo(svc["timezone"])
    now = datetime.now(UTC)
    if day:
        first = datetime.combine(date.fromisoformat(day), datetime.min.time(), tz)
        start, end, when = max(first, now), first + timedelta(days=1), f"on {first:%a %d %b}"
    else:
        start, end, when = now, now + timedelta(days=HORIZON_DAYS), f"in the next {HORIZON_DAYS} days"
    slots = await book_db.free_slots(conn, tenant_id, service_id, start, end, OFFER)
    if not slots:
        return Step(prefix + NO_TIMES.format(service=svc["name"], when=when), "booking_no_times",
                    _pending("slot", service_id=str(service_id), slots=[]))
    offered = [[str(s["id"]), label(s["starts_at"], svc["timezone"])] for s in slots]
    lines = "\n".join(f"{i}) {lab}" for i, (_, lab) in enumerate(offered, 1))
    text = (f"{prefix}Free times for {svc['name']}:\n{lines}\n"
            "Reply with the number of the time you'd like.")
    return Step(text, "booking_availability",
                _pending("slot", service_id=str(service_id), slots=offered))


async def _create(conn: Conn, tenant_id: UUID, request: dict[str, Any], session: ActionSession) -> Step:
    try:
        row = await book_db.book_slot(
            conn, tenant_id, UUID(request["slot_id"]), contact_id=session.contact_id,
            session_id=session.session_id, email=request.get("email"), phone=request.get("phone"))
    except (SlotUnavailable, NotFound):
        taken = TAKEN.format(label=request.get("label") or "that time")
        if request.get("service_id"):
            return await _availability(conn, tenant_id, UUID(request["service_id"]), None, prefix=taken)
        return Step(taken + "Tell me what you'd like to book and I'll find another time.", "booking_taken")
    return Step(BOOKED.format(service=row["service_name"], label=label(row["starts_at"], row["timezone"]),
                              reference=row["reference"]), "booking_created")
