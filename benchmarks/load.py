"""Load benchmark: the runtime's own cost under many conversations and many open event streams,
with the model's cost fixed and known.

The Generator's ``hosted`` backend is pointed at ``benchmarks/_hosted_standin.py``, a local
stand-in for a hosted OpenAI-compatible API (a third party this machine cannot reach) that streams
one fixed answer with a set time to first token and token rate and spends almost no CPU. The bot
answers generatively (``answer_strategy: generative``), so every turn takes the model path:
retrieval, the prompt, the Generator deployment, the grounding gate. The Embedder (MiniLM on CPU)
is real and part of the overhead; ``decide_ms`` (from each turn's ``done`` event: the query's
embedding, intents, retrieval) shows how much of it comes before the Generator is called.

The stack (embedded Postgres and Redis, Ray, Serve) runs in this process like ``_stack.py`` starts
it; the load comes from a second process (this file, ``drive`` mode), over loopback only; every
phase is bounded in count and time. Loopback is a trusted proxy, so each simulated visitor has its
own client address (``X-Forwarded-For``), as behind a load balancer.

Phases and what the JSON reports:

- ``serve_floor_ms``: ``GET /livez`` round trips, one at a time: Serve's empty-route floor.
- ``cold_activation_ms``: a new session's first message sent at once, first token at the client
  minus the stand-in's time to the end of the first sentence (``model_first_sentence_ms``: the
  widget shows an answer a sentence at a time, after the grounding check): what a new session's
  actor adds (process, imports, state load) on top of a warm turn's overhead.
- ``conversations[N]`` for N concurrent conversations: each conversation sends a message, reads
  the answer's stream to ``done``, waits ``think_s``, and again. The previous level's conversations
  go on and the new ones arrive at ``--arrivals-per-s`` (a visitor opening the chat and asking at
  once: ``arrival_first_token_overhead_ms``); once all are there (and 10 s more), ``duration_s``
  seconds are measured: ``turns_per_s``, ``overhead_ms`` (the same difference as above, over warm turns),
  ``livez_ms`` while the load runs, ``errors`` (a non-200, an ``error`` event, no ``done``, a
  timeout), and the memory of the session actor processes (USS, a sample of up to 30).
- ``open_streams[N]``: N idle ``GET .../events`` streams (``CHAT_ENGINE_MAX_STREAMS_PER_SESSION``
  per session) held open: seconds to open them, errors, ``livez_ms`` while open, and the memory of
  Serve's proxy and ingress processes per open stream (USS growth / N).

A level whose session actors would not fit in the memory available now (the actor USS measured
at the smaller levels times N, plus 2 GiB) is skipped and says so: this machine is shared.

``--quick`` (CI): 3 cold activations, 10 conversations (arriving at 1 a second) measured for 8 s,
200 open streams; about 2 minutes after the stack is up. Targets (issue 17) are checked in ``targets``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ORIGIN = "https://load.example"
KB_TEXT = """# Shipping

Standard shipping takes 3 to 5 business days.
Express shipping arrives the next business day.
Orders placed before noon leave our warehouse the same day.
"""
# Every sentence of the answer is a sentence of the knowledge base: the grounding gate lets it
# through, so the customer gets the model's text.
ANSWER = "Standard shipping takes 3 to 5 business days. Express shipping arrives the next business day."
QUESTIONS = ["How long does standard shipping take?", "When does express shipping arrive?",
             "How many days does shipping take?"]
TURN_TIMEOUT_S = 60.0
SETTLE_S = 10.0
GIB = 2**30


# ----------------------------------------------------------------------------- shared helpers
def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by nearest rank, rounded to 0.1; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 1)


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p99, max of ``values`` (milliseconds)."""
    return {"n": len(values), "p50": pct(values, 0.5), "p99": pct(values, 0.99),
            "max": round(max(values), 1) if values else None}


