"""The order-status action: "Where is my order #10234?" answered from the tenant's live orders.

Planning (no I/O): the order id is extracted by rules and validated against the tenant's shape;
a malformed one is asked for again, naming the shape. Verification decides what the lookup must
match: on WhatsApp and SMS the sender's number (E.164 via ``phonenumbers``) against the order's
phone; on the widget, email and other channels the customer first gives the order's email or
phone (asked before anything is looked up, so the question itself reveals nothing).

Executing (I/O, :mod:`runtime.actions.order_lookup`): an order that does not exist and one that
fails verification get the same reply, word for word, saying what to do instead, so nobody can
tell which it was. Each counts as a failed lookup of the conversation; at
``max_failed_lookups`` (3) the conversation goes to a human instead, so order ids cannot be
enumerated from one conversation. A source that times out or fails gets a clear reply and the
offer of a human ("yes" hands the conversation over).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from runtime.actions.entities import find_email, find_order_id, find_phone, is_no, is_yes, normalize_phone
from runtime.actions.order_config import TEMPLATE_FIELDS, HttpsOrderSource, PostgresOrderSource
from runtime.actions.order_lookup import Order
from runtime.actions.types import ActionSession, HandOff, PendingAction, Step

ACTION = "order_status"
ASK_ID = "Sure, I can check that for you. What is your order number? It has {hint}."
MALFORMED_ID = ("\"{raw}\" doesn't look like one of our order numbers: they have {hint}. Could you check "
                "it and send it again?")
ASK_VERIFY = ("To keep order details private, please send the email address or phone number the order "
              "was placed with.")
ASK_VERIFY_AGAIN = ("I need the email address or phone number the order was placed with before I can "
                    "look it up. Could you send it?")
# The same words whether the order does not exist or is not this customer's.
NOT_FOUND_PHONE = ("I couldn't find that order for the number you're writing from. Please check the order "
                   "number on your confirmation and write to us from the phone number on the order, or "
                   "reply \"human\" and a person from our team will help.")
NOT_FOUND_DETAIL = ("I couldn't find an order with that number and those details. Please check the order "
                    "number on your confirmation and the email or phone number you ordered with, or reply "
                    "\"human\" and a person from our team will help.")
UNAVAILABLE = ("I can't reach our order system right now, so I can't check order {order_id}. Would you "
               "like a person from our team to look it up for you? Reply \"yes\" and I'll pass this on, or "
               "try again in a few minutes.")
DECLINED_HUMAN = "Alright. You can ask me again in a few minutes, or at any time ask for a person."
MISSING = "not available yet"
_URL = re.compile(r"^https?://\S+$")


def _pending(step: str, asks: int = 1, **data: Any) -> PendingAction:
    return PendingAction(action=ACTION, step=step, data=data, asks=asks)


def _request(order_id: str, verify: dict[str, str]) -> dict[str, Any]:
    return {"action": ACTION, "op": "lookup", "order_id": order_id, "verify": verify}


def _offered_detail(text: str, region: str) -> dict[str, str] | None:
    email = find_email(text)
    if email:
        return {"email": email}
    phone = find_phone(text, region)
    return {"phone": phone} if phone else None


def _with_id(order_id: str, text: str, session: ActionSession,
             setup: PostgresOrderSource | HttpsOrderSource) -> Step:
    """The id is valid: look it up with what verifies it, or ask for that first."""
    sender = session.messaging_phone
    if sender is not None:
        phone = normalize_phone(sender, setup.phone_region)
        return Step(request=_request(order_id, {"sender_phone": phone or sender}))
    offered = _offered_detail(text, setup.phone_region)
    if offered is not None:
        return Step(request=_request(order_id, offered))
    return Step(ASK_VERIFY, "order_verify_ask", _pending("verify", order_id=order_id))


def start(text: str, session: ActionSession, setup: PostgresOrderSource | HttpsOrderSource) -> Step:
    """The first step for a message that triggered the action."""
    shape = setup.order_id.shape()
    found = find_order_id(text, shape)
    if found.value is None:
        return Step(ASK_ID.format(hint=shape.hint()), "order_ask_id", _pending("order_id"))
    if not found.valid:
        return Step(MALFORMED_ID.format(raw=found.raw[:40], hint=shape.hint()), "order_invalid_id",
                    _pending("order_id"))
    return _with_id(found.value, text, session, setup)


def resume(text: str, pending: PendingAction, session: ActionSession,
           setup: PostgresOrderSource | HttpsOrderSource) -> Step | None:
    """The next step for a message while ``pending`` waits, or None when the message is not an
    answer to it (the turn then goes on as usual and the pending step is dropped)."""
    shape = setup.order_id.shape()
    if pending.step == "order_id":
        found = find_order_id(text, shape, expecting=True)
        if found.value is None:
            return None
        if not found.valid:
            return Step(MALFORMED_ID.format(raw=found.raw[:40], hint=shape.hint()), "order_invalid_id",
                        _pending("order_id", pending.asks + 1))
        return _with_id(found.value, text, session, setup)
    if pending.step == "verify":
        order_id = str(pending.data.get("order_id", ""))
        offered = _offered_detail(text, setup.phone_region)
        if offered is not None and order_id:
            return Step(request=_request(order_id, offered))
        found = find_order_id(text, shape)
        if found.value is not None and found.valid:
            return _with_id(found.value, text, session, setup)  # another order instead
        if len(text.split()) <= 3 and not is_no(text) and pending.asks < 2:
            return Step(ASK_VERIFY_AGAIN, "order_verify_ask", _pending("verify", pending.asks + 1,
                                                                        order_id=order_id))
        return None
    if pending.step == "offer_human":
        if is_yes(text) or re.search(r"\b(?:human|person|agent|someone)\b", text, re.IGNORECASE):
            return Step(handoff=HandOff(
                "The order system could not be reached; the customer asked for a person to check "
                f"order {pending.data.get('order_id', '')}.", "action_unavailable", "normal",
                {"order_id": pending.data.get("order_id")}))
        if is_no(text):
            return Step(DECLINED_HUMAN, "order_unavailable")
        return None
    return None


def verified(order: Order, verify: dict[str, str], region: str) -> bool:
    """Whether what the customer showed matches the order: the sender's or the given phone
    number against the order's phone (E.164), or the given email against the order's email
    (case-insensitive)."""
    phone = verify.get("sender_phone") or verify.get("phone")
    if phone:
        mine = normalize_phone(phone, region)
        theirs = normalize_phone(order.get("phone"), region)
        return mine is not None and mine == theirs
    email = verify.get("email")
    if email:
        theirs = str(order.get("email") or "").strip().lower()
        return bool(theirs) and theirs == email.strip().lower()
    return False


def _show(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, datetime):
        return value.strftime("%a %d %b %Y, %H:%M")
    if isinstance(value, date):
        return value.strftime("%a %d %b %Y")
    return str(value)


def render(template: str, order_id: str, order: Order) -> str:
    """``template`` with the order's values; unknown placeholders stay as written."""
    values = {"order_id": order_id, **{k: _show(order.get(k)) for k in TEMPLATE_FIELDS if k != "order_id"}}
    tracking = order.get("tracking_url")
    if tracking is not None and not _URL.match(str(tracking)):
        values["tracking_url"] = MISSING  # only a web link is shown as one
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def not_found_text(session: ActionSession) -> str:
    """The reply for an order that does not exist or is not this customer's (identical)."""
    return NOT_FOUND_PHONE if session.messaging_phone is not None else NOT_FOUND_DETAIL


def outcome(order_id: str, order: Order | None, verify: dict[str, str], session: ActionSession,
            setup: PostgresOrderSource | HttpsOrderSource, failures: int) -> Step:
    """The step after a lookup (``order`` None: no such order). failures: the conversation's
    failed lookups before this one."""
    if order is not None and verified(order, verify, setup.phone_region):
        return Step(render(setup.result_template, order_id, order), "order_status", failures=failures)
    failures += 1
    if failures >= setup.max_failed_lookups:
        return Step(handoff=HandOff(
            f"The customer's order lookups failed {failures} times (unknown order or details "
            "that do not match).", "order_verification_failed", "normal"), failures=failures)
    return Step(not_found_text(session), "order_not_found", failures=failures)


def unavailable(order_id: str) -> Step:
    """The step when the source timed out or failed: the fallback and the offer of a human."""
    return Step(UNAVAILABLE.format(order_id=order_id), "order_unavailable",
                _pending("offer_human", order_id=order_id))
