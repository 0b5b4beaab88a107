"""Turn benchmark: the session runtime's own cost on top of the models, and the customer's wait.

Starts the whole stack like the tests do (embedded Postgres + Redis in a temp dir, Ray with 8
logical CPUs, the app with the Embedder and the llama.cpp Generator), ingests the fixture billing
PDF, then measures through the widget API:

- serve_floor_ms: an empty route's round trip (``GET /livez``), p50/p99;
- cold_activation_ms: first message of a new session -> its first ``token`` event, minus the
  model's own time to first token (the actor's creation, state load, policy, retrieval);
- overhead_ms at 1, 10 and 50 concurrent sessions: first ``token`` time at the client minus the
  Generator's time to first token and the query-embedding time (both reported by the turn's
  ``done`` event): what the runtime adds (HTTP, actor hop, Postgres, Redis, SSE);
- actor_uss_mb: memory per session actor (USS of the actor processes);
- customer_ttft_ms: the customer's time to first token on fixture questions, CPU default.

Prints one JSON object. ``--quick`` (CI) uses fewer sessions and turns.
Targets (issue 5): overhead p50 <= 2x the Serve floor and p99 < 60 ms at 10 sessions; cold
activation < 1 s; customer first token p50 < 1.5 s (stretch 1.0 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _stack import Stack, summary, wait_healthy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures"
ORIGIN = "https://bench.example"
QUESTIONS = [
    "is there a free trial?",
    "How do I cancel my subscription?",
    "Do you offer a nonprofit discount?",
    "How do I download an invoice?",
    "Can I change my plan later?",
]


async def _sse_turn(client: Any, session: dict[str, Any], text: str) -> dict[str, Any]:
    """Send one message; returns first-token time (ms from send) and the done event's timing."""
    t0 = time.perf_counter()
    first: float | None = None
    timing: dict[str, Any] = {}
    kinds: list[str] = []
    async with client.stream(
        "POST", f"/v1/widget/sessions/{session['session_id']}/messages",
        headers={"Authorization": f"Bearer {session['session_token']}"},
        json={"text": text, "client_msg_id": uuid.uuid4().hex},
    ) as r:
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                kinds.append(event)
                if event == "token" and first is None:
                    first = (time.perf_counter() - t0) * 1000
            elif line.startswith("data:") and event == "done":
                timing = json.loads(line[5:]).get("timing", {})
            elif line == "" and event in ("done", "aborted", "error"):
                break
    return {"first_token_ms": first, "timing": timing, "kinds": kinds}


async def _session(client: Any, widget_token: str) -> dict[str, Any]:
    r = await client.post("/v1/widget/sessions", json={"widget_token": widget_token},
                          headers={"Origin": ORIGIN})
    r.raise_for_status()
    return dict(r.json())


async def run(base: str, admin: str, quick: bool) -> dict[str, Any]:
    import httpx
    import psutil

    out: dict[str, Any] = {"quick": quick}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await wait_healthy(client)
        r = await client.post("/v1/tenants", json={"name": "bench"},
                              headers={"Authorization": f"Bearer {admin}"})
        owner = {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
        tenant_id = r.json()["tenant_id"]
        pdf = (FIXTURES / "kb-pdf" / "billing-guide.pdf").read_bytes()
        job = (await client.post("/v1/kb/ingest", headers=owner,
                                 files={"pdf": ("billing-guide.pdf", pdf, "application/pdf")})).json()
        while job["status"] not in ("completed", "failed"):
            await asyncio.sleep(0.5)
            job = (await client.get(f"/v1/kb/jobs/{job['id']}", headers=owner)).json()
        channel = (await client.post("/v1/channels", headers=owner, json={
            "type": "widget", "allowed_origins": [ORIGIN]})).json()
        wt = channel["widget_token"]

        # Serve floor: an empty route's round trip.
        floor = []
        for _ in range(50 if quick else 300):
            t = time.perf_counter()
            await client.get("/livez")
            floor.append((time.perf_counter() - t) * 1000)
        out["serve_floor_ms"] = summary(floor)

        # Warm-up: the first generation loads the model's caches.
        warm = await _session(client, wt)
        await _sse_turn(client, warm, QUESTIONS[0])

        # Cold activation: a new session's first message (a new actor) to its first token,
        # minus the model's own time to first token.
        cold, cold_total = [], []
        for i in range(3 if quick else 10):
            s = await _session(client, wt)
            res = await _sse_turn(client, s, QUESTIONS[i % len(QUESTIONS)])
            if res["first_token_ms"] is not None and res["timing"]:
                cold_total.append(res["first_token_ms"])
                cold.append(res["first_token_ms"] - res["timing"].get("model_ttft_ms", 0))
        out["cold_activation_ms"] = summary(cold)
        out["cold_first_token_ms"] = summary(cold_total)

        # Warm turn overhead at 1, 10, 50 concurrent sessions.
        levels = [1, 10] if quick else [1, 10, 50]
        turns_per_session = 2 if quick else 4
        overhead: dict[str, Any] = {}
        customer_ttft: list[float] = []
        sessions_all: list[dict[str, Any]] = []
        for n in levels:
            sessions = [await _session(client, wt) for _ in range(n)]
            sessions_all += sessions
            await asyncio.gather(*[_sse_turn(client, s, "hello, is there a free trial?")
                                   for s in sessions])  # activate
            samples: list[float] = []

            async def drive(s: dict[str, Any], samples: list[float] = samples, n: int = n) -> None:
                for t in range(turns_per_session):
                    res = await _sse_turn(client, s, QUESTIONS[t % len(QUESTIONS)])
                    tm = res["timing"]
                    if res["first_token_ms"] is None or not tm:
                        continue
                    samples.append(res["first_token_ms"] - tm.get("model_ttft_ms", 0)
                                   - tm.get("embed_ms", 0))
                    if n == 1:
                        customer_ttft.append(res["first_token_ms"])

            await asyncio.gather(*[drive(s) for s in sessions])
            overhead[str(n)] = summary(samples)
        out["overhead_ms"] = overhead
        out["customer_ttft_ms"] = summary(customer_ttft)

        # Memory per session actor (USS), over the live actors of this run.
        import ray

        pids = set()
        for s in sessions_all[:30]:
            actor = ray.get_actor(f"session:{tenant_id}:{s['session_id']}", namespace="chat")
            pids.add((await actor.status.remote())["pid"])
        uss = []
        for pid in list(pids)[:30]:
            try:
                uss.append(psutil.Process(pid).memory_full_info().uss / 2**20)
            except psutil.Error:
                continue
        out["actor_uss_mb"] = summary(uss)
        out["session_actors_alive"] = len(pids)

    floor_p50 = out["serve_floor_ms"]["p50"]
    o10 = out["overhead_ms"]["10"]
    out["targets"] = {
        "overhead_p50_le_2x_floor_at_10": o10["p50"] <= 2 * floor_p50,
        "overhead_p99_lt_60ms_at_10": o10["p99"] < 60,
        "cold_activation_lt_1s": out["cold_activation_ms"]["p50"] < 1000,
        "customer_ttft_p50_lt_1500ms": out["customer_ttft_ms"]["p50"] < 1500,
        "customer_ttft_p50_lt_1000ms_stretch": out["customer_ttft_ms"]["p50"] < 1000,
    }
    return out


def main() -> None:
    """Entry point: ``python benchmarks/turn.py [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: fewer sessions and turns")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per answer")
    args = parser.parse_args()
    stack = Stack()
    try:
        base = stack.start(args.max_tokens)
        result = asyncio.run(run(base, stack.admin, args.quick))
    finally:
        stack.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
