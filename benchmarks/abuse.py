"""Abuse benchmark: what one client can open before the limits bite, and what open event streams
cost the ingress (issue 16).

Starts the stack like the tests do (embedded Postgres + Redis, Ray, Serve with the Embedder and
the llama.cpp Generator: a session actor needs their handles, though nothing here asks for an
answer). Loopback is made a trusted proxy
(``CHAT_ENGINE_TRUSTED_PROXIES``) so that this one process can stand for many clients, each
named by its ``X-Forwarded-For``, the way a load balancer in front of the service would. Then:

- sessions: one client IP creates widget sessions, 8 at a time, until the first 429 (the per-IP
  budget, CHAT_ENGINE_RATE_LIMIT_IP_PER_MIN): how many it got, how fast, the Retry-After, and
  how many session actors were started ahead of a first message (the warm budget,
  CHAT_ENGINE_WARM_SESSIONS_PER_NODE) against the sessions created;
- forged origins: one client IP sends session requests with a valid widget token from an origin
  the channel does not allow, until 429 (the failure budget, CHAT_ENGINE_RATE_LIMIT_FAILURES_PER_MIN);
  then a real visitor from the allowed origin (another IP) still gets a session;
- streams per session: one session opens event streams until 429 (CHAT_ENGINE_MAX_STREAMS_PER_SESSION);
- open streams: 1,000 (``--quick`` 200) event streams held open over sessions of distinct
  client IPs; the RSS of Serve's proxy and ingress replica processes before and after (per open
  stream), and ``GET /livez`` p50/p99 while they are open.

Prints one JSON object. Loopback only; everything is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from _stack import Stack, summary, wait_healthy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ORIGIN = "https://shop.example"
FORGED = "https://evil.example"
PHASE_LIMIT_S = 120.0  # no phase runs longer than this


def _ip(n: int) -> str:
    """A distinct documentation-range client address (198.18.0.0/15, benchmarking) for ``n``."""
    return f"198.18.{(n // 250) % 250}.{n % 250 + 1}"


def _serve_rss_mb() -> dict[str, float]:
    """RSS (MiB) of Serve's HTTP proxy and ingress replica processes on this machine."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            if "ProxyActor" in title or "ServeReplica:chat:Ingress" in title:
                key = "proxy" if "ProxyActor" in title else "ingress"
                out[key] = out.get(key, 0.0) + proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


async def _create(client: Any, token: str, ip: str, origin: str = ORIGIN) -> Any:
    return await client.post("/v1/widget/sessions", json={"widget_token": token},
                             headers={"Origin": origin, "X-Forwarded-For": ip})


async def _until_429(send: Any, concurrency: int, cap: int) -> dict[str, Any]:
    """Call ``send()`` (-> response) ``concurrency`` at a time until one is a 429, ``cap`` calls,
    or :data:`PHASE_LIMIT_S`. Returns counts by status, the calls before the first 429, the
    seconds that took, and that 429's Retry-After."""
    statuses: dict[int, int] = {}
    first: dict[str, Any] = {}
    started = time.perf_counter()
    sent = 0
    while sent < cap and not first and time.perf_counter() - started < PHASE_LIMIT_S:
        batch = await asyncio.gather(*[send() for _ in range(min(concurrency, cap - sent))])
        for r in batch:
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 429 and not first:
                first = {"retry_after_s": int(r.headers.get("retry-after", "0")),
                         "message": r.json()["error"]["message"]}
        sent += len(batch)
    return {"statuses": statuses, "ok_before_limit": statuses.get(200, 0),
            "seconds_to_limit": round(time.perf_counter() - started, 2), "limited": first or None}


async def _session_actors(tenant_id: str) -> int:
    import ray

    names = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
    return sum(1 for a in names if a["name"].startswith(f"session:{tenant_id}:"))


async def _open_stream(client: Any, session: dict[str, Any], opened: asyncio.Event,
                       stop: asyncio.Event, errors: list[str]) -> None:
    url = f"/v1/widget/sessions/{session['session_id']}/events"
    try:
        async with client.stream("GET", url, headers={
                "Authorization": f"Bearer {session['session_token']}",
                "X-Forwarded-For": session["ip"]}) as r:
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                return
            opened.set()
            await stop.wait()
    except Exception as exc:  # noqa: BLE001 - counted and reported
        errors.append(type(exc).__name__)
    finally:
        opened.set()


