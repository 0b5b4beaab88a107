"""Multi-node on Ray itself: a head and two worker nodes on loopback (ray.cluster_utils.Cluster),
session actors spread over the worker nodes by their resource, and a worker node removed in the
middle of conversations.

A Ray driver can join one cluster per process and the test session's own Ray is already up, so
the cluster runs in a subprocess (this file, run as a script) on the session's Postgres and Redis
(the ``services`` fixture), with the ingress alone (no models: the conversations' messages are
``/start``, which the bot answers with its greeting, no model involved; placement and recovery
are what is tested). The subprocess reports what it saw as JSON; the test asserts on it and on
the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SESSION_RESOURCE = "session_slots"
ORIGIN = "https://multinode.example"


# ----------------------------------------------------------------------------------- the test
def test_session_actors_spread_over_workers_and_survive_losing_one(services: Any) -> None:
    """Broken: a worker node hosting session actors is removed (its raylet and every process on
    it killed) while its conversations have messages in flight. Must hold: session actors ran
    only on the two worker nodes (the ones advertising the session resource), on both; each
    session of the lost node gets a new actor on the surviving worker; every message a customer
    sent is stored once and answered exactly once (none left unanswered, none answered twice),
    and the customer's retries with the same client_msg_id get that one answer."""
    import pytest

    from tests.conftest import ADMIN_TOKEN

    env = {k: v for k, v in services.env.items() if k.startswith(("CHAT_ENGINE_", "HF_", "TRANSFORMERS_",
                                                                   "TOKENIZERS_"))}
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps({"env": env, "admin": ADMIN_TOKEN})],
        capture_output=True, text=True, timeout=240, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the cluster run failed (rc {proc.returncode}):\n{proc.stderr[-12000:]}")
    out = json.loads(lines[-1])
    workers = set(out["worker_nodes"])
    assert len(workers) == 2 and out["head_node"] not in workers
    before = out["nodes_before"]  # session -> node
    assert set(before.values()) == workers, before  # on both workers, none on the head
    lost = out["removed_node"]
    moved = [s for s, n in before.items() if n == lost]
    assert moved, "the removed node hosted no session"
    after = out["nodes_after"]
    assert all(after[s] in workers - {lost} for s in moved), after
    # Every message sent is stored once and answered once.
    sent = out["sent"]  # session -> client_msg_ids
    rows = asyncio.run(_messages(services.database_url, list(sent)))
    for sid, ids in sent.items():
        customer = [r for r in rows if str(r["session_id"]) == sid and r["sender"] == "customer"]
        assert sorted(r["client_msg_id"] for r in customer) == sorted(ids), sid
        assert all(r["status"] == "answered" for r in customer), [dict(r) for r in customer]
        replies = [r["reply_to"] for r in rows if str(r["session_id"]) == sid and r["sender"] == "ai"]
        assert sorted(replies) == sorted(r["id"] for r in customer), sid
    assert out["answers_seen"] == {sid: len(ids) for sid, ids in sent.items()}
    # The node went while some of its sessions' messages were still being answered.
    assert out["in_flight_at_removal"] > 0, out


async def _messages(database_url: str, session_ids: list[str]) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(
            "SELECT id, session_id, sender, status, client_msg_id, reply_to FROM messages "
            "WHERE session_id = ANY($1::uuid[]) ORDER BY id", [uuid.UUID(s) for s in session_ids]))
    finally:
        await conn.close()


