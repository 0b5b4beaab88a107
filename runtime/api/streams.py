"""Server-sent events of a session: one turn's events, or all of them, read from Redis.

HTTP handlers only read the session's stream (the actor writes it), so a dropped connection never
aborts an answer, and any ingress replica can serve any stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

from runtime.events import TERMINAL_KINDS, SessionEvent, SessionEvents

KEEPALIVE_S = 10.0


def is_turn_end(ev: SessionEvent) -> bool:
    """``done``, ``error`` or ``aborted`` end a turn's stream; an ``aborted`` that only marks a
    superseded attempt (a restarted or retried turn answers again) does not."""
    return ev.kind in TERMINAL_KINDS and not (ev.kind == "aborted" and ev.data.get("superseded"))


async def turn_events(
    events: SessionEvents, session_id: UUID, turn: int, after: str, *, timeout_s: float,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[dict[str, str]]:
    """SSE dicts of one turn's events (from stream position ``after``) up to the turn's end.

    After ``timeout_s`` seconds without it the stream ends with an ``error`` event
    (``turn_timeout``), telling the client to fetch the messages instead: it never hangs.
    """
    deadline = time.monotonic() + timeout_s
    block_ms = int(keepalive_s * 1000)
    async for ev in events.read(session_id, after=after, block_ms=block_ms):
        if time.monotonic() > deadline:
            yield {"event": "error", "id": f"{turn}:t", "data": json.dumps({
                "code": "turn_timeout",
                "message": "The answer is taking too long; fetch the conversation's messages to see it."})}
            return
        if ev is None:
            yield {"comment": "keep-alive"}
            continue
        if ev.turn != turn:
            continue
        yield ev.sse()
        if is_turn_end(ev):
            return


async def session_event_stream(
    events: SessionEvents, session_id: UUID, last_event_id: str | None,
    is_disconnected: Callable[[], Awaitable[bool]], keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[dict[str, str]]:
    """All of the session's events after ``Last-Event-ID`` (or only new ones), forever."""
    if last_event_id:
        after = await events.stream_id_after_event(session_id, last_event_id)
    else:
        after = await events.last_stream_id(session_id)
    async for ev in events.read(session_id, after=after, block_ms=int(keepalive_s * 1000)):
        if await is_disconnected():
            return
        if ev is None:
            yield {"comment": "keep-alive"}
            continue
        yield ev.sse()


async def replay_answer(answer: dict[str, Any] | None, turn: int) -> AsyncIterator[dict[str, str]]:
    """SSE for a repeated client_msg_id: the original answer (if any), then ``done``."""
    if answer is not None:
        yield {"event": "message", "id": f"{answer['id']}:r", "data": json.dumps(answer)}
        yield {"event": "done", "id": f"{answer['id']}:rd",
               "data": json.dumps({"message_id": answer["id"], "duplicate": True})}
    else:
        yield {"event": "done", "id": f"{turn}:rd",
               "data": json.dumps({"message_id": turn, "duplicate": True})}
    await asyncio.sleep(0)
