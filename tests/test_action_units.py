"""Actions without the stack: entities read by rules, triggers with the real MiniLM embedder
(held-out phrasings reach their action, ordinary support questions on the same topics reach
none), verification and the result template, and the order-status steps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any
from uuid import uuid4

import pytest

from runtime.actions import bookings, orders
from runtime.actions.entities import (
    OrderIdShape,
    find_booking_reference,
    find_choice,
    find_email,
    find_order_id,
    find_phone,
    normalize_phone,
)
from runtime.actions.order_config import Dsn, PostgresOrderSource
from runtime.actions.order_lookup import Order
from runtime.actions.triggers import TRIGGERS_FILE, trigger_classifier
from runtime.actions.types import ActionSession, PendingAction
from runtime.answering.intents import IntentClassifier, load_intents

SHAPE = OrderIdShape()
SETUP = PostgresOrderSource(source="postgres", dsn="postgresql://r:pw@db.example:5432/shop",
                            query="SELECT * FROM orders WHERE id = $1")
WHATSAPP = ActionSession("whatsapp", "16505550101", uuid4(), uuid4())
WIDGET = ActionSession("widget", "v1.abc.def", uuid4(), uuid4())


@pytest.mark.parametrize(("text", "expecting", "value", "valid"), [
    ("Where is my order #10234?", False, "10234", True),
    ("my order number is 10234, thanks", False, "10234", True),
    ("Where is my order #12-AB?", False, "12-AB", False),  # malformed: asked again
    ("Where is my order?", False, None, False),  # no id: asked for
    ("I ordered 3 lamps last week", False, None, False),  # a stray number is not an id
    ("10234", True, "10234", True),
    ("it's 123", True, "123", False),
    ("order 10234, alice@example.com +1 650 555 0101", False, "10234", True),  # contacts are not ids
])
def test_order_id_extraction(text: str, expecting: bool, value: str | None, valid: bool) -> None:
    found = find_order_id(text, SHAPE, expecting=expecting)
    assert (found.value, found.valid) == (value, valid)


def test_contact_entities_and_choices() -> None:
    assert find_email("it's Alice@Example.COM thanks") == "Alice@example.com"
    assert find_email("no address here") is None
    assert find_phone("call +1 (650) 555-0101 please") == "+16505550101"
    assert find_phone("020 7946 0000", "GB") == "+442079460000"
    assert find_phone("order 10234") is None
    assert normalize_phone("(650) 555-0101", "US") == normalize_phone("+1 650 555 0101") == "+16505550101"
    assert find_choice("2", 5) == 2 and find_choice("the second one", 5) == 2
    assert find_choice("7", 5) is None and find_choice("at 10 please", 5) is None
    assert find_booking_reference("cancel bk7kq2m9xd") == "BK-7KQ2M9XD"
    assert bookings.find_day("tomorrow", date(2026, 12, 6)) == date(2026, 12, 7)
    assert bookings.find_day("on Friday?", date(2026, 12, 6)) == date(2026, 12, 11)
    assert bookings.find_day("12 January", date(2026, 12, 6)) == date(2027, 1, 12)
    assert bookings.find_day("book a haircut", date(2026, 12, 6)) is None


def test_dsn_parsing_accepts_only_what_the_schema_does() -> None:
    dsn = Dsn.parse("postgresql://reader:p%40ss@db.example:6432/shop?sslmode=require")
    assert (dsn.host, dsn.port, dsn.user, dsn.password, dsn.database, dsn.ssl) == \
        ("db.example", 6432, "reader", "p@ss", "shop", "require")
    for bad in ("postgresql://db.example/shop", "postgresql://r@db/shop?host=/tmp", "mysql://r@db/shop"):
        with pytest.raises(ValueError):
            Dsn.parse(bad)


def test_verification_and_one_reply_for_unknown_and_not_yours() -> None:
    order = Order(status="shipped", estimated_delivery=date(2026, 12, 10), carrier="UPS",
                  tracking_url="https://track.example/1Z", email="Alice@Example.com", phone="(650) 555-0101")
    assert orders.verified(order, {"sender_phone": "+16505550101"}, "US")
    assert orders.verified(order, {"email": "alice@example.com"}, "US")
    assert not orders.verified(order, {"sender_phone": "+16505550102"}, "US")
    assert not orders.verified(order, {"email": "bob@example.com"}, "US")
    assert not orders.verified(Order(status="shipped"), {"email": ""}, "US")

    not_yours = orders.outcome("10234", order, {"sender_phone": "+16505550102"}, WHATSAPP, SETUP, 0)
    unknown = orders.outcome("99999", None, {"sender_phone": "+16505550102"}, WHATSAPP, SETUP, 0)
    assert not_yours == unknown and not_yours.text == orders.NOT_FOUND_PHONE and not_yours.failures == 1
    third = orders.outcome("10234", order, {"sender_phone": "+16505550102"}, WHATSAPP, SETUP, 2)
    assert third.handoff is not None and third.handoff.signal == "order_verification_failed"
    mine = orders.outcome("10234", order, {"sender_phone": "+16505550101"}, WHATSAPP, SETUP, 2)
    assert mine.text.startswith("Order 10234: shipped.") and "Thu 10 Dec 2026" in mine.text
    assert "https://track.example/1Z" in mine.text and mine.handoff is None

    bad_link = orders.render("{tracking_url} {nope}", "1", Order(tracking_url="javascript:alert(1)"))
    assert bad_link == f"{orders.MISSING} {{nope}}"


def test_order_steps_ask_before_anything_is_looked_up() -> None:
    step = orders.start("Where is my order #10234?", WIDGET, SETUP)
    assert step.text == orders.ASK_VERIFY and step.pending is not None and step.request is None
    assert step.pending.data == {"order_id": "10234"}
    nxt = orders.resume("alice@example.com", step.pending, WIDGET, SETUP)
    assert nxt is not None and nxt.request == {"action": "order_status", "op": "lookup",
                                              "order_id": "10234", "verify": {"email": "alice@example.com"}}
    direct = orders.start("where is my order 10234", WHATSAPP, SETUP)
    assert direct.request is not None and direct.request["verify"] == {"sender_phone": "+16505550101"}
    # An unrelated question while an id is awaited drops the pending step (None).
    waiting = PendingAction(action="order_status", step="order_id")
    assert orders.resume("What are your opening hours?", waiting, WIDGET, SETUP) is None


@pytest.fixture(scope="module")
def local() -> Iterator[Any]:
    from ingestion.embed import LocalEmbedder

    emb = LocalEmbedder(threads=1)
    yield emb
    emb.close()


HELD_OUT = [
    ("where's my stuff? ordered it last week", "order_status"),
    ("Has order 10234 shipped yet?", "order_status"),
    ("my parcel never arrived", "order_status"),
    ("I need to book a massage", "booking_new"),
    ("Any openings on Thursday?", "booking_new"),
    ("When's my appointment again?", "booking_lookup"),
    ("I have to cancel my appointment", "booking_cancel"),
]
TWINS = [
    "How long does shipping take?",
    "How much does shipping to Canada cost?",
    "What is your cancellation policy?",
    "How do I cancel my subscription?",
    "What are your opening hours?",
    "Can I make a payment by card?",
    "Does it come in another color?",
    "How do I get an invoice?",
]


async def test_triggers_reach_their_action_and_twins_none(local: Any) -> None:
    assert {s.name for s in load_intents(TRIGGERS_FILE)} == {
        "order_status", "booking_new", "booking_lookup", "booking_cancel"}
    classifier = trigger_classifier(local.embed_many)
    assert isinstance(classifier, IntentClassifier)
    await classifier.prepare()
    for text, want in HELD_OUT:
        got = classifier.classify(text, await local.embed(text))
        assert got is not None and got.intent == want, (text, got)
    for text in TWINS:
        assert classifier.classify(text, await local.embed(text)) is None, text
