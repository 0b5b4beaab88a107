"""Helpers for tests that talk to the widget API: sessions, SSE parsing, turns."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

ORIGIN = "https://shop.example"


@dataclass
class SseEvent:
    """One server-sent event."""

    event: str
    id: str | None
    data: dict[str, Any]


@dataclass
class WidgetSession:
    """A widget session created like the host page does."""

    session_id: str
    token: str
    widget_token: str
    greeting: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def parse_sse(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse an SSE response body into events (comments and pings skipped)."""
    event, eid, data = "message", None, []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(event, eid, json.loads("\n".join(data)))
            event, eid, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "id":
            eid = value
        elif name == "data":
            data.append(value)


async def widget_channel(client: httpx.AsyncClient, owner_headers: dict[str, str],
                         origins: list[str] | None = None) -> dict[str, Any]:
    """Create a widget channel allowing ``origins`` (default the test shop origin)."""
    r = await client.post("/v1/channels", headers=owner_headers,
                          json={"type": "widget", "allowed_origins": origins or [ORIGIN]})
    assert r.status_code == 201, r.text
    return r.json()


async def new_session(client: httpx.AsyncClient, widget_token: str,
                      origin: str = ORIGIN) -> WidgetSession:
    """POST /v1/widget/sessions from ``origin``."""
    r = await client.post("/v1/widget/sessions", json={"widget_token": widget_token},
                          headers={"Origin": origin})
    assert r.status_code == 200, r.text
    body = r.json()
    return WidgetSession(body["session_id"], body["session_token"], widget_token,
                         body["greeting"], body)


async def ask(client: httpx.AsyncClient, session: WidgetSession, text: str,
              client_msg_id: str | None = None, on_event: Any = None) -> list[SseEvent]:
    """Send a message and collect the turn's SSE events up to the terminal one."""
    events: list[SseEvent] = []
    async with client.stream(
        "POST", f"/v1/widget/sessions/{session.session_id}/messages", headers=session.headers,
        json={"text": text, "client_msg_id": client_msg_id or uuid.uuid4().hex},
    ) as r:
        assert r.status_code == 200, await r.aread()
        async for ev in parse_sse(r):
            events.append(ev)
            if on_event is not None:
                await on_event(ev)
            # An ``aborted`` marked ``superseded`` drops an earlier attempt's half answer, one
            # marked ``failed`` a failed turn's before its ``error``: the turn's stream goes on
            # (runtime.api.streams.is_turn_end).
            if ev.event in ("done", "error") or (ev.event == "aborted" and not (
                    ev.data.get("superseded") or ev.data.get("failed"))):
                break
    return events


def kinds(events: list[SseEvent]) -> list[str]:
    """Event names in order."""
    return [e.event for e in events]


def answer_text(events: list[SseEvent]) -> str:
    """Concatenated token texts."""
    return "".join(e.data["text"] for e in events if e.event == "token")
