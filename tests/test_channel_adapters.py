"""Unit tests of the channel adapters (runtime/channels/{whatsapp,telegram,sms,email,slack}.py):
pure protocol code, no services. Payloads are the real shapes in ../shared/fixtures/webhooks;
signatures are computed here the way each provider documents them."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from runtime.channels import email as mailgun
from runtime.channels import slack, sms, telegram, whatsapp
from runtime.channels.base import (
    MalformedPayload,
    OutboundText,
    Permanent,
    Retry,
    Sent,
    SignatureInvalid,
    WebhookRequest,
    split_text,
)
from runtime.channels.registry import ADAPTERS, adapter_for
from runtime.errors import InvalidInput, NotFound

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "webhooks"
NOW = 1_763_779_200.0
JSON = "application/json"
URL = "https://support.example-saas.test/v1/webhooks/sms/3f1c0c56-0000-4000-8000-000000000001"

WA_CONFIG = {"phone_number_id": "106540352242922"}
WA_SECRETS = {"access_token": "EAAG-test", "app_secret": "wa-app-secret", "verify_token": "wa-verify"}
TG_SECRETS = {"bot_token": "123456:ABC-test_token", "webhook_secret": "tg_secret_token"}
SID = "AC" + "0123456789abcdef" * 2
SMS_CONFIG = {"account_sid": SID, "from_number": "+14155552671"}
SMS_SECRETS = {"auth_token": "twilio-auth-token"}
MG_CONFIG = {"domain": "mg.example-saas.test", "from_address": "support@example-saas.test",
             "from_name": "Acme Support"}
MG_SECRETS = {"api_key": "key-test", "webhook_signing_key": "mg-signing-key"}
SL_CONFIG = {"bot_user_id": "UBOT0001"}
SL_SECRETS = {"bot_token": "xoxb-test", "signing_secret": "slack-signing-secret"}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def raw_json(body: Any) -> bytes:
    return json.dumps(body).encode()


# ------------------------------------------------------------------ signing helpers
def wa_request(body: bytes, secret: str = WA_SECRETS["app_secret"], header: bool = True) -> WebhookRequest:
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"x-hub-signature-256": sig} if header else {}
    return WebhookRequest(body=body, headers=headers, url="https://x.test/wa", content_type=JSON)


def tg_request(body: bytes, token: str | None = TG_SECRETS["webhook_secret"]) -> WebhookRequest:
    headers = {"x-telegram-bot-api-secret-token": token} if token is not None else {}
    return WebhookRequest(body=body, headers=headers, url="https://x.test/tg", content_type=JSON)


def twilio_sig(token: str, url: str, fields: dict[str, str]) -> str:
    payload = url + "".join(k + fields[k] for k in sorted(fields))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def sms_fields(**over: str) -> dict[str, str]:
    fields = dict(parse_qsl((FIXTURES / "twilio-sms.txt").read_text().strip(), keep_blank_values=True))
    fields.update(over)
    return fields


def sms_request(fields: dict[str, str], token: str = SMS_SECRETS["auth_token"], url: str = URL,
                signed_url: str | None = None, header: bool = True) -> WebhookRequest:
    sig = twilio_sig(token, signed_url or url, fields)
    headers = {"x-twilio-signature": sig} if header else {}
    return WebhookRequest(body=urlencode(fields).encode(), headers=headers, url=url,
                          content_type="application/x-www-form-urlencoded")


def mailgun_fields(key: str = MG_SECRETS["webhook_signing_key"], timestamp: float = NOW,
                   **over: str) -> dict[str, str]:
    """The fixture's fields (one per line, ``\\n`` escapes in values), signed with ``key``."""
    fields: dict[str, str] = {}
    for line in (FIXTURES / "mailgun-inbound.txt").read_text().splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        fields[name] = value.replace("\\n", "\n")
    fields.update(over)
    fields["timestamp"] = str(int(timestamp))
    fields["signature"] = hmac.new(key.encode(), (fields["timestamp"] + fields["token"]).encode(),
                                   hashlib.sha256).hexdigest()
    return fields


