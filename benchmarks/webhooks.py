"""Webhook benchmark: how fast a provider's delivery is acknowledged, and how long until the
answer is sent back through the outbox.

Starts the stack like the tests do (embedded Postgres + Redis, Ray, Serve with the Embedder and
the llama.cpp Generator) plus the provider stand-ins of ``tests/provider_standins.py`` (local HTTP
servers speaking the Graph API and the other providers' send APIs: the real ones cannot be
reached from here), creates a WhatsApp channel over a knowledge-base Q&A, and measures:

- paced: signed WhatsApp text webhooks arriving at a steady rate (20/s, 100 deliveries; ``--quick``
  10/s, 30), spread over a few contacts (their answers queue in a few session actors rather than
  starting a process per delivery on a 2-core machine): ack_ms is the client's time to the 200,
  handler_ms the route's own time (``Server-Timing``: verify, parse, store), the rest is queueing
  in Serve's proxy and the ingress, on CPUs shared with the turns being answered meanwhile;
- burst: 200 (``--quick`` 50) posted at once, then the same again as duplicates (Meta retries:
  200 and nothing stored);
- e2e_cold_ms: a new contact's message, from the POST to the stand-in receiving the answer (a
  new session and its actor, the turn, the outbox row, the sender);
- e2e_warm_ms: the next message of a contact whose session is active.

Prints one JSON object. Target (issue 13): ack p99 < 100 ms at 200 concurrent deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from _stack import Stack, summary, wait_healthy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTION = "Does it come in another color?"
ANSWER = "Yes: the Trailblazer bike also comes in forest green and midnight blue."


async def _post(client: Any, channel: dict[str, Any], body: dict[str, Any],
                server_ms: list[float] | None = None) -> tuple[float, int]:
    from tests.channel_helpers import path_of, signed

    path = path_of(channel)
    raw, headers = signed("whatsapp", body, str(client.base_url).rstrip("/") + path)
    t = time.perf_counter()
    r = await client.post(path, content=raw, headers=headers)
    ms = (time.perf_counter() - t) * 1000
    timing = r.headers.get("server-timing", "")
    if server_ms is not None and "dur=" in timing:
        server_ms.append(float(timing.split("dur=")[1].split(";")[0]))
    return ms, r.status_code


async def _paced(client: Any, channel: dict[str, Any], bodies: list[dict[str, Any]], rate: float,
                 server_ms: list[float]) -> list[tuple[float, int]]:
    """Post ``bodies`` at ``rate`` per second (each on its own task, so slow answers overlap)."""
    tasks = []
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        tasks.append(asyncio.create_task(_post(client, channel, body, server_ms)))
        await asyncio.sleep(max(0.0, (i + 1) / rate - (time.perf_counter() - start)))
    return list(await asyncio.gather(*tasks))


async def _delivered(standins: Any, phones: list[str], expected: int, timeout_s: float) -> tuple[int, float]:
    """Sends to ``phones`` the stand-in accepted once ``expected`` arrived or ``timeout_s`` passed,
    and the seconds waited. Fewer is not an error by itself: a policy may hand a session to a human
    (its later messages wait in the inbox, unanswered by the bot)."""
    wanted = {p.lstrip("+") for p in phones}
    start = time.perf_counter()
    while True:
        got = sum(1 for d in standins.deliveries("whatsapp") if d.recipient in wanted)
        if got >= expected or time.perf_counter() - start > timeout_s:
            return got, round(time.perf_counter() - start, 1)
        await asyncio.sleep(0.2)


async def _answered(standins: Any, phone: str, count: int, timeout_s: float = 120.0) -> float:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if len([d for d in standins.deliveries("whatsapp") if d.recipient == phone.lstrip("+")]) >= count:
            return time.perf_counter()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no answer to {phone} in {timeout_s} s")


async def run(base: str, admin: str, standins: Any, quick: bool, paused: bool = False) -> dict[str, Any]:
    import httpx

    from tests.channel_helpers import SETUPS, new_phone, whatsapp_text

    out: dict[str, Any] = {"quick": quick}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        await wait_healthy(client)
        r = await client.post("/v1/tenants", json={"name": "bench-webhooks"},
                              headers={"Authorization": f"Bearer {admin}"})
        owner = {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
        (await client.post("/v1/kb/qa", headers=owner, json={"question": QUESTION, "answer": ANSWER})
         ).raise_for_status()
        setup = SETUPS["whatsapp"]
        channel = (await client.post("/v1/channels", headers=owner, json={
            "type": "whatsapp", "config": setup["config"], "secrets": setup["secrets"]})).json()

        # Warm-up: the first turn loads the model caches and starts a sender connection.
        warm_phone = new_phone()
        await _post(client, channel, whatsapp_text(warm_phone, QUESTION))
        await _answered(standins, warm_phone, 1)
        if paused:  # messages go to the inbox: no answer work competes for the CPUs
            r = await client.patch("/v1/bot-config", headers=owner, json={"status": "paused"})
            r.raise_for_status()
        out["paused"] = paused

        # Paced: deliveries arriving at a steady rate, their answers made meanwhile.
        rate, paced_n, contacts = (10.0, 30, 5) if quick else (20.0, 100, 10)
        phones = [new_phone() for _ in range(contacts)]
        paced_bodies = [whatsapp_text(phones[i % contacts], f"{QUESTION} ({i})") for i in range(paced_n)]
        server_paced: list[float] = []
        paced = await _paced(client, channel, paced_bodies, rate, server_paced)
        out["paced"] = {"per_s": rate, "deliveries": paced_n, "ack_ms": summary([ms for ms, _ in paced]),
                        "handler_ms": summary(server_paced)}
        errors = sum(1 for _, code in paced if code != 200)
        if not paused:
            got, waited = await _delivered(standins, phones, paced_n, timeout_s=300)
            out["paced"]["answers_sent"], out["paced"]["all_sent_after_s"] = got, waited

        # Burst: all at once (a provider flushing its retry queue), then the same as duplicates.
        n = 50 if quick else 200
        phones = [new_phone() for _ in range(contacts)]
        bodies = [whatsapp_text(phones[i % contacts], f"{QUESTION} ({i})") for i in range(n)]
        server_burst: list[float] = []
        results = await asyncio.gather(*[_post(client, channel, b, server_burst) for b in bodies])
        out["burst"] = {"concurrent_deliveries": n, "ack_ms": summary([ms for ms, _ in results]),
                        "handler_ms": summary(server_burst)}
        errors += sum(1 for _, code in results if code != 200)
        server_dup: list[float] = []
        dups = await asyncio.gather(*[_post(client, channel, b, server_dup) for b in bodies])
        out["burst_duplicates"] = {"ack_ms": summary([ms for ms, _ in dups]),
                                   "handler_ms": summary(server_dup)}
        errors += sum(1 for _, code in dups if code != 200)
        if not paused:
            got, waited = await _delivered(standins, phones, n, timeout_s=600)
            out["burst"]["answers_sent"], out["burst"]["all_sent_after_s"] = got, waited

        cold, warm = [], []
        for _ in range(0 if paused else 3 if quick else 8):
            phone = new_phone()
            t0 = time.perf_counter()
            await _post(client, channel, whatsapp_text(phone, QUESTION))
            cold.append((await _answered(standins, phone, 1) - t0) * 1000)
            t1 = time.perf_counter()
            await _post(client, channel, whatsapp_text(phone, QUESTION + " Really?"))
            warm.append((await _answered(standins, phone, 2) - t1) * 1000)
        out["e2e_cold_ms"] = summary(cold)
        out["e2e_warm_ms"] = summary(warm)
        out["errors"] = errors
    out["targets"] = {"paced_ack_p99_lt_100ms": out["paced"]["ack_ms"]["p99"] < 100,
                      "burst_ack_p99_lt_100ms": out["burst"]["ack_ms"]["p99"] < 100,
                      "no_errors": out["errors"] == 0}
    return out


def main() -> None:
    """Entry point: ``python benchmarks/webhooks.py [--quick]``."""
    from tests.provider_standins import ProviderStandIns

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 50 deliveries, 3 end-to-end runs")
    parser.add_argument("--paused", action="store_true",
                        help="the bot paused: acknowledgements alone, no answers made meanwhile")
    args = parser.parse_args()
    standins = ProviderStandIns().start()
    stack = Stack()
    try:
        base = stack.start(24, extra_env={**standins.env(), "CHAT_ENGINE_OUTBOX_POLL_S": "0.2"})
        result = asyncio.run(run(base, stack.admin, standins, args.quick, args.paused))
    finally:
        stack.stop()
        standins.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
