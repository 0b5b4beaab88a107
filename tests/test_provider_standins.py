"""The provider stand-ins themselves (no Postgres, Redis or Ray: only the local stand-in server)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.provider_standins import ProviderStandIns


@pytest.fixture(scope="module")
def standins() -> Iterator[ProviderStandIns]:
    with ProviderStandIns() as s:
        yield s


@pytest.fixture
def stand(standins: ProviderStandIns) -> Iterator[ProviderStandIns]:
    standins.reset()
    yield standins
    standins.reset()


def _send_all(s: ProviderStandIns) -> dict[str, httpx.Response]:
    b = s.base_urls
    with httpx.Client(timeout=5) as c:
        return {
            "whatsapp": c.post(f"{b['whatsapp_api_base']}/1234567890/messages",
                               headers={"Authorization": "Bearer wa-token"},
                               json={"messaging_product": "whatsapp", "to": "15550001111", "type": "text",
                                     "text": {"body": "hello wa"}}),
            "telegram": c.post(f"{b['telegram_api_base']}/bot123:ABC/sendMessage",
                               json={"chat_id": 4242, "text": "hello tg"}),
            "sms": c.post(f"{b['twilio_api_base']}/2010-04-01/Accounts/AC123/Messages.json",
                          auth=("AC123", "tw-secret"),
                          data={"To": "+15550002222", "From": "+15550003333", "Body": "hello sms"}),
            "email": c.post(f"{b['mailgun_api_base']}/v3/mg.example.com/messages", auth=("api", "key-1"),
                            data={"from": "bot@mg.example.com", "to": "ann@example.com", "subject": "Re: hi",
                                  "text": "hello email", "h:In-Reply-To": "<m1@example.com>"}),
            "slack": c.post(f"{b['slack_api_base']}/chat.postMessage",
                            headers={"Authorization": "Bearer xoxb-1"},
                            json={"channel": "C123", "text": "hello slack",
                                  "thread_ts": "1700000000.000100"}),
        }


def test_each_provider_accepts_and_records(stand: ProviderStandIns) -> None:
    r = _send_all(stand)
    assert r["whatsapp"].status_code == 200
    assert r["whatsapp"].json()["messages"][0]["id"].startswith("wamid.")
    assert r["telegram"].json()["ok"] is True and r["telegram"].json()["result"]["chat"]["id"] == 4242
    assert r["sms"].status_code == 201 and re.fullmatch(r"SM[0-9a-f]{32}", r["sms"].json()["sid"])
    assert r["sms"].json()["status"] == "queued"
    assert r["email"].json()["message"] == "Queued. Thank you."
    assert r["email"].json()["id"].endswith("@mg.example.com>")
    assert r["slack"].json()["ok"] is True and re.fullmatch(r"\d+\.\d{6}", r["slack"].json()["ts"])
    want = {"whatsapp": ("15550001111", "hello wa"), "telegram": ("4242", "hello tg"),
            "sms": ("+15550002222", "hello sms"), "email": ("ann@example.com", "hello email"),
            "slack": ("C123", "hello slack")}
    for provider, (recipient, text) in want.items():
        [d] = stand.wait_for_sync(provider, 1, timeout_s=2)
        assert (d.recipient, d.text) == (recipient, text), provider
        assert stand.attempts(provider) == 1
    assert stand.deliveries("email")[0].payload["h:In-Reply-To"] == "<m1@example.com>"
    assert stand.deliveries("slack")[0].payload["thread_ts"] == "1700000000.000100"
    assert stand.env()["CHAT_ENGINE_SLACK_API_BASE"] == stand.base_urls["slack_api_base"]


def test_missing_auth_is_rejected_and_not_recorded(stand: ProviderStandIns) -> None:
    b = stand.base_urls
    with httpx.Client(timeout=5) as c:
        wa = c.post(f"{b['whatsapp_api_base']}/1/messages",
                    json={"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {"body": "x"}})
        sms = c.post(f"{b['twilio_api_base']}/2010-04-01/Accounts/AC1/Messages.json",
                     data={"To": "+1", "From": "+2", "Body": "x"})
        mail = c.post(f"{b['mailgun_api_base']}/v3/d.example/messages",
                      data={"from": "a@d.example", "to": "b@x", "text": "x"})
        slack = c.post(f"{b['slack_api_base']}/chat.postMessage", json={"channel": "C1", "text": "x"})
        bad_wa = c.post(f"{b['whatsapp_api_base']}/1/messages", headers={"Authorization": "Bearer t"},
                        json={"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}})
        bad_tg = c.post(f"{b['telegram_api_base']}/bot1:A/sendMessage", json={"text": "x"})
    assert wa.status_code == 401 and wa.json()["error"]["code"] == 190
    assert bad_wa.status_code == 400 and bad_wa.json()["error"]["code"] == 100
    assert sms.status_code == 401 and sms.json()["code"] == 20003
    assert mail.status_code == 401
    assert slack.status_code == 200 and slack.json() == {"ok": False, "error": "not_authed"}
    assert bad_tg.status_code == 400 and bad_tg.json()["description"].startswith("Bad Request:")
    assert stand.deliveries() == []
    assert stand.attempts("whatsapp") == 2 and stand.attempts("slack") == 1


def test_expected_credentials_are_enforced(stand: ProviderStandIns) -> None:
    stand.expect_credentials("telegram", token="123:ABC")
    with httpx.Client(timeout=5) as c:
        wrong = c.post(f"{stand.base_urls['telegram_api_base']}/bot999:X/sendMessage",
                       json={"chat_id": 1, "text": "x"})
    assert wrong.status_code == 401 and stand.deliveries("telegram") == []
    _send_all(stand)
    assert len(stand.deliveries("telegram")) == 1


def test_fail_next_twice_then_success(stand: ProviderStandIns) -> None:
    stand.fail_next("slack", 2, status=429, retry_after=3)
    url = f"{stand.base_urls['slack_api_base']}/chat.postMessage"
    with httpx.Client(timeout=5, headers={"Authorization": "Bearer xoxb-1"}) as c:
        answers = [c.post(url, json={"channel": "C9", "text": f"try {i}"}) for i in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[0].json() == {"ok": False, "error": "ratelimited"}
    assert stand.attempts("slack") == 3
    assert [d.text for d in stand.deliveries("slack")] == ["try 2"]


def test_fail_always_until_recover(stand: ProviderStandIns) -> None:
    stand.fail_always("telegram", status=503)
    url = f"{stand.base_urls['telegram_api_base']}/bot1:A/sendMessage"
    with httpx.Client(timeout=5) as c:
        assert [c.post(url, json={"chat_id": 1, "text": "x"}).status_code for _ in range(3)] == [503] * 3
        stand.recover("telegram")
        assert c.post(url, json={"chat_id": 1, "text": "x"}).status_code == 200
    assert stand.attempts("telegram") == 4 and len(stand.deliveries("telegram")) == 1


async def test_delayed_request_abandoned_by_client_is_not_recorded(stand: ProviderStandIns) -> None:
    stand.delay("sms", 0.6)
    url = f"{stand.base_urls['twilio_api_base']}/2010-04-01/Accounts/AC1/Messages.json"
    form = {"To": "+1555", "From": "+1666", "Body": "slow"}
    async with httpx.AsyncClient(timeout=0.2, auth=("AC1", "secret")) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(url, data=form)
    with pytest.raises(AssertionError, match="wanted 1 deliveries"):
        await stand.wait_for("sms", 1, timeout_s=1.0)
    assert stand.attempts("sms") == 1
    async with httpx.AsyncClient(timeout=5, auth=("AC1", "secret")) as c:
        assert (await c.post(url, data=form)).status_code == 201
    assert [d.text for d in await stand.wait_for("sms", 1, timeout_s=1)] == ["slow"]
