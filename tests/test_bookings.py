"""Bookings on the real stack: services and weekly opening slots through the owner API, then
availability, booking, a race for one slot and cancellation, from the API and from the chat."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from runtime.actions import bookings
from tests.chat_helpers import ask, new_session, widget_channel
from tests.conftest import TenantInfo


async def _service(client: httpx.AsyncClient, tenant: TenantInfo, name: str) -> dict[str, Any]:
    r = await client.post("/v1/bookings/services", headers=tenant.headers,
                          json={"name": name, "duration_minutes": 30, "timezone": "Europe/London"})
    assert r.status_code == 201, r.text
    svc = r.json()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    r = await client.post(f"/v1/bookings/services/{svc['id']}/slots", headers=tenant.headers,
                          json={"from_date": tomorrow.isoformat(), "days": 2,
                                "weekdays": [1, 2, 3, 4, 5, 6, 7], "times": ["10:00", "11:00"]})
    assert r.status_code == 201 and r.json()["added"] == 4, r.text
    return dict(svc)


async def _free(client: httpx.AsyncClient, tenant: TenantInfo, service_id: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/bookings/availability", headers=tenant.headers,
                         params={"service_id": service_id})
    assert r.status_code == 200, r.text
    return list(r.json())


def _reply(events: list[Any]) -> dict[str, Any]:
    return next(e.data for e in reversed(events) if e.event == "message" and e.data["sender"] != "customer")


async def test_api_race_for_one_slot_books_it_once(client: httpx.AsyncClient, tenant: TenantInfo,
                                                   db: Any) -> None:
    svc = await _service(client, tenant, "Massage")
    free = await _free(client, tenant, svc["id"])
    assert len(free) == 4 and free[0]["free"] == 1
    slot = free[0]["id"]

    async def book(email: str) -> httpx.Response:
        return await client.post("/v1/bookings", headers=tenant.headers,
                                 json={"slot_id": slot, "email": email, "customer_name": email[0]})

    results = await asyncio.gather(*(book(f"{c}@example.com") for c in "abcd"))
    codes = sorted(r.status_code for r in results)
    assert codes == [201, 409, 409, 409], [r.text for r in results]
    assert {r.json()["error"]["code"] for r in results if r.status_code == 409} == {"slot_unavailable"}
    assert await db.fetchval("SELECT count(*) FROM bookings WHERE slot_id = $1 AND status = 'confirmed'",
                             uuid.UUID(slot)) == 1
    booked = next(r.json() for r in results if r.status_code == 201)
    assert booked["reference"].startswith("BK-") and booked["service_name"] == "Massage"
    assert [s["id"] for s in await _free(client, tenant, svc["id"])] == [s["id"] for s in free[1:]]

    # Cancelling frees the place; a second cancel is a conflict.
    r = await client.post(f"/v1/bookings/{booked['id']}/cancel", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = await client.post(f"/v1/bookings/{booked['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 409
    assert (await _free(client, tenant, svc["id"]))[0]["id"] == slot


async def test_chat_booking_race_taken_slot_refused_and_cancel(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any
) -> None:
    await _service(client, tenant, "Haircut")
    await _service(client, tenant, "Beard trim")
    ch = await widget_channel(client, tenant.headers)
    ann = await new_session(client, ch["widget_token"])
    ben = await new_session(client, ch["widget_token"])

    which = _reply(await ask(client, ann, "I'd like to book an appointment"))
    assert which["intent"] == "booking_ask_service" and "Haircut" in which["text"]
    listed = _reply(await ask(client, ann, "a haircut please"))
    assert listed["intent"] == "booking_availability" and "1) " in listed["text"], listed
    assert _reply(await ask(client, ben, "Can I book a haircut?"))["text"] == listed["text"]
    # Both pick the first time; each is asked for an email, then both answer at once.
    for s in (ann, ben):
        assert _reply(await ask(client, s, "1"))["intent"] == "booking_ask_contact"
    a, b = await asyncio.gather(ask(client, ann, "ann@example.com"), ask(client, ben, "ben@example.com"))
    outcomes = sorted([_reply(a), _reply(b)], key=lambda m: m["intent"])
    assert [m["intent"] for m in outcomes] == ["booking_availability", "booking_created"], outcomes
    taken, booked = outcomes
    first_time = listed["text"].split("1) ", 1)[1].split("\n", 1)[0]
    assert taken["text"].startswith(bookings.TAKEN.format(label=first_time)), taken
    assert first_time not in taken["text"].split("\n", 1)[1]  # no longer offered
    assert first_time in booked["text"] and "BK-" in booked["text"]
    rows = await db.fetch(
        """SELECT b.reference, b.email, b.session_id FROM bookings b
           WHERE b.tenant_id = $1 AND b.status = 'confirmed'""", uuid.UUID(tenant.id))
    assert len(rows) == 1
    winner = ann if str(rows[0]["session_id"]) == ann.session_id else ben
    loser = ben if winner is ann else ann
    assert rows[0]["email"] == ("ann@example.com" if winner is ann else "ben@example.com")

    # The other customer cannot cancel it, even with its reference; its owner can.
    reference = rows[0]["reference"]
    refused = _reply(await ask(client, loser, f"please cancel booking {reference}"))
    assert refused["text"] == bookings.NOT_YOURS.format(reference=reference)
    mine = _reply(await ask(client, winner, "When is my appointment?"))
    assert reference in mine["text"] and mine["intent"] == "booking_lookup"
    confirm = _reply(await ask(client, winner, "I need to cancel my appointment"))
    assert confirm["intent"] == "booking_cancel_confirm" and reference in confirm["text"]
    done = _reply(await ask(client, winner, "yes"))
    assert done["intent"] == "booking_cancelled" and reference in done["text"]
    assert await db.fetchval("SELECT status FROM bookings WHERE reference = $1 AND tenant_id = $2",
                             reference, uuid.UUID(tenant.id)) == "cancelled"
