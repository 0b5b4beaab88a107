"""The conversation log export (issue 15, seed 004 "Conversation Logger"), on the real stack: the
log of a finished conversation matches its messages, turn by turn, with the resolution and the
session's metadata; another tenant cannot read it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.chat_helpers import ask, kinds, new_session, widget_channel
from tests.conftest import TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)

QUESTION = "When is the shop open on Saturdays?"
ANSWER = "On Saturdays the shop is open from 9 am to 4 pm."


async def _qa_channel(client: httpx.AsyncClient, tenant: TenantInfo) -> dict[str, Any]:
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": QUESTION, "answer": ANSWER})
    assert r.status_code in (200, 201), r.text
    return await widget_channel(client, tenant.headers)


async def _log(client: httpx.AsyncClient, tenant: TenantInfo, session_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/sessions/{session_id}/log", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_log_of_an_escalated_conversation_matches_its_messages(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    channel = await _qa_channel(client, tenant)
    s = await new_session(client, channel["widget_token"])
    assert kinds(await ask(client, s, QUESTION))[-1] == "done"
    r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/sessions/{s.session_id}/reply", headers=tenant.headers,
                          json={"text": "Hi, this is a person. How can I help?"})
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/sessions/{s.session_id}/close", headers=tenant.headers)
    assert r.status_code == 200, r.text

    log = await _log(client, tenant, s.session_id)
    stored = (await client.get(f"/v1/sessions/{s.session_id}/messages", headers=tenant.headers)).json()
    msgs = stored["messages"]
    roles = {"customer": "user", "ai": "assistant", "agent": "agent", "system": "system"}
    assert [(t["turn"], t["role"], t["content"]) for t in log["messages"]] == [
        (i, roles[m["sender"]], m["text"]) for i, m in enumerate(msgs, start=1)]
    user, answer = log["messages"][0], log["messages"][1]
    assert user["role"] == "user" and user["content"] == QUESTION
    assert user["intent_detected"] == "answer" and 0 < user["confidence"] <= 1
    assert answer["role"] == "assistant" and answer["feature_used"] == "answer"
    assert "9 am to 4 pm" in answer["content"] and answer["sources"] and answer["escalated"] is False
    escalations = [t for t in log["messages"] if t.get("escalated")]
    assert len(escalations) == 1 and escalations[0]["feature_used"] == "escalation"
    agent = [t for t in log["messages"] if t["role"] == "agent"]
    assert [a["content"] for a in agent] == ["Hi, this is a person. How can I help?"]
    assert agent[0]["agent_name"]
    assert log["resolution_status"] == "escalated" and log["escalation_reason"]
    meta = log["session_metadata"]
    assert meta["total_turns"] == len(msgs) and meta["status"] == "closed"
    assert meta["duration_seconds"] >= 0 and meta["bot_version"]
    assert log["timestamp_start"] <= log["timestamp_end"]
    assert log["channel"] == "widget" and log["session_id"] == s.session_id
    assert (await _log(client, tenant, s.session_id))["log_id"] == log["log_id"]  # one log per session

    # Another tenant's key: 404, as if the session did not exist.
    other = await make_tenant(client, "log-other")
    r = await client.get(f"/v1/sessions/{s.session_id}/log", headers=other.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text


async def test_resolution_of_answered_and_unanswered_conversations(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    """All answered by the bot: resolved; a conversation without a customer message: abandoned."""
    channel = await _qa_channel(client, tenant)
    answered = await new_session(client, channel["widget_token"])
    assert kinds(await ask(client, answered, QUESTION))[-1] == "done"
    log = await _log(client, tenant, answered.session_id)
    assert log["resolution_status"] == "resolved" and log["escalation_reason"] is None
    assert [t["role"] for t in log["messages"]] == ["user", "assistant"]
    silent = await new_session(client, channel["widget_token"])
    log = await _log(client, tenant, silent.session_id)
    assert log["resolution_status"] == "abandoned" and log["messages"] == []
    assert log["session_metadata"]["total_turns"] == 0