def first_sentence_ms(answer: str, ttft_ms: float, tokens_per_s: float) -> float:
    """When the stand-in has sent the token that completes the answer's first sentence (the
    token after its final ``.``, which starts with the space the sentence gate waits for)."""
    from _hosted_standin import tokens_of

    interval = 1000.0 / tokens_per_s if tokens_per_s > 0 else 0.0
    text = ""
    for i, token in enumerate(tokens_of(answer)):
        if text.endswith((".", "!", "?")) and token.startswith(" "):
            return ttft_ms + i * interval
        text += token
    return ttft_ms + (len(tokens_of(answer)) - 1) * interval


def _ip(n: int) -> str:
    """A distinct benchmarking-range client address (198.18.0.0/15) for visitor ``n``."""
    return f"198.{18 + (n // 62500) % 2}.{(n // 250) % 250}.{n % 250 + 1}"


# ----------------------------------------------------------------------------- the load generator
class Driver:
    """The load generator (its own process): talks to the app at ``base`` only."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import httpx

        self.cfg = cfg
        self.base = cfg["base"]
        self.model_ms = cfg["model_first_sentence_ms"]
        self.visitors = 0
        self.pool: list[dict[str, Any]] = []  # conversations that go on from level to level
        self.client = httpx.AsyncClient(
            base_url=self.base, timeout=TURN_TIMEOUT_S,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=2000))

    async def session(self) -> dict[str, Any]:
        """A new widget session of its own visitor (client address)."""
        self.visitors += 1
        ip = _ip(self.visitors)
        r = await self.client.post("/v1/widget/sessions", json={"widget_token": self.cfg["widget_token"]},
                                   headers={"Origin": ORIGIN, "X-Forwarded-For": ip})
        r.raise_for_status()
        return dict(r.json()) | {"ip": ip}

    async def turn(self, s: dict[str, Any], text: str) -> dict[str, Any]:
        """One message and its answer's stream: ``first_ms`` (first token at the client, from
        the send), ``done`` (its data), ``error`` (None when the turn ended with ``done``)."""
        import uuid

        t0 = time.perf_counter()
        out: dict[str, Any] = {"first_ms": None, "done": None, "error": None, "tokens": 0}
        try:
            async with asyncio.timeout(TURN_TIMEOUT_S), self.client.stream(
                "POST", f"/v1/widget/sessions/{s['session_id']}/messages",
                headers={"Authorization": f"Bearer {s['session_token']}", "X-Forwarded-For": s["ip"]},
                json={"text": text, "client_msg_id": uuid.uuid4().hex},
            ) as r:
                if r.status_code != 200:
                    out["error"] = f"HTTP {r.status_code}: {(await r.aread())[:160]!r}"
                    return out
                event = ""
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                        if event == "token":
                            out["tokens"] += 1
                            if out["first_ms"] is None:
                                out["first_ms"] = (time.perf_counter() - t0) * 1000
                    elif line.startswith("data:") and event in ("done", "error", "aborted"):
                        data = json.loads(line[5:])
                        if event == "done":
                            out["done"] = data
                        else:
                            out["error"] = f"{event}: {str(data)[:160]}"
                        break
                if out["done"] is None and out["error"] is None:
                    out["error"] = "stream ended without done"
                elif out["done"] is not None and out["first_ms"] is None:
                    out["error"] = "answered without a token (not the model path)"
        except Exception as exc:  # noqa: BLE001 - counted and reported
            out["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        return out

    async def livez(self, n: int, every_s: float = 0.0) -> list[float]:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            try:
                r = await self.client.get("/livez", timeout=10)
                ok = r.status_code == 200
            except Exception:  # noqa: BLE001 - a failed probe counts as 10 s
                ok = False
            samples.append((time.perf_counter() - t) * 1000 if ok else 10_000.0)
            if every_s:
                await asyncio.sleep(every_s)
        return samples

    # ------------------------------------------------------------------ phases
    async def cold(self, n: int) -> dict[str, Any]:
        overheads, totals, errors = [], [], []
        for i in range(n):
            s = await self.session()
            res = await self.turn(s, QUESTIONS[i % len(QUESTIONS)])
            if res["error"]:
                errors.append(res["error"])
            elif res["first_ms"] is not None:
                totals.append(res["first_ms"])
                overheads.append(res["first_ms"] - self.model_ms)
            await asyncio.sleep(self.cfg.get("cold_gap_s", 1.0))
        return {"cold_activation_ms": summary(overheads), "cold_first_token_ms": summary(totals),
                "errors": len(errors), "error_samples": errors[:3]}

    async def conversations(self, n: int, duration_s: float, think_s: float,
                            arrivals_per_s: float) -> dict[str, Any]:
        """``n`` conversations at once: the previous level's go on, the new ones arrive at
        ``arrivals_per_s`` (their first turn starts their actor: ``arrival_first_token_overhead_ms``);
        once all are there, ``duration_s`` seconds are measured."""
        pool = self.pool
        start_errors: list[str] = []
        arrivals: list[float] = []
        samples: list[float] = []
        decide: list[float] = []
        errors: list[str] = []
        turns = 0
        measure_from = float("inf")
        stop = asyncio.Event()

        async def converse(k: int, s: dict[str, Any]) -> None:
            nonlocal turns
            await asyncio.sleep((k % 20) * think_s / 20)  # not all in step
            i = k
            while not stop.is_set():
                i += 1
                started = time.monotonic()
                res = await self.turn(s, QUESTIONS[i % len(QUESTIONS)])
                if started >= measure_from:
                    turns += 1
                    if res["error"]:
                        errors.append(res["error"])
                    elif res["first_ms"] is not None:
                        samples.append(res["first_ms"] - self.model_ms)
                        timing = (res["done"] or {}).get("timing", {})
                        if "decide_ms" in timing:
                            decide.append(timing["decide_ms"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), think_s)

        loops = [asyncio.create_task(converse(k, s)) for k, s in enumerate(pool)]

        async def arrive(k: int) -> None:
            try:
                s = await self.session()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                start_errors.append(f"session: {type(exc).__name__}")
                return
            res = await self.turn(s, QUESTIONS[k % len(QUESTIONS)])  # starts its actor
            if res["error"]:
                start_errors.append(res["error"])
                return
            arrivals.append(res["first_ms"] - self.model_ms)
            pool.append(s)
            loops.append(asyncio.create_task(converse(k, s)))

        t_ramp = time.perf_counter()
        new = []
        for k in range(len(pool), n):
            new.append(asyncio.create_task(arrive(k)))
            await asyncio.sleep(1.0 / arrivals_per_s)
        await asyncio.gather(*new)
        ramp_s = time.perf_counter() - t_ramp
        await asyncio.sleep(SETTLE_S)  # the last arrivals' process starts are done
        measure_from = time.monotonic()
        probe = asyncio.create_task(self.livez(int(duration_s * 5), every_s=0.2))
        await asyncio.sleep(duration_s)
        elapsed = time.monotonic() - measure_from
        stop.set()
        await asyncio.gather(*loops)
        livez = await probe
        mem = actor_memory()
        return {
            "conversations": len(pool), "arrivals_per_s": arrivals_per_s, "ramp_s": round(ramp_s, 1),
            "arrival_first_token_overhead_ms": summary(arrivals),
            "start_errors": len(start_errors), "start_error_samples": start_errors[:3],
            "turns": turns, "turns_per_s": round(turns / elapsed, 2), "think_s": think_s,
            "overhead_ms": summary(samples), "decide_ms": summary(decide),
            "livez_ms": summary(livez), "errors": len(errors), "error_samples": errors[:3],
            "session_actors": mem,
        }

    async def open_streams(self, n: int, per_session: int) -> dict[str, Any]:
        from urllib.parse import urlsplit

        parts = urlsplit(self.base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sessions: list[dict[str, Any]] = []
        sem = asyncio.Semaphore(16)

        async def make() -> None:
            async with sem:
                with contextlib.suppress(Exception):
                    sessions.append(await self.session())

        await asyncio.gather(*[make() for _ in range(-(-n // per_session))])
        await asyncio.sleep(3)
        before = serve_memory()
        livez_idle = await self.livez(100)
        errors: list[str] = []
        writers: list[asyncio.StreamWriter] = []
        readers: list[asyncio.Task[None]] = []
        open_sem = asyncio.Semaphore(64)

        ended: list[str] = []

        async def drain(reader: asyncio.StreamReader) -> None:
            tail = b""
            try:
                while chunk := await reader.read(4096):
                    tail = (tail + chunk)[-200:]
                ended.append(f"closed by the server after {tail!r}")
            except Exception as exc:  # noqa: BLE001 - reported
                ended.append(f"{type(exc).__name__} after {tail!r}")

        async def open_one(i: int) -> None:
            s = sessions[i // per_session]
            async with open_sem:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                    writer.write(
                        f"GET /v1/widget/sessions/{s['session_id']}/events HTTP/1.1\r\n"
                        f"Host: {host}:{port}\r\nAuthorization: Bearer {s['session_token']}\r\n"
                        f"X-Forwarded-For: {s['ip']}\r\nAccept: text/event-stream\r\n\r\n".encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                    return
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                if " 200 " not in status + " ":
                    errors.append(status[:120])
                    writer.close()
                    return
                writers.append(writer)
                readers.append(asyncio.create_task(drain(reader)))

        t0 = time.perf_counter()
        await asyncio.gather(*[open_one(i) for i in range(min(n, len(sessions) * per_session))])
        open_s = time.perf_counter() - t0
        await asyncio.sleep(5)
        after = serve_memory()
        livez_open = await self.livez(300, every_s=0.02)
        n_open = sum(1 for r in readers if not r.done())
        for w in writers:
            w.transport.abort()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        grown_mb = sum(after.values()) - sum(before.values())
        return {
            "requested": n, "sessions": len(sessions), "opened": len(writers), "open_at_end": n_open,
            "ended_early": len(ended), "ended_samples": ended[:3],
            "errors": len(errors), "error_samples": errors[:3], "seconds_to_open": round(open_s, 1),
            "serve_uss_mb_before": before, "serve_uss_mb_after": after,
            "serve_kb_per_stream": round(grown_mb * 1024 / len(writers), 1) if writers else None,
            "livez_ms_idle": summary(livez_idle), "livez_ms_while_open": summary(livez_open),
        }


def _procs(match: str) -> list[Any]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if match in " ".join(p.info["cmdline"] or []):
                out.append(p)
    return out


def actor_memory(sample: int = 30) -> dict[str, Any]:
    """Live session actor processes and the USS/RSS (MiB) of up to ``sample`` of them."""
    import psutil

    procs = _procs("ray::SessionActor")
    uss, rss = [], []
    for p in procs[:sample]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            uss.append(info.uss / 2**20)
            rss.append(info.rss / 2**20)
    return {"processes": len(procs), "uss_mb": summary(uss), "rss_mb": summary(rss)}


def serve_memory() -> dict[str, float]:
    """USS (MiB) of Serve's HTTP proxy and the ingress replicas."""
    import psutil

    out: dict[str, float] = {}
    for key, match in (("proxy", "ProxyActor"), ("ingress", "ServeReplica:chat:Ingress")):
        for p in _procs(match):
            with contextlib.suppress(psutil.Error):
                out[key] = round(out.get(key, 0.0) + p.memory_full_info().uss / 2**20, 1)
    return out


