"""Runtime metrics (issue 17): recorded through ``ray.util.metrics`` and read back from Ray's
metrics export (Prometheus text on the port the test session's ``ray.init`` named), the way an
operator's Prometheus or the Ray dashboard reads them.

Scraped here: turns by outcome, turn duration and the runtime's own overhead, activations,
escalations, and the Timekeeper's gauges (live session actors, outbox pending and dead). The
rate-limit and fallback counters are recorded the same way but not provoked here: a 429 on
loopback would spend the IP budget of the tests that follow.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.chat_helpers import ask, kinds, new_session, widget_channel
from tests.conftest import METRICS_PORT, TenantInfo

pytestmark = pytest.mark.timeout(300)

QUESTION = "When is the shop open on Saturdays?"
ANSWER = "On Saturdays the shop is open from 9 am to 4 pm."
_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<tags>.*)\})?\s+(?P<value>\S+)$")


def _samples(text: str, name: str, **tags: str) -> float | None:
    """The sum over the series of ``name`` whose tags include ``tags``; None if there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or m["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["tags"] or ""))
        if all(have.get(k) == v for k, v in tags.items()):
            total += float(m["value"])
            found = True
    return total if found else None


async def _scrape(client: httpx.AsyncClient) -> str:
    r = await client.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    assert r.status_code == 200
    return r.text


async def _until(client: httpx.AsyncClient, want: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                 timeout_s: float = 60.0) -> str:
    """Scrape until every (name, tags) reaches its minimum; return the last scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = await _scrape(client)
        short = {k: _samples(text, k[0], **dict(k[1])) for k, v in want.items()}
        if all(got is not None and got >= want[k] for k, got in short.items()):
            return text
        assert time.monotonic() < deadline, f"metrics not reported within {timeout_s} s: {short}"
        await asyncio.sleep(1.0)


async def test_turns_activations_escalations_and_gauges_reach_the_metrics_export(
    client: httpx.AsyncClient, tenant: TenantInfo,
) -> None:
    async with httpx.AsyncClient(timeout=10) as scraper:
        before = await _scrape(scraper)
        answers0 = _samples(before, "ray_chat_turns_total", outcome="answer") or 0.0
        escalations0 = _samples(before, "ray_chat_escalations_total", signal="handoff_button") or 0.0
        r = await client.post("/v1/kb/qa", headers=tenant.headers,
                              json={"question": QUESTION, "answer": ANSWER})
        assert r.status_code in (200, 201), r.text
        channel = await widget_channel(client, tenant.headers)
        s = await new_session(client, channel["widget_token"])
        for _ in range(2):
            assert kinds(await ask(client, s, QUESTION))[-1] == "done"
        r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
        assert r.status_code == 200, r.text

        text = await _until(scraper, {
            ("ray_chat_turns_total", (("outcome", "answer"),)): answers0 + 2,
            ("ray_chat_escalations_total", (("signal", "handoff_button"),)): escalations0 + 1,
            ("ray_chat_activations_total", ()): 1,
            ("ray_chat_active_sessions", ()): 1,
        })
        # Histograms carry a count per outcome and a sum in milliseconds.
        assert (_samples(text, "ray_chat_turn_duration_ms_count", outcome="answer") or 0) >= 2
        assert (_samples(text, "ray_chat_turn_duration_ms_sum", outcome="answer") or 0) > 0
        assert (_samples(text, "ray_chat_turn_overhead_ms_count") or 0) >= 2
        assert (_samples(text, "ray_chat_activation_ms_count") or 0) >= 1
        assert _samples(text, "ray_chat_outbox_pending") is not None
        assert _samples(text, "ray_chat_outbox_dead") is not None
        # Tags stay low-cardinality: no tenant or session ids in any series.
        chat_lines = [line for line in text.splitlines() if line.startswith("ray_chat_")]
        assert chat_lines and not any(tenant.id in line or s.session_id in line for line in chat_lines)