def form_request(fields: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(body=urlencode(fields).encode(), headers={}, url="https://x.test/mg",
                          content_type="application/x-www-form-urlencoded")


def slack_request(body: bytes, secret: str = SL_SECRETS["signing_secret"], ts: float = NOW,
                  drop: str | None = None) -> WebhookRequest:
    stamp = str(int(ts))
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": sig}
    if drop:
        headers.pop(drop)
    return WebhookRequest(body=body, headers=headers, url="https://x.test/sl", content_type=JSON)


# ------------------------------------------------------------------ registry
def test_registry_knows_every_messaging_type_and_refuses_the_widget() -> None:
    assert set(ADAPTERS) == {"whatsapp", "telegram", "sms", "email", "slack"}
    for name, adapter in ADAPTERS.items():
        assert adapter_for(name) is adapter and adapter.type == name
    assert adapter_for("sms").text_limit == 1600 and adapter_for("email").text_limit is None
    for bad in ("widget", "fax"):
        with pytest.raises(NotFound, match=bad):
            adapter_for(bad)


# ------------------------------------------------------------------ WhatsApp
def test_whatsapp_text_fixture_parses() -> None:
    body = (FIXTURES / "whatsapp-text.json").read_bytes()
    req = wa_request(body)
    assert whatsapp.ADAPTER.verify(req, WA_CONFIG, WA_SECRETS, now=NOW) is None
    parsed = whatsapp.ADAPTER.parse(req, WA_CONFIG)
    assert parsed.statuses == [] and parsed.reply is None
    (m,) = parsed.messages
    assert m.external_id.startswith("wamid.")
    assert m.identity == ("phone", "+16505551234") and m.address == "16505551234"
    assert m.text == "Does it come in another color?" and m.kind == "message"
    assert m.route == "106540352242922" and m.contact_name == "Sheena Nelson"
    assert m.sent_at is not None and int(m.sent_at.timestamp()) == 1749416383


def test_whatsapp_image_and_status_fixtures_parse() -> None:
    image = wa_request((FIXTURES / "whatsapp-image.json").read_bytes())
    (m,) = whatsapp.ADAPTER.parse(image, WA_CONFIG).messages
    assert m.text == "Taj Mahal"
    (att,) = m.attachments
    assert att["type"] == "image" and att["caption"] == "Taj Mahal" and att["id"] == "1003383421387256"
    assert att["mime_type"] == "image/jpeg" and att["url"].startswith("https://lookaside")
    parsed = whatsapp.ADAPTER.parse(wa_request((FIXTURES / "whatsapp-status.json").read_bytes()), WA_CONFIG)
    assert parsed.messages == []
    (st,) = parsed.statuses
    assert st.status == "delivered" and st.provider_message_id.startswith("wamid.")
    assert st.route == "106540352242922" and st.error is None and st.at is not None


def test_whatsapp_failed_status_interactive_and_location() -> None:
    body = fixture("whatsapp-status.json")
    st = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    st.update(status="failed", errors=[{"code": 131047, "title": "Re-engagement message",
                                        "message": "Re-engagement message"}])
    (failed,) = whatsapp.ADAPTER.parse(wa_request(raw_json(body)), WA_CONFIG).statuses
    assert failed.status == "failed" and failed.error == "131047 Re-engagement message"

    body = fixture("whatsapp-text.json")
    msg = body["entry"][0]["changes"][0]["value"]["messages"][0]
    msg.pop("text")
    msg.update(type="interactive", interactive={"type": "button_reply",
                                                "button_reply": {"id": "b1", "title": "Talk to a human"}})
    (m,) = whatsapp.ADAPTER.parse(wa_request(raw_json(body)), WA_CONFIG).messages
    assert m.text == "Talk to a human" and m.attachments == []
    msg.pop("interactive")
    msg.update(type="location", location={"latitude": 38.9, "longitude": -77.0, "name": "HQ"})
    (m,) = whatsapp.ADAPTER.parse(wa_request(raw_json(body)), WA_CONFIG).messages
    assert m.text == "" and m.attachments[0]["type"] == "location" and m.attachments[0]["name"] == "HQ"


def test_whatsapp_signature_refused_unless_correct() -> None:
    body = (FIXTURES / "whatsapp-text.json").read_bytes()
    assert whatsapp.ADAPTER.verify(wa_request(body), WA_CONFIG, WA_SECRETS, now=NOW) is None
    with pytest.raises(SignatureInvalid, match="app_secret"):
        whatsapp.ADAPTER.verify(wa_request(body, secret="not-it"), WA_CONFIG, WA_SECRETS, now=NOW)
    tampered = WebhookRequest(body=body.replace(b"color", b"colour"), headers=wa_request(body).headers,
                              url="")
    with pytest.raises(SignatureInvalid, match="does not match"):
        whatsapp.ADAPTER.verify(tampered, WA_CONFIG, WA_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="missing"):
        whatsapp.ADAPTER.verify(wa_request(body, header=False), WA_CONFIG, WA_SECRETS, now=NOW)


def test_whatsapp_handshake() -> None:
    q = {"hub.mode": "subscribe", "hub.verify_token": "wa-verify", "hub.challenge": "1158201444"}
    assert whatsapp.verify_handshake(q, WA_SECRETS) == "1158201444"
    with pytest.raises(SignatureInvalid, match="verify_token"):
        whatsapp.verify_handshake({**q, "hub.verify_token": "guess"}, WA_SECRETS)
    with pytest.raises(SignatureInvalid, match="subscribe"):
        whatsapp.verify_handshake({**q, "hub.mode": "unsubscribe"}, WA_SECRETS)
    with pytest.raises(MalformedPayload, match="hub.challenge"):
        whatsapp.verify_handshake({k: v for k, v in q.items() if k != "hub.challenge"}, WA_SECRETS)


def test_whatsapp_malformed_names_the_path() -> None:
    body = fixture("whatsapp-text.json")
    whatsapp.ADAPTER.parse(wa_request(raw_json(body)), WA_CONFIG)  # the twin: intact, it parses
    broken = copy.deepcopy(body)
    del broken["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    with pytest.raises(MalformedPayload, match=r"entry\[0\]\.changes\[0\]\.value\.messages\[0\]\.id missing"):
        whatsapp.ADAPTER.parse(wa_request(raw_json(broken)), WA_CONFIG)
    with pytest.raises(MalformedPayload, match="whatsapp_business_account"):
        whatsapp.ADAPTER.parse(wa_request(raw_json({**body, "object": "page"})), WA_CONFIG)
    with pytest.raises(MalformedPayload, match="not JSON"):
        whatsapp.ADAPTER.parse(wa_request(b"{nope"), WA_CONFIG)


def test_whatsapp_setup_send_and_responses() -> None:
    assert whatsapp.ADAPTER.validate_setup({"phone_number_id": " 106540352242922 "}, WA_SECRETS) == WA_CONFIG
    with pytest.raises(InvalidInput) as info:
        whatsapp.ADAPTER.validate_setup({"phone_number_id": "+1 650"}, WA_SECRETS)
    assert info.value.fields["field"] == "config.phone_number_id"
    with pytest.raises(InvalidInput, match="secrets.app_secret"):
        whatsapp.ADAPTER.validate_setup(WA_CONFIG, {**WA_SECRETS, "app_secret": ""})

    req = whatsapp.ADAPTER.build_send(OutboundText("16505551234", "Hello"), WA_CONFIG, WA_SECRETS,
                                      "https://graph.facebook.com/v21.0/")
    assert req.method == "POST" and req.url == "https://graph.facebook.com/v21.0/106540352242922/messages"
    assert req.headers["Authorization"] == "Bearer EAAG-test"
    assert req.json == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
                        "type": "text", "text": {"preview_url": False, "body": "Hello"}}

    read = whatsapp.ADAPTER.read_response
    assert read(200, {}, raw_json({"messages": [{"id": "wamid.X"}]})) == Sent("wamid.X")
    rate = read(400, {"retry-after": "7"}, raw_json({"error": {"code": 130429, "message": "Rate limit hit"}}))
    assert isinstance(rate, Retry) and rate.retry_after_s == 7.0
    assert isinstance(read(429, {}, raw_json({"error": {"code": 80007, "message": "x"}})), Retry)
    window = read(400, {}, raw_json({"error": {"code": 131047, "message": "Re-engagement message"}}))
    assert isinstance(window, Permanent) and "24-hour" in window.error
    down = read(500, {}, raw_json({"error": {"code": 2, "message": "Service unavailable"}}))
    assert isinstance(down, Retry)
    bad = read(400, {}, raw_json({"error": {"code": 100, "message": "(#100) Invalid parameter"}}))
    assert isinstance(bad, Permanent) and "Invalid parameter" in bad.error
    assert isinstance(read(503, {}, b"<html>down</html>"), Retry)


def test_split_text_for_whatsapp_keeps_limit_and_words() -> None:
    words = [f"word{i}" for i in range(1500)]
    text = " ".join(words) + "."
    sentences = ". ".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
    for long_text in (text, sentences):
        assert len(long_text) >= 10_000
        parts = split_text(long_text, whatsapp.ADAPTER.text_limit)
        assert len(parts) >= 3 and all(len(p) <= 4096 for p in parts)
        assert " ".join(parts).split() == long_text.split()
    assert split_text("short", 4096) == ["short"]


# ------------------------------------------------------------------ Telegram
def test_telegram_start_is_a_greeting_and_photo_has_attachment() -> None:
    body = (FIXTURES / "telegram-text.json").read_bytes()
    assert telegram.ADAPTER.verify(tg_request(body), {}, TG_SECRETS, now=NOW) is None
    (m,) = telegram.ADAPTER.parse(tg_request(body), {}).messages
    assert m.kind == "greeting" and m.external_id == "update:10000" and m.text == "/start"
    assert m.identity == ("telegram", "1111111") and m.address == "1111111"
    assert m.contact_name == "Test Firstname Test Lastname"
    for start in ("/start promo-42", "/start@AcmeBot"):
        update = {**fixture("telegram-text.json")}
        update["message"] = {**update["message"], "text": start}
        assert telegram.ADAPTER.parse(tg_request(raw_json(update)), {}).messages[0].kind == "greeting"
    update["message"] = {**update["message"], "text": "/starting is hard"}  # the twin: not /start
    assert telegram.ADAPTER.parse(tg_request(raw_json(update)), {}).messages[0].kind == "message"

    (p,) = telegram.ADAPTER.parse(tg_request((FIXTURES / "telegram-photo.json").read_bytes()), {}).messages
    assert p.kind == "message" and p.text == "this is what I see" and p.external_id == "update:10001"
    assert p.attachments == [{"type": "photo", "id": "dd-A_LsTIABFNx-FUOaEa_3AABAQABAg", "width": 759,
                              "height": 570, "file_size": 53013}]
    assert p.address == "10734" and p.contact_name == "Fd Wd"


def test_telegram_updates_without_a_message_are_acknowledged_empty() -> None:
    for other in ({"update_id": 5, "callback_query": {"id": "1", "data": "x"}},
                  {"update_id": 6, "my_chat_member": {"chat": {"id": 1}}},
                  {"update_id": 7, "channel_post": {"chat": {"id": -100}, "text": "news"}},
                  {"update_id": 8, "edited_message": {"chat": {"id": 1}, "text": "edit"}}):
        parsed = telegram.ADAPTER.parse(tg_request(raw_json(other)), {})
        assert parsed.messages == [] and parsed.statuses == [] and parsed.reply is None
    with pytest.raises(MalformedPayload, match="update_id"):
        telegram.ADAPTER.parse(tg_request(raw_json({"message": {"chat": {"id": 1}, "text": "hi"}})), {})
    with pytest.raises(MalformedPayload, match=r"message\.chat\.id"):
        telegram.ADAPTER.parse(tg_request(raw_json({"update_id": 1, "message": {"text": "hi"}})), {})


def test_telegram_secret_token_refused_unless_correct() -> None:
    body = (FIXTURES / "telegram-text.json").read_bytes()
    assert telegram.ADAPTER.verify(tg_request(body), {}, TG_SECRETS, now=NOW) is None
    with pytest.raises(SignatureInvalid, match="does not match"):
        telegram.ADAPTER.verify(tg_request(body, token="wrong_secret"), {}, TG_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="missing"):
        telegram.ADAPTER.verify(tg_request(body, token=None), {}, TG_SECRETS, now=NOW)


def test_telegram_setup_send_and_responses() -> None:
    assert telegram.ADAPTER.validate_setup({}, TG_SECRETS) == {}
    with pytest.raises(InvalidInput, match="secrets.bot_token"):
        telegram.ADAPTER.validate_setup({}, {**TG_SECRETS, "bot_token": "not-a-token"})
    with pytest.raises(InvalidInput, match="secrets.webhook_secret"):
        telegram.ADAPTER.validate_setup({}, {**TG_SECRETS, "webhook_secret": "has spaces!"})
    req = telegram.ADAPTER.build_send(OutboundText("1111111", "Hi"), {}, TG_SECRETS, "https://api.telegram.org")
    assert req.url == "https://api.telegram.org/bot123456:ABC-test_token/sendMessage"
    assert req.json == {"chat_id": 1111111, "text": "Hi"} and req.auth is None

    read = telegram.ADAPTER.read_response
    assert read(200, {}, raw_json({"ok": True, "result": {"message_id": 42}})) == Sent("42")
    flood = read(429, {}, raw_json({"ok": False, "error_code": 429, "description": "Too Many Requests: retry "
                                    "after 9", "parameters": {"retry_after": 9}}))
    assert flood == Retry("HTTP 429: Too Many Requests: retry after 9", 9.0)
    header_only = read(429, {"retry-after": "3"}, raw_json({"ok": False, "description": "Too Many Requests"}))
    assert isinstance(header_only, Retry) and header_only.retry_after_s == 3.0
    assert isinstance(read(502, {}, b"Bad Gateway"), Retry)
    blocked = read(403, {}, raw_json({"ok": False, "error_code": 403,
                                      "description": "Forbidden: bot was blocked by the user"}))
    assert blocked == Permanent("HTTP 403: Forbidden: bot was blocked by the user")


# ------------------------------------------------------------------ SMS (Twilio)
def test_twilio_fixture_parses_and_signature_checks() -> None:
    fields = sms_fields()
    req = sms_request(fields)
    assert sms.ADAPTER.verify(req, SMS_CONFIG, SMS_SECRETS, now=NOW) is None
    (m,) = sms.ADAPTER.parse(req, SMS_CONFIG).messages
    assert m.external_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert m.identity == ("phone", "+12125551234") and m.address == "+12125551234"
    assert m.text == "Hi, where is my order #10234?" and m.kind == "message" and m.attachments == []

    with pytest.raises(SignatureInvalid, match="auth_token"):
        sms.ADAPTER.verify(sms_request(fields, token="wrong"), SMS_CONFIG, SMS_SECRETS, now=NOW)
    signed = sms_request(fields)
    tampered = WebhookRequest(body=urlencode({**fields, "Body": "give me a refund"}).encode(),
                              headers=signed.headers, url=URL)
    with pytest.raises(SignatureInvalid):
        sms.ADAPTER.verify(tampered, SMS_CONFIG, SMS_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="missing"):
        sms.ADAPTER.verify(sms_request(fields, header=False), SMS_CONFIG, SMS_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid):  # signed for another URL
        sms.ADAPTER.verify(sms_request(fields, signed_url=URL + "x"), SMS_CONFIG, SMS_SECRETS, now=NOW)
    # Twilio signs with or without the default port, as proxies rewrite it: both accepted.
    with_port = URL.replace(".test/", ".test:443/")
    ported = sms_request(fields, signed_url=with_port)
    assert sms.ADAPTER.verify(ported, SMS_CONFIG, SMS_SECRETS, now=NOW) is None


def test_twilio_opt_out_and_opt_in_keywords() -> None:
    for body, kind in (("STOP", "opt_out"), (" stop ", "opt_out"), ("Unsubscribe", "opt_out"),
                       ("START", "opt_in"), ("unstop", "opt_in"), ("Stop by tomorrow?", "message"),
                       ("start my order", "message")):
        (m,) = sms.ADAPTER.parse(sms_request(sms_fields(Body=body)), SMS_CONFIG).messages
        assert m.kind == kind, body


def test_twilio_media_and_malformed() -> None:
    fields = sms_fields(NumMedia="1", MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Media/ME1",
                        MediaContentType0="image/jpeg", Body="")
    (m,) = sms.ADAPTER.parse(sms_request(fields), SMS_CONFIG).messages
    assert m.attachments == [{"type": "image", "url": fields["MediaUrl0"], "mime_type": "image/jpeg"}]
    with pytest.raises(MalformedPayload, match="MediaUrl0"):
        sms.ADAPTER.parse(sms_request({k: v for k, v in fields.items() if k != "MediaUrl0"}), SMS_CONFIG)
    with pytest.raises(MalformedPayload, match="MessageSid"):
        no_sid = {k: v for k, v in sms_fields().items() if k != "MessageSid"}
        sms.ADAPTER.parse(sms_request(no_sid), SMS_CONFIG)
    with pytest.raises(MalformedPayload, match="From"):
        sms.ADAPTER.parse(sms_request(sms_fields(From="not a number")), SMS_CONFIG)


def test_twilio_setup_send_and_responses() -> None:
    out = sms.ADAPTER.validate_setup({"account_sid": SID, "from_number": "+1 (415) 555-2671"}, SMS_SECRETS)
    assert out == SMS_CONFIG
    svc = "MG" + "ab" * 16
    assert sms.ADAPTER.validate_setup({"account_sid": SID, "messaging_service_sid": svc}, SMS_SECRETS)
    with pytest.raises(InvalidInput, match="config.account_sid"):
        sms.ADAPTER.validate_setup({"account_sid": "AC123", "from_number": "+14155552671"}, SMS_SECRETS)
    with pytest.raises(InvalidInput, match="config.from_number"):
        sms.ADAPTER.validate_setup({"account_sid": SID}, SMS_SECRETS)
    with pytest.raises(InvalidInput, match="secrets.auth_token"):
        sms.ADAPTER.validate_setup(SMS_CONFIG, {})

    req = sms.ADAPTER.build_send(OutboundText("+12125551234", "Your order shipped"), SMS_CONFIG, SMS_SECRETS,
                                 "https://api.twilio.com")
    assert req.url == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert req.auth == (SID, "twilio-auth-token") and req.json is None
    assert req.data == {"To": "+12125551234", "From": "+14155552671", "Body": "Your order shipped"}
    via = sms.ADAPTER.build_send(OutboundText("+12125551234", "x"), {"account_sid": SID,
                                 "messaging_service_sid": svc}, SMS_SECRETS, "https://api.twilio.com")
    assert via.data == {"To": "+12125551234", "MessagingServiceSid": svc, "Body": "x"}

    read = sms.ADAPTER.read_response
    assert read(201, {}, raw_json({"sid": "SMabc", "status": "queued"})) == Sent("SMabc")
    limited = read(429, {"retry-after": "5"}, raw_json({"code": 20429, "message": "Too Many Requests"}))
    assert isinstance(limited, Retry) and limited.retry_after_s == 5.0
    assert isinstance(read(500, {}, raw_json({"code": 20500, "message": "Internal"})), Retry)
    stop = read(400, {}, raw_json({"code": 21610, "message": "Attempt to send to unsubscribed recipient"}))
    assert isinstance(stop, Permanent) and "replied STOP" in stop.error
    other = read(400, {}, raw_json({"code": 21211, "message": "Invalid 'To' Phone Number"}))
    assert other == Permanent("HTTP 400: Twilio 21211: Invalid 'To' Phone Number")


def test_sms_segments_gsm_and_unicode() -> None:
    assert sms.sms_segments("") == 0
    assert sms.sms_segments("a" * 160) == 1 and sms.sms_segments("a" * 161) == 2
    assert sms.sms_segments("a" * 306) == 2 and sms.sms_segments("a" * 307) == 3
    assert sms.sms_segments("€" * 80) == 1 and sms.sms_segments("€" * 81) == 2  # two septets each
    assert sms.sms_segments("é" * 160) == 1  # é is in the GSM alphabet
    assert sms.sms_segments("ę" * 70) == 1 and sms.sms_segments("ę" * 71) == 2
    assert sms.sms_segments("hi 😀" * 20) == 2  # UCS-2: the emoji is two code units (100 in all)
    assert sms.sms_segments("a" * 159 + "ę") == 3  # one non-GSM character makes it all UCS-2


# ------------------------------------------------------------------ email (Mailgun)
def test_mailgun_fixture_parses_and_signature_checks() -> None:
    fields = mailgun_fields()
    req = form_request(fields)
    assert mailgun.ADAPTER.verify(req, MG_CONFIG, MG_SECRETS, now=NOW + 10) == "mailgun:" + fields["token"]
    (m,) = mailgun.ADAPTER.parse(req, MG_CONFIG).messages
    assert m.external_id == "<CAF1234567@mail.example.com>"
    assert m.identity == ("email", "priya@example.com") and m.address == "priya@example.com"
    assert m.contact_name == "Priya Sharma"
    assert m.text == "Hi, how much is the enterprise plan and do you offer a free trial?"
    assert m.thread["subject"] == "Question about the enterprise plan"
    assert m.thread["message_id"] == "<CAF1234567@mail.example.com>"
    assert m.thread["references"] == [] and m.thread["in_reply_to"] is None


def test_mailgun_signature_refused_unless_correct_and_fresh() -> None:
    good = mailgun_fields()
    assert mailgun.ADAPTER.verify(form_request(good), MG_CONFIG, MG_SECRETS, now=NOW) is not None
    with pytest.raises(SignatureInvalid, match="webhook_signing_key"):
        mailgun.ADAPTER.verify(form_request(mailgun_fields(key="wrong")), MG_CONFIG, MG_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid):  # another token under the same signature
        mailgun.ADAPTER.verify(form_request({**good, "token": "f" * 50}), MG_CONFIG, MG_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="signature"):
        mailgun.ADAPTER.verify(form_request({k: v for k, v in good.items() if k != "signature"}),
                               MG_CONFIG, MG_SECRETS, now=NOW)
    old = mailgun_fields(timestamp=NOW - 301)
    with pytest.raises(SignatureInvalid, match="stale timestamp"):
        mailgun.ADAPTER.verify(form_request(old), MG_CONFIG, MG_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="stale timestamp"):
        future = form_request(mailgun_fields(timestamp=NOW + 301))
        mailgun.ADAPTER.verify(future, MG_CONFIG, MG_SECRETS, now=NOW)
    # the twin: the same age is fine under a longer configured window, or 299 s old by default
    assert mailgun.ADAPTER.verify(form_request(old), {**MG_CONFIG, "signature_max_age_s": 600}, MG_SECRETS,
                                  now=NOW)
    assert mailgun.ADAPTER.verify(form_request(old), MG_CONFIG, MG_SECRETS, now=NOW, max_age_s=400)
    assert mailgun.ADAPTER.verify(form_request(mailgun_fields(timestamp=NOW - 299)), MG_CONFIG, MG_SECRETS,
                                  now=NOW)


def test_mailgun_reply_without_quoted_history_or_signature() -> None:
    body = ("Yes, please send the invoice to our finance team.\n\n"
            "Best regards,\nPriya\n--\nPriya Sharma\nHead of Ops, Example Corp\n\n"
            "On Mon, Nov 17, 2025 at 10:02 AM Acme Support <support@example-saas.test> wrote:\n"
            "> Would you like the invoice emailed?\n> Thanks, Acme\n")
    headers = json.dumps([["Message-Id", "<reply-2@mail.example.com>"], ["In-Reply-To", "<out-1@mg.test>"],
                          ["References", "<CAF1234567@mail.example.com> <out-1@mg.test>"],
                          ["Subject", "Re: Question about the enterprise plan"]])
    fields = mailgun_fields()
    fields.update({"body-plain": body, "message-headers": headers,
                   "subject": "Re: Question about the enterprise plan"})
    del fields["stripped-text"]
    (m,) = mailgun.ADAPTER.parse(form_request(fields), MG_CONFIG).messages
    assert m.text == "Yes, please send the invoice to our finance team."
    assert "wrote:" not in m.text and "> " not in m.text and "Head of Ops" not in m.text
    assert m.external_id == "<reply-2@mail.example.com>"
    assert m.thread["in_reply_to"] == "<out-1@mg.test>"
    assert m.thread["references"] == ["<CAF1234567@mail.example.com>", "<out-1@mg.test>"]
    assert m.thread["normalized_subject"] == "question about the enterprise plan"
    # Explicit fields win over message-headers; attachments are listed by name.
    fields.update({"Message-Id": "<field@mail.example.com>", "attachment-count": "1",
                   "attachment-1": "invoice.pdf"})
    (m,) = mailgun.ADAPTER.parse(form_request(fields), MG_CONFIG).messages
    assert m.external_id == "<field@mail.example.com>"
    assert m.attachments == [{"type": "document", "filename": "invoice.pdf"}]


def test_mailgun_malformed_names_the_field() -> None:
    fields = mailgun_fields()
    assert mailgun.ADAPTER.parse(form_request(fields), MG_CONFIG).messages  # the twin
    no_id = {**fields, "message-headers": "[]"}
    with pytest.raises(MalformedPayload, match="Message-Id"):
        mailgun.ADAPTER.parse(form_request(no_id), MG_CONFIG)
    with pytest.raises(MalformedPayload, match="from/sender"):
        nobody = {**fields, "from": "", "sender": "nobody", "Message-Id": "<a@b.test>",
                  "message-headers": "[]"}
        mailgun.ADAPTER.parse(form_request(nobody), MG_CONFIG)
    with pytest.raises(MalformedPayload, match="message-headers"):
        mailgun.ADAPTER.parse(form_request({**fields, "message-headers": "{not json"}), MG_CONFIG)


def test_normalize_subject() -> None:
    assert mailgun.normalize_subject("Re: Fwd:  Order #12 ") == "order #12"
    assert mailgun.normalize_subject("RE[2]: AW: WG: Rechnung") == "rechnung"
    assert mailgun.normalize_subject("FW: re: Question") == "question"
    assert mailgun.normalize_subject("Regarding your order") == "regarding your order"  # no prefix
    assert mailgun.normalize_subject("Question about the enterprise plan") == mailgun.normalize_subject(
        "Re: question about the  Enterprise plan")


def test_mailgun_setup_send_and_responses() -> None:
    out = mailgun.ADAPTER.validate_setup({**MG_CONFIG, "from_address": " Support@Example-SaaS.test "},
                                         MG_SECRETS)
    assert out["from_address"] == "support@example-saas.test" and out["domain"] == "mg.example-saas.test"
    with pytest.raises(InvalidInput, match="config.from_address"):
        mailgun.ADAPTER.validate_setup({**MG_CONFIG, "from_address": "not-an-address"}, MG_SECRETS)
    with pytest.raises(InvalidInput, match="config.domain"):
        mailgun.ADAPTER.validate_setup({**MG_CONFIG, "domain": ""}, MG_SECRETS)
    with pytest.raises(InvalidInput, match="secrets.webhook_signing_key"):
        mailgun.ADAPTER.validate_setup(MG_CONFIG, {"api_key": "k"})

    thread = {"subject": "Question about the enterprise plan", "message_id": "<m2@mail.example.com>",
              "references": ["<m1@mail.example.com>"]}
    req = mailgun.ADAPTER.build_send(OutboundText("priya@example.com", "It is $99.", thread=thread),
                                     MG_CONFIG, MG_SECRETS, "https://api.mailgun.net")
    assert req.url == "https://api.mailgun.net/v3/mg.example-saas.test/messages"
    assert req.auth == ("api", "key-test")
    assert req.data == {"from": "Acme Support <support@example-saas.test>", "to": "priya@example.com",
                        "subject": "Re: Question about the enterprise plan", "text": "It is $99.",
                        "h:In-Reply-To": "<m2@mail.example.com>",
                        "h:References": "<m1@mail.example.com> <m2@mail.example.com>"}
    again = mailgun.ADAPTER.build_send(OutboundText("p@example.com", "x", thread={"subject": "RE: Hi"}),
                                       MG_CONFIG, MG_SECRETS, "https://api.mailgun.net")
    assert again.data is not None and again.data["subject"] == "RE: Hi" and "h:In-Reply-To" not in again.data

    read = mailgun.ADAPTER.read_response
    queued = raw_json({"id": "<20251122.1@mg.example-saas.test>", "message": "Queued. Thank you."})
    assert read(200, {}, queued) == Sent("<20251122.1@mg.example-saas.test>")
    limited = read(429, {"retry-after": "30"}, raw_json({"message": "Too many requests"}))
    assert limited == Retry("HTTP 429: Too many requests", 30.0)
    assert isinstance(read(503, {}, raw_json({"message": "Service Unavailable"})), Retry)
    assert read(400, {}, raw_json({"message": "'to' parameter is missing"})) == Permanent(
        "HTTP 400: 'to' parameter is missing")
    assert isinstance(read(401, {}, b"Forbidden"), Permanent)


# ------------------------------------------------------------------ Slack
def test_slack_url_verification_and_message() -> None:
    body = (FIXTURES / "slack-url-verification.json").read_bytes()
    assert slack.ADAPTER.verify(slack_request(body), SL_CONFIG, SL_SECRETS, now=NOW) is None
    parsed = slack.ADAPTER.parse(slack_request(body), SL_CONFIG)
    assert parsed.reply == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert parsed.messages == []

    message = slack_request((FIXTURES / "slack-message.json").read_bytes())
    (m,) = slack.ADAPTER.parse(message, SL_CONFIG).messages
    assert m.external_id == "Ev0PV52K21" and m.identity == ("slack", "T0001:U2147483697")
    assert m.address == "C2147483705" and m.text == "Hello, can somebody tell me how to reset my password?"
    assert m.thread == {"channel": "C2147483705", "thread_ts": "1355517523.000005"}
    threaded = fixture("slack-message.json")
    threaded["event"]["thread_ts"] = "1355517000.000001"
    (t,) = slack.ADAPTER.parse(slack_request(raw_json(threaded)), SL_CONFIG).messages
    assert t.thread["thread_ts"] == "1355517000.000001"


def test_slack_bot_edits_and_other_events_ignored() -> None:
    base = fixture("slack-message.json")
    assert slack.ADAPTER.parse(slack_request(raw_json(base)), SL_CONFIG).messages  # the twin: a person
    for change in ({"bot_id": "B0001"}, {"subtype": "message_changed"}, {"subtype": "bot_message"},
                   {"user": "UBOT0001"}, {"type": "reaction_added"}):
        body = copy.deepcopy(base)
        body["event"].update(change)
        parsed = slack.ADAPTER.parse(slack_request(raw_json(body)), SL_CONFIG)
        assert parsed.messages == [] and parsed.reply is None, change
    other_team = slack.ADAPTER.parse(slack_request(raw_json(base)), {**SL_CONFIG, "team_id": "T0002"})
    assert other_team.messages == []
    broken = copy.deepcopy(base)
    del broken["event"]["channel"]
    with pytest.raises(MalformedPayload, match="event.channel"):
        slack.ADAPTER.parse(slack_request(raw_json(broken)), SL_CONFIG)
    del base["event_id"]
    with pytest.raises(MalformedPayload, match="event_id"):
        slack.ADAPTER.parse(slack_request(raw_json(base)), SL_CONFIG)


def test_slack_signature_refused_unless_correct_and_fresh() -> None:
    body = (FIXTURES / "slack-message.json").read_bytes()
    assert slack.ADAPTER.verify(slack_request(body), SL_CONFIG, SL_SECRETS, now=NOW + 299) is None
    with pytest.raises(SignatureInvalid, match="signing_secret"):
        slack.ADAPTER.verify(slack_request(body, secret="wrong"), SL_CONFIG, SL_SECRETS, now=NOW)
    tampered = WebhookRequest(body=body.replace(b"password", b"passw0rd"),
                              headers=slack_request(body).headers, url="")
    with pytest.raises(SignatureInvalid, match="does not match"):
        slack.ADAPTER.verify(tampered, SL_CONFIG, SL_SECRETS, now=NOW)
    for header in ("x-slack-signature", "x-slack-request-timestamp"):
        with pytest.raises(SignatureInvalid, match="missing"):
            slack.ADAPTER.verify(slack_request(body, drop=header), SL_CONFIG, SL_SECRETS, now=NOW)
    with pytest.raises(SignatureInvalid, match="5-minute window"):
        slack.ADAPTER.verify(slack_request(body), SL_CONFIG, SL_SECRETS, now=NOW + 301)
    with pytest.raises(SignatureInvalid, match="5-minute window"):
        slack.ADAPTER.verify(slack_request(body, ts=NOW + 400), SL_CONFIG, SL_SECRETS, now=NOW)
    # a real clock: a request signed now passes
    fresh = slack_request(body, ts=time.time())
    assert slack.ADAPTER.verify(fresh, SL_CONFIG, SL_SECRETS, now=time.time()) is None


def test_slack_setup_send_and_responses() -> None:
    assert slack.ADAPTER.validate_setup({"team_id": "t0001"}, SL_SECRETS) == {"team_id": "T0001"}
    with pytest.raises(InvalidInput, match="secrets.bot_token"):
        slack.ADAPTER.validate_setup({}, {**SL_SECRETS, "bot_token": "xoxp-user-token"})
    with pytest.raises(InvalidInput, match="secrets.signing_secret"):
        slack.ADAPTER.validate_setup({}, {"bot_token": "xoxb-1"})

    thread = {"channel": "C2147483705", "thread_ts": "1355517523.000005"}
    req = slack.ADAPTER.build_send(OutboundText("C2147483705", "Use Settings > Reset.", thread=thread),
                                   SL_CONFIG, SL_SECRETS, "https://slack.com/api")
    assert req.url == "https://slack.com/api/chat.postMessage"
    assert req.headers["Authorization"] == "Bearer xoxb-test"
    assert req.json == {"channel": "C2147483705", "text": "Use Settings > Reset.",
                        "thread_ts": "1355517523.000005"}
    plain = slack.ADAPTER.build_send(OutboundText("D123", "hi"), SL_CONFIG, SL_SECRETS, "https://slack.com/api")
    assert plain.json == {"channel": "D123", "text": "hi"}

    read = slack.ADAPTER.read_response
    assert read(200, {}, raw_json({"ok": True, "channel": "C1", "ts": "1700000000.000100"})) == Sent(
        "1700000000.000100")
    limited = read(429, {"retry-after": "30"}, b"")
    assert isinstance(limited, Retry) and limited.retry_after_s == 30.0
    assert isinstance(read(200, {}, raw_json({"ok": False, "error": "ratelimited"})), Retry)
    assert isinstance(read(500, {}, b"oops"), Retry)
    assert read(200, {}, raw_json({"ok": False, "error": "channel_not_found"})) == Permanent(
        "Slack error: channel_not_found")
    assert isinstance(read(400, {}, b"invalid_form_data"), Permanent)