async def run(base: str, admin: str, quick: bool, n_streams: int) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {"quick": quick}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        await wait_healthy(client)
        r = await client.post("/v1/tenants", json={"name": "abuse"},
                              headers={"Authorization": f"Bearer {admin}"})
        tenant_id, owner = r.json()["tenant_id"], {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
        channel = (await client.post("/v1/channels", headers=owner, json={
            "type": "widget", "allowed_origins": [ORIGIN]})).json()
        token = channel["widget_token"]
        from runtime.config import get_settings

        settings = get_settings()
        out["settings"] = {k: getattr(settings, k) for k in (
            "rate_limit_ip_per_min", "rate_limit_widget_token_per_min", "rate_limit_failures_per_min",
            "max_streams_per_session", "max_streams_per_tenant", "warm_sessions_per_node")}

        # 1. Sessions from one client IP.
        sessions = await _until_429(lambda: _create(client, token, _ip(0)), 8, 2000)
        elapsed = sessions["seconds_to_limit"] or 1e-9
        sessions["sessions_per_s"] = round(sessions["ok_before_limit"] / elapsed, 1)
        await asyncio.sleep(3)  # warms run in the background
        sessions["session_actors_started"] = await _session_actors(tenant_id)
        out["sessions_one_ip"] = sessions

        # 2. Forged origins from one IP, then a real visitor.
        forged = await _until_429(lambda: _create(client, token, _ip(1), FORGED), 8, 2000)
        real = await _create(client, token, _ip(2))
        forged["real_visitor_after_forgery_status"] = real.status_code
        out["forged_origin_one_ip"] = forged

        # 3. Streams of one session.
        one = real.json() | {"ip": _ip(2)}
        held: list[Any] = []

        async def open_one() -> Any:
            req = client.build_request("GET", f"/v1/widget/sessions/{one['session_id']}/events",
                                       headers={"Authorization": f"Bearer {one['session_token']}",
                                                "X-Forwarded-For": one["ip"]})
            resp = await client.send(req, stream=True)
            if resp.status_code == 200:
                held.append(resp)
            else:
                await resp.aread()
            return resp

        per_session = await _until_429(open_one, 1, 50)
        for resp in held:
            await resp.aclose()
        out["streams_one_session"] = per_session

        # 4. Many open streams, over sessions of distinct client IPs.
        per = settings.max_streams_per_session
        need = -(-n_streams // per)
        pool: list[dict[str, Any]] = []
        for i in range(need):
            ip = _ip(10 + i)
            r = await _create(client, token, ip)
            if r.status_code != 200:
                out["open_streams_setup_error"] = f"session {i}: {r.status_code} {r.text[:200]}"
                break
            pool.append(r.json() | {"ip": ip})
        await asyncio.sleep(5)  # let warmed actors and the first streams settle
        livez_before = await _livez(client, 100 if quick else 300)
        rss_before = _serve_rss_mb()
        stop, errors, tasks = asyncio.Event(), [], []
        t_open = time.perf_counter()
        for i in range(min(n_streams, len(pool) * per)):
            opened = asyncio.Event()
            tasks.append(asyncio.create_task(_open_stream(client, pool[i // per], opened, stop, errors)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), 30)
        open_s = time.perf_counter() - t_open
        await asyncio.sleep(2)
        rss_after = _serve_rss_mb()
        livez_open = await _livez(client, 100 if quick else 300)
        n_open = len(tasks) - len(errors)
        stop.set()
        await asyncio.gather(*tasks)
        grown = sum(rss_after.values()) - sum(rss_before.values())
        out["open_streams"] = {
            "requested": n_streams, "open": n_open, "errors": len(errors), "error_samples": errors[:5],
            "seconds_to_open": round(open_s, 2),
            "serve_rss_mb_before": {k: round(v, 1) for k, v in rss_before.items()},
            "serve_rss_mb_after": {k: round(v, 1) for k, v in rss_after.items()},
            "serve_rss_kb_per_stream": round(grown * 1024 / n_open, 1) if n_open else None,
            "livez_ms_idle": livez_before, "livez_ms_while_open": livez_open,
        }
        out["session_actors_at_end"] = await _session_actors(tenant_id)

    s1, forged, streams = out["sessions_one_ip"], out["forged_origin_one_ip"], out["streams_one_session"]
    out["checks"] = {
        "one_ip_is_limited": s1["limited"] is not None
        and s1["ok_before_limit"] <= settings.rate_limit_ip_per_min,
        "warm_budget_bounds_actors": s1["session_actors_started"] <= settings.warm_sessions_per_node,
        "forged_origins_are_limited": forged["limited"] is not None,
        "real_visitor_unaffected_by_forgery": forged["real_visitor_after_forgery_status"] == 200,
        "streams_per_session_capped": streams["ok_before_limit"] == settings.max_streams_per_session,
        "all_streams_opened": out["open_streams"]["open"] == n_streams,
        "livez_p99_lt_100ms_while_open": out["open_streams"]["livez_ms_while_open"]["p99"] < 100,
    }
    return out


async def _livez(client: Any, n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await client.get("/livez")
        samples.append((time.perf_counter() - t) * 1000)
    return summary(samples)


def main() -> None:
    """Entry point: ``python benchmarks/abuse.py [--quick] [--streams N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 200 streams, a smaller warm budget")
    parser.add_argument("--streams", type=int, default=None, help="open event streams (default 1000)")
    args = parser.parse_args()
    n_streams = args.streams or (200 if args.quick else 1000)
    env = {"CHAT_ENGINE_TRUSTED_PROXIES": '["127.0.0.0/8", "::1/128"]'}
    if args.quick:  # a 2-core CI machine: fewer processes started ahead of a message
        env["CHAT_ENGINE_WARM_SESSIONS_PER_NODE"] = "4"
    stack = Stack()
    try:
        base = stack.start(24, extra_env=env, models=True)
        result = asyncio.run(run(base, stack.admin, args.quick, n_streams))
    finally:
        stack.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