# ------------------------------------------------------------------------ the cluster (subprocess)
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ask(client: Any, s: dict[str, Any], client_msg_id: str, deadline: float) -> int:
    """Send ``/start`` under ``client_msg_id`` until a turn's stream ends with ``done`` (a retry
    is what a widget does after a failed request); returns the attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            async with client.stream("POST", f"/v1/widget/sessions/{s['session_id']}/messages",
                                     headers={"Authorization": f"Bearer {s['session_token']}"},
                                     json={"text": "/start", "client_msg_id": client_msg_id}) as r:
                if r.status_code == 200:
                    event = ""
                    async for line in r.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "done":
                            return attempts
                        elif line.startswith("data:") and event == "error":
                            break
        except Exception:  # noqa: BLE001 - the node went away under this request: try again
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{client_msg_id} never answered")
        await asyncio.sleep(0.5)


async def _node_of(tenant_id: str, session_id: str) -> str:
    import ray

    actor = ray.get_actor(f"session:{tenant_id}:{session_id}", namespace="chat")
    return str((await actor.status.remote())["node_id"])


async def _scenario(base: str, admin: str, cluster: Any, workers: dict[str, Any]) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(240):
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        r = await client.post("/v1/tenants", json={"name": "multinode"},
                              headers={"Authorization": f"Bearer {admin}"})
        tenant_id, owner = r.json()["tenant_id"], {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
        channel = (await client.post("/v1/channels", headers=owner, json={
            "type": "widget", "allowed_origins": [ORIGIN]})).json()
        sessions = []
        for _ in range(6):
            r = await client.post("/v1/widget/sessions", json={"widget_token": channel["widget_token"]},
                                  headers={"Origin": ORIGIN})
            sessions.append(r.json())
        sent: dict[str, list[str]] = {s["session_id"]: [] for s in sessions}
        deadline = time.monotonic() + 90

        def ask(s: dict[str, Any]) -> Any:
            cid = uuid.uuid4().hex
            sent[s["session_id"]].append(cid)
            return _ask(client, s, cid, deadline)

        await asyncio.gather(*[ask(s) for s in sessions])  # each session's actor is up
        out["nodes_before"] = {s["session_id"]: await _node_of(tenant_id, s["session_id"])
                               for s in sessions}
        counts: dict[str, int] = {}
        for node in out["nodes_before"].values():
            counts[node] = counts.get(node, 0) + 1
        lost = max(counts, key=lambda n: counts[n]) if counts else next(iter(workers))
        out["removed_node"] = lost
        # Three messages to every session at once; the node goes while they are being answered.
        turns = [asyncio.ensure_future(ask(s)) for s in sessions for _ in range(3)]
        await asyncio.sleep(0.05)
        lost_sessions = {s for s, n in out["nodes_before"].items() if n == lost}
        out["in_flight_at_removal"] = sum(
            1 for t, s in zip(turns, [s for s in sessions for _ in range(3)], strict=True)
            if not t.done() and s["session_id"] in lost_sessions)
        await asyncio.to_thread(cluster.remove_node, workers[lost], False)
        try:
            attempts = await asyncio.gather(*turns)
        except TimeoutError:
            # What a failure looks like from the outside: each message's row, the Timekeeper.
            print(json.dumps({"lost_sessions": sorted(lost_sessions), "rows": await _rows(sent),
                              "timekeeper": await _timekeeper_stats()}, default=str),
                  file=sys.stderr, flush=True)
            raise
        out["retried_after_loss"] = sum(a - 1 for a in attempts)
        out["nodes_after"] = {s["session_id"]: await _node_of(tenant_id, s["session_id"])
                              for s in sessions}
        out["answers_seen"] = {sid: len(ids) for sid, ids in sent.items()}
        out["sent"] = sent
    return out


async def _rows(sent: dict[str, list[str]]) -> list[dict[str, Any]]:
    rows = await _messages(os.environ["CHAT_ENGINE_DATABASE_URL"], list(sent))
    return [dict(r) for r in rows]


async def _timekeeper_stats() -> Any:
    import ray

    from runtime.constants import TIMEKEEPER_NAME

    try:
        return await ray.get_actor(TIMEKEEPER_NAME, namespace="chat").stats.remote()
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return repr(exc)


def _run_cluster(cfg: dict[str, Any]) -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    env = {**cfg["env"], "CHAT_ENGINE_SESSION_RESOURCE": SESSION_RESOURCE,
           "CHAT_ENGINE_SPARE_SESSION_WORKERS": "1", "CHAT_ENGINE_TIMEKEEPER_POLL_S": "0.5",
           "CHAT_ENGINE_STALE_MESSAGE_S": "2"}
    os.environ.update(env)
    # A node that stops answering is declared dead in ~2 s, not Ray's default ~30 s.
    fast = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
            "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "include_dashboard": False, "_system_config": fast})
    workers = {}
    for _ in range(2):
        node = cluster.add_node(num_cpus=0, resources={SESSION_RESOURCE: 100})
        workers[node.node_id] = node
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, namespace="chat", runtime_env={"env_vars": env},
                 logging_level="WARNING", log_to_driver=True)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        from serve_app import build_app

        serve.run(build_app({"models": False}), name="chat", route_prefix="/",
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
        out = asyncio.run(_scenario(f"http://127.0.0.1:{port}", cfg["admin"], cluster, workers))
        out["worker_nodes"] = list(workers)
        out["head_node"] = cluster.head_node.node_id
        return out
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(_run_cluster(json.loads(sys.argv[1]))), flush=True)
