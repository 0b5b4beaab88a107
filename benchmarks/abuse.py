"""Abuse benchmark: what one client can take before the limits bite, and what open streams cost.

Prints JSON:

- ``sessions``: widget sessions one client IP opens back to back before its first 429 (the
  per-IP budget, CHAT_ENGINE_RATE_LIMIT_IP_PER_MIN), how fast, and the Retry-After it got;
- ``streams_per_session``: event streams one session opens before its 429 (the per-session cap);
- ``open_streams``: N open event streams held at once (spread over sessions, with the per-IP and
  per-session limits raised for this part only, so the figure is memory, not policy): ingress
  and proxy RSS per stream (KiB), ``/livez`` latency p50/p99 while they are open, errors.

Full run: 1,000 streams; ``--quick`` (CI): 100. Loopback only; the stack is started in-process
(benchmarks/_stack.py) on embedded Postgres and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stack import Stack, summary, wait_healthy  # noqa: E402

ORIGIN = "https://abuse.test"


def _serve_rss_kib() -> dict[str, float]:
    import psutil

    out = {"ingress": 0.0, "proxy": 0.0}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        try:
            if "ServeReplica:chat:Ingress" in cmd:
                out["ingress"] += p.memory_info().rss / 1024
            elif "ProxyActor" in cmd:
                out["proxy"] += p.memory_info().rss / 1024
        except psutil.Error:
            continue
    return out


async def _setup(client: Any, admin: str) -> tuple[str, dict[str, str]]:
    r = await client.post("/v1/tenants", json={"name": "abuse"}, headers={"Authorization": f"Bearer {admin}"})
    owner = {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
    r = await client.post("/v1/channels", json={"type": "widget", "allowed_origins": [ORIGIN]}, headers=owner)
    return r.json()["widget_token"], owner


async def _new_session(client: Any, wt: str) -> Any:
    return await client.post("/v1/widget/sessions", json={"widget_token": wt}, headers={"Origin": ORIGIN})


async def sessions_until_limited(client: Any, wt: str, cap: int) -> dict[str, Any]:
    """Open sessions from one client until the first 429 (or ``cap``)."""
    started = time.perf_counter()
    opened, retry_after = 0, None
    for _ in range(cap):
        r = await _new_session(client, wt)
        if r.status_code == 429:
            retry_after = r.headers.get("retry-after")
            break
        opened += 1
    elapsed = time.perf_counter() - started
    return {"opened_before_429": opened, "seconds": round(elapsed, 2),
            "sessions_per_s": round(opened / elapsed, 1) if elapsed else None,
            "retry_after_s": int(retry_after) if retry_after else None}


async def _open_stream(client: Any, session: dict[str, Any]) -> Any:
    req = client.build_request("GET", f"/v1/widget/sessions/{session['session_id']}/events",
                               params={"token": session["session_token"]})
    return await client.send(req, stream=True)


async def streams_until_limited(client: Any, wt: str, cap: int = 50) -> dict[str, Any]:
    """Open event streams on one session until the first 429."""
    session = (await _new_session(client, wt)).json()
    held, status = [], None
    try:
        for _ in range(cap):
            r = await _open_stream(client, session)
            if r.status_code != 200:
                status = r.status_code
                await r.aclose()
                break
            held.append(r)
    finally:
        for r in held:
            await r.aclose()
    return {"opened_before_limit": len(held), "refused_with": status}


async def open_streams(base: str, wt: str, n: int) -> dict[str, Any]:
    """Hold ``n`` streams open over ``n // 4`` sessions; measure RSS per stream and /livez."""
    import httpx

    limits = httpx.Limits(max_connections=n + 50, max_keepalive_connections=n + 50)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        sessions = []
        for _ in range(max(1, n // 4)):
            r = await _new_session(client, wt)
            r.raise_for_status()
            sessions.append(r.json())
        await asyncio.sleep(2)
        before = _serve_rss_kib()
        errors, held = 0, []
        for i in range(n):
            try:
                r = await _open_stream(client, sessions[i % len(sessions)])
                if r.status_code == 200:
                    held.append(r)
                else:
                    errors += 1
                    await r.aclose()
            except httpx.HTTPError:
                errors += 1
        await asyncio.sleep(3)
        after = _serve_rss_kib()
        livez = []
        async with httpx.AsyncClient(base_url=base, timeout=30) as probe:
            for _ in range(200):
                t = time.perf_counter()
                await probe.get("/livez")
                livez.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.01)
        for r in held:
            await r.aclose()
    per = {k: round((after[k] - before[k]) / max(1, len(held)), 1) for k in after}
    return {"streams": n, "held": len(held), "errors": errors,
            "rss_kib_per_stream": per, "rss_mib_after": {k: round(v / 1024, 1) for k, v in after.items()},
            "livez_ms": summary(livez)}


async def run(base: str, admin: str, quick: bool) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await wait_healthy(client)
        wt, _ = await _setup(client, admin)
        out: dict[str, Any] = {"sessions": await sessions_until_limited(client, wt, 1000)}
        out["streams_per_session"] = await streams_until_limited(client, wt)
    return out


def main() -> None:
    """Entry point: ``python benchmarks/abuse.py [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 100 open streams")
    args = parser.parse_args()
    n = 100 if args.quick else 1000
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}
    stack = Stack()
    try:
        base = stack.start(16)
        result.update(asyncio.run(run(base, stack.admin, args.quick)))
    finally:
        stack.stop()
    # The memory part on a stack whose per-IP and per-session limits are out of the way.
    stack = Stack()
    try:
        base = stack.start(16, extra_env={"CHAT_ENGINE_RATE_LIMIT_IP_PER_MIN": "100000",
                                          "CHAT_ENGINE_RATE_LIMIT_WIDGET_TOKEN_PER_MIN": "100000",
                                          "CHAT_ENGINE_MAX_STREAMS_PER_SESSION": "8"})

        async def memory() -> dict[str, Any]:
            import httpx

            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                await wait_healthy(client)
                wt, _ = await _setup(client, stack.admin)
            return await open_streams(base, wt, n)

        result["open_streams"] = asyncio.run(memory())
    finally:
        stack.stop()
    o = result["open_streams"]
    result["targets"] = {"livez_p99_lt_100ms_with_streams_open": o["livez_ms"]["p99"] < 100,
                         "no_errors": o["errors"] == 0,
                         "ip_limit_bites": result["sessions"]["opened_before_429"] < 1000,
                         "stream_cap_bites": result["streams_per_session"]["refused_with"] == 429}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