async def drive(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every phase of ``cfg`` in order; one JSON-able dict."""
    import psutil

    d = Driver(cfg)
    out: dict[str, Any] = {}
    try:
        floor = await d.livez(cfg["floor_samples"])
        out["serve_floor_ms"] = summary(floor)
        warm = await d.session()
        for q in QUESTIONS:  # the first turns load caches; not measured
            await d.turn(warm, q)
        out["cold"] = await d.cold(cfg["cold"])
        out["conversations"] = {}
        per_actor_mb = 120.0
        for n in cfg["levels"]:
            need = (n - len(d.pool)) * per_actor_mb * 2**20 + 2 * GIB
            avail = psutil.virtual_memory().available
            if need > avail:
                out["conversations"][str(n)] = {"skipped": f"{n} session actors at ~{per_actor_mb:.0f} MiB "
                                                f"need {need / GIB:.1f} GiB; {avail / GIB:.1f} GiB available"}
                continue
            res = await d.conversations(n, cfg["duration_s"], cfg["think_s"], cfg["arrivals_per_s"])
            out["conversations"][str(n)] = res
            p50 = res["session_actors"]["uss_mb"]["p50"]
            if p50:
                per_actor_mb = max(per_actor_mb * 0.5, float(p50) * 1.1)
        out["open_streams"] = {}
        for n in cfg["streams"]:
            out["open_streams"][str(n)] = await d.open_streams(n, cfg["streams_per_session"])
    finally:
        await d.client.aclose()
    return out


# ----------------------------------------------------------------------------- the stack side
def start_standin(ttft_ms: float, tokens_per_s: float) -> tuple[subprocess.Popen[str], int]:
    """The hosted-API stand-in as its own process; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_hosted_standin.py")), "--port", "0",
         "--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s), "--answer", ANSWER],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"the hosted stand-in did not start: {line!r}")
    return proc, int(line.split()[1])


async def prepare_tenant(base: str, admin: str) -> dict[str, Any]:
    """A tenant answering generatively from the shipping text, and its widget channel."""
    import httpx
    from _stack import wait_healthy

    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await wait_healthy(client)
        r = await client.post("/v1/tenants", json={"name": "load"},
                              headers={"Authorization": f"Bearer {admin}"})
        r.raise_for_status()
        owner = {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
        job = (await client.post("/v1/kb/ingest", headers=owner,
                                 json={"text": KB_TEXT, "name": "shipping"})).json()
        while job["status"] not in ("completed", "failed"):
            await asyncio.sleep(0.3)
            job = (await client.get(f"/v1/kb/jobs/{job['id']}", headers=owner)).json()
        assert job["status"] == "completed", job
        r = await client.patch("/v1/bot-config", headers=owner, json={"answer_strategy": "generative"})
        r.raise_for_status()
        channel = (await client.post("/v1/channels", headers=owner, json={
            "type": "widget", "allowed_origins": [ORIGIN]})).json()
        return {"widget_token": channel["widget_token"]}


def check_targets(out: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's targets for this machine, each True/False/None (not measured)."""
    floor = out["serve_floor_ms"]["p50"]
    conv = out["conversations"]

    def at(n: str, key: str) -> Any:
        return (conv.get(n) or {}).get("overhead_ms", {}).get(key)

    def streams_ok(n: str) -> Any:
        s = out["open_streams"].get(n)
        if not s:
            return None
        return s["errors"] == 0 and (s["livez_ms_while_open"]["p99"] or 1e9) < 100
    errors = sum((c.get("errors", 0) + c.get("start_errors", 0)) for c in conv.values()) + \
        sum(s.get("errors", 0) for s in out["open_streams"].values()) + out["cold"]["errors"]
    cold_p50 = out["cold"]["cold_activation_ms"]["p50"]
    return {
        "overhead_p50_le_2x_floor_at_10": None if at("10", "p50") is None else at("10", "p50") <= 2 * floor,
        "overhead_p99_lt_60ms_at_10": None if at("10", "p99") is None else at("10", "p99") < 60,
        "overhead_p99_lt_250ms_at_200": None if at("200", "p99") is None else at("200", "p99") < 250,
        "cold_activation_p50_lt_1s": None if cold_p50 is None else cold_p50 < 1000,
        "cold_activation_p50_lt_200ms_moonshot": None if cold_p50 is None else cold_p50 < 200,
        "open_streams_10000_livez_p99_lt_100ms": streams_ok("10000"),
        "zero_errors": errors == 0,
    }


def main() -> None:
    """``python benchmarks/load.py [--quick]`` (or ``drive CONFIG_JSON``, the load generator)."""
    if len(sys.argv) > 2 and sys.argv[1] == "drive":
        print(json.dumps(asyncio.run(drive(json.loads(sys.argv[2])))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode (see the module doc)")
    parser.add_argument("--levels", default=None, help="concurrent conversations, e.g. 10,50,200,500")
    parser.add_argument("--streams", default=None, help="open idle streams, e.g. 1000,10000")
    parser.add_argument("--duration-s", type=float, default=None, help="seconds of load per level")
    parser.add_argument("--think-s", type=float, default=3.0, help="a customer's pause between turns")
    parser.add_argument("--cold", type=int, default=None, help="cold activations measured")
    parser.add_argument("--arrivals-per-s", type=float, default=None,
                        help="new conversations a second while a level ramps up (default 0.3; --quick 1)")
    parser.add_argument("--ingress-replicas", type=int, default=2, help="ingress replicas")
    parser.add_argument("--idle-minutes", type=float, default=1.0,
                        help="passivation: an idle conversation's actor exits after this long")
    parser.add_argument("--ttft-ms", type=float, default=300.0, help="the stand-in's time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="the stand-in's token rate")
    args = parser.parse_args()
    import psutil

    default_levels, default_streams = ("10", "200") if args.quick else ("10,50,200,500", "1000,10000")
    levels = [int(x) for x in (default_levels if args.levels is None else args.levels).split(",") if x]
    streams = [int(x) for x in (default_streams if args.streams is None else args.streams).split(",") if x]
    streams_per_session = 5
    standin, port = start_standin(args.ttft_ms, args.tokens_per_s)
    from _stack import Stack

    max_streams = max(streams + [1000])
    env = {
        "CHAT_ENGINE_GENERATOR_BACKENDS": '["hosted"]',
        "CHAT_ENGINE_HOSTED_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "CHAT_ENGINE_HOSTED_MODEL": "standin",
        # A hosted API takes many requests at once; the stand-in's own queue is none.
        "CHAT_ENGINE_HOSTED_MAX_CONCURRENCY": "1024",
        # One process stands for many visitors, each with its own client address.
        "CHAT_ENGINE_TRUSTED_PROXIES": '["127.0.0.0/8"]',
        "CHAT_ENGINE_RATE_LIMIT_WIDGET_TOKEN_PER_MIN": "1000000",
        "CHAT_ENGINE_MAX_STREAMS_PER_SESSION": str(streams_per_session),
        # Passivation on, in minutes rather than the default 10, so that the idle conversations of
        # earlier phases have left their processes by the next.
        "CHAT_ENGINE_IDLE_MINUTES": str(args.idle_minutes),
        # Each replica holds its share of the open streams and the turns besides.
        "CHAT_ENGINE_INGRESS_REPLICAS": str(args.ingress_replicas),
        "CHAT_ENGINE_INGRESS_MAX_ONGOING_REQUESTS": str(-(-max_streams // args.ingress_replicas) + 2000),
    }
    stack = Stack()
    t0 = time.perf_counter()
    try:
        base = stack.start(max_tokens=64, extra_env=env, models=True)
        tenant = asyncio.run(prepare_tenant(base, stack.admin))
        model_ms = first_sentence_ms(ANSWER, args.ttft_ms, args.tokens_per_s)
        cfg = {
            "base": base, "widget_token": tenant["widget_token"], "model_first_sentence_ms": model_ms,
            "floor_samples": 100 if args.quick else 300, "cold": args.cold or (3 if args.quick else 20),
            "levels": levels, "duration_s": args.duration_s or (8.0 if args.quick else 30.0),
            "think_s": args.think_s, "streams": streams, "streams_per_session": streams_per_session,
            "arrivals_per_s": args.arrivals_per_s or (1.0 if args.quick else 0.3),
        }
        stack_s = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, __file__, "drive", json.dumps(cfg)], capture_output=True,
                              text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{proc.stderr[-3000:]}")
        out: dict[str, Any] = {
            "quick": args.quick, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPU cores, {round(psutil.virtual_memory().total / GIB)} GiB",
            "standin": {"ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s,
                        "model_first_sentence_ms": model_ms},
            "stack_start_s": round(stack_s, 1),
            "load": {**{k: cfg[k] for k in ("levels", "duration_s", "think_s", "arrivals_per_s",
                                          "streams", "streams_per_session")},
                     "ingress_replicas": args.ingress_replicas, "idle_minutes": args.idle_minutes},
            **json.loads(proc.stdout.strip().splitlines()[-1]),
        }
        out["targets"] = check_targets(out)
    finally:
        stack.stop()
        standin.terminate()
        standin.wait(10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
