"""Spare session workers: Ray worker processes started and warmed before a session needs one, so a
new session's actor does not pay process start and imports on the customer's time.

Ray places a new actor in an idle worker process when one fits it (same job, same runtime
environment, a process that never ran a task: Ray's worker pool keeps task and actor workers
apart), and otherwise starts a process for it (~1 s here, then ~1 s of imports). Three parts:

- Every session actor is created with :func:`session_runtime_env`: the settings' env vars plus
  Ray's worker-process setup hook, :func:`actors.preload.prepare_session_worker`, which imports
  the session actor's modules (and Serve's handle machinery) when the process starts, before any
  actor is placed in it, and then announces the process as a spare (:func:`announce_spare`).
- :class:`SpareKeeper` (a thread in each ingress replica) keeps ``spare_session_workers`` such
  processes idle on each node that hosts sessions: Ray's raylet starts them on request
  (``PrestartWorkers``, the raylet's own call for warming a pool, with a keep-alive that exempts
  them from idle-worker reaping) for the job and the exact serialized runtime environment a
  session actor gets, which it learns once from a probe actor created with the same options.
- A session actor claims its process when it starts (:func:`claim_spare`), which takes it off
  the node's count; the keeper sees the count drop and asks for another.

Bookkeeping in Redis, per node: ``chat:spares:<node_id>`` (sorted set, member the pid, score
when the spare last said it is alive: a spare refreshes it every :data:`SPARE_REFRESH_S` from a
thread, so a process that died leaves the count within :data:`SPARE_STALE_S`),
``chat:spares:starting:<node_id>`` (one member per process asked for, scored by when it should
have started; each spare that announces itself takes one off) and ``chat:spares:keeper:<node_id>``
(which keeper looks after the node, a short lease, so several ingress replicas do not each start
their own spares).

``PrestartWorkers`` and the setup hook's environment variable are Ray internals (pinned
ray==2.60): a failure there is logged and sessions start cold, as without spares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Any

log = logging.getLogger(__name__)

SESSION_WORKER_MARK = "CHAT_ENGINE_SESSION_WORKER"
"""Set in a session actor's process environment (by its runtime env)."""
SETUP_HOOK = "actors.preload.prepare_session_worker"
SPARE_REFRESH_S = 10.0
SPARE_STALE_S = 3 * SPARE_REFRESH_S
STARTING_S = 20.0  # a spare asked for and not announced after this long is not coming
KEEP_EVERY_S = 1.0
NODES_EVERY_S = 10.0
KEEPER_LEASE_S = 10
KEEP_ALIVE_S = 24 * 3600  # Ray reaps idle workers above its soft limit; not these, for a day
ENV_PREFIXES = ("CHAT_ENGINE_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


def spares_key(node_id: str) -> str:
    """Redis sorted set of the idle spare session workers on ``node_id`` (pid -> last alive)."""
    return f"chat:spares:{node_id}"


def starting_key(node_id: str) -> str:
    """Redis sorted set of the spares asked for on ``node_id`` and not announced yet."""
    return f"chat:spares:starting:{node_id}"


def keeper_key(node_id: str) -> str:
    """Redis key naming the keeper that looks after ``node_id``'s spares."""
    return f"chat:spares:keeper:{node_id}"


def session_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars a session actor's process needs: ``base`` (default: this process's
    ``CHAT_ENGINE_*``, ``HF_*``, ``TRANSFORMERS_*``, ``TOKENIZERS_*``), sorted by name."""
    if base is None:
        base = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    return dict(sorted(base.items()))  # one order, so one serialized runtime env


def session_runtime_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime env every session actor is created with (and its spares started with):
    :func:`session_env` of ``env`` plus the setup hook that warms the process."""
    from ray._private import ray_constants

    return {"env_vars": {**session_env(env), SESSION_WORKER_MARK: "1",
                         ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: SETUP_HOOK}}


# ---------------------------------------------------------------------------------- in a spare
class _Spare:
    """This process's announcement as a spare: refreshed from a daemon thread until claimed."""

    def __init__(self, redis_url: str, node_id: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.node_id = node_id
        self.pid = str(os.getpid())
        self.claimed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="spare-announce", daemon=True)

    def _run(self) -> None:
        first = True
        while not self.claimed.is_set():
            with contextlib.suppress(Exception):
                pipe = self.client.pipeline(transaction=False)
                pipe.zadd(spares_key(self.node_id), {self.pid: time.time()})
                pipe.expire(spares_key(self.node_id), 3600)
                if first:
                    pipe.zpopmin(starting_key(self.node_id))
                pipe.execute()
                first = False
            self.claimed.wait(SPARE_REFRESH_S)
        with contextlib.suppress(Exception):
            self.client.zrem(spares_key(self.node_id), self.pid)
        with contextlib.suppress(Exception):
            self.client.close()


_SPARE: _Spare | None = None
_HOSTING = threading.Event()  # an actor lives in this process: it is no spare (any more)
_LOCK = threading.Lock()


def hosting() -> bool:
    """Whether a session actor (or the keeper's probe) has claimed this process."""
    return _HOSTING.is_set()


def announce_spare() -> None:
    """Count this (warmed, idle) process as a spare on its node until :func:`claim_spare`.
    Called by the setup hook; never raises (the process then simply is not counted)."""
    global _SPARE
    try:
        import ray

        url = os.environ.get("CHAT_ENGINE_REDIS_URL")
        node_id = str(ray.get_runtime_context().get_node_id())
        with _LOCK:
            if not url or _SPARE is not None or _HOSTING.is_set():
                return
            _SPARE = _Spare(url, node_id)
            _SPARE.thread.start()
    except Exception:  # noqa: BLE001 - a spare not counted is only a spare too many later
        log.warning("spare session worker not announced", exc_info=True)


def claim_spare() -> bool:
    """This process now hosts a session actor: it is no spare (if it was announced, the
    announcing thread removes it from its node's set). True when it had been announced."""
    with _LOCK:
        _HOSTING.set()
        if _SPARE is None or _SPARE.claimed.is_set():
            return False
        _SPARE.claimed.set()
        return True


# ---------------------------------------------------------------------------------- the keeper
class _EnvProbe:
    """Created once with a session actor's options, to read the runtime env Ray gives it."""

    def env(self) -> str:
        import ray

        claim_spare()  # not a spare: it is killed after this call
        return str(ray.get_runtime_context().get_runtime_env_string())


class SpareKeeper:
    """Keeps ``target`` spare session workers idle on each node that hosts sessions.

    redis_url: where the spares announce themselves; target: spares per node (0: none);
    session_resource: the custom resource session actors ask for (None: they are placed on the
    node of the process that creates them, so this keeper's node is the one to keep warm).
    """

    def __init__(self, redis_url: str, target: int, session_resource: str | None = None) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.target = target
        self.session_resource = session_resource
        self.keeper_id = uuid.uuid4().hex
        self.env_string: str | None = None
        self.job_id: bytes | None = None
        self._nodes: list[dict[str, Any]] = []
        self._nodes_at = 0.0
        self._stop = threading.Event()
        self.requested = 0
        self.errors = 0

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread."""
        thread = threading.Thread(target=self.run, name="spare-keeper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()

    def run(self) -> None:
        """Every :data:`KEEP_EVERY_S`: top up each node's spares (errors are logged, retried)."""
        while not self._stop.is_set():
            try:
                self.keep()
            except Exception:  # noqa: BLE001 - Redis or Ray hiccup: next pass
                self.errors += 1
                log.warning("spare session workers not kept this time", exc_info=self.errors <= 3)
            self._stop.wait(KEEP_EVERY_S)

    def keep(self) -> int:
        """One pass; returns the processes asked for. Raises what Redis, Ray and gRPC raise."""
        if self.target <= 0:
            return 0
        if self.env_string is None:
            self._probe()
        started = 0
        for node in self.nodes():
            node_id = node["NodeID"]
            if not self._hold(node_id):
                continue
            now = time.time()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zremrangebyscore(spares_key(node_id), "-inf", now - SPARE_STALE_S)
            pipe.zremrangebyscore(starting_key(node_id), "-inf", now)
            pipe.zcard(spares_key(node_id))
            pipe.zcard(starting_key(node_id))
            _, _, spares, starting = pipe.execute()
            deficit = self.target - int(spares) - int(starting)
            if deficit > 0:
                self._prestart(node, deficit)
                tokens: dict[str | bytes, float] = {uuid.uuid4().hex: now + STARTING_S
                                                    for _ in range(deficit)}
                pipe = self.redis.pipeline(transaction=False)
                pipe.zadd(starting_key(node_id), tokens)
                pipe.expire(starting_key(node_id), 3600)
                pipe.execute()
                started += deficit
        self.requested += started
        return started

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes that host session actors (refreshed every :data:`NODES_EVERY_S`)."""
        import ray

        if time.monotonic() - self._nodes_at < NODES_EVERY_S:
            return self._nodes
        here = str(ray.get_runtime_context().get_node_id())
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if self.session_resource:
            self._nodes = [n for n in alive if n.get("Resources", {}).get(self.session_resource)]
        else:
            self._nodes = [n for n in alive if n["NodeID"] == here]
        self._nodes_at = time.monotonic()
        return self._nodes

    def _hold(self, node_id: str) -> bool:
        """Take or keep the lease on looking after ``node_id``; False when another keeper has it."""
        key = keeper_key(node_id)
        if self.redis.set(key, self.keeper_id, nx=True, ex=KEEPER_LEASE_S):
            return True
        holder = self.redis.get(key)
        if holder is not None and holder.decode() == self.keeper_id:
            self.redis.expire(key, KEEPER_LEASE_S)
            return True
        return False

    def _probe(self) -> None:
        """Learn the serialized runtime env Ray gives a session actor, and this job's id."""
        import ray

        opts = {"runtime_env": session_runtime_env(), "num_cpus": 0}
        if self.session_resource:
            opts["resources"] = {self.session_resource: 1}
        probe: Any = ray.remote(_EnvProbe).options(**opts).remote()  # type: ignore[attr-defined]
        try:
            self.env_string = str(ray.get(probe.env.remote(), timeout=120))
        finally:
            ray.kill(probe)
        self.job_id = bytes.fromhex(ray.get_runtime_context().get_job_id())

    def _prestart(self, node: dict[str, Any], count: int) -> None:
        """Ask ``node``'s raylet to start ``count`` workers for session actors."""
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import (
            common_pb2,
            node_manager_pb2,
            node_manager_pb2_grpc,
            runtime_environment_pb2,
        )

        assert self.env_string is not None and self.job_id is not None
        pb: Any = (common_pb2, node_manager_pb2, runtime_environment_pb2)  # generated: no stubs
        request = pb[1].PrestartWorkersRequest(
            language=pb[0].PYTHON, job_id=self.job_id,
            runtime_env_info=pb[2].RuntimeEnvInfo(serialized_runtime_env=self.env_string),
            keep_alive_duration_secs=KEEP_ALIVE_S, num_workers=count)
        channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
        finally:
            channel.close()
        log.info("asked node %s for %d spare session worker(s)", node["NodeID"][:12], count)


_KEEPER: SpareKeeper | None = None


def ensure_keeper(redis_url: str | None, target: int, session_resource: str | None = None) -> None:
    """Start this process's :class:`SpareKeeper` once (no-op without Redis or with ``target`` 0)."""
    global _KEEPER
    if _KEEPER is not None or not redis_url or target <= 0:
        return
    _KEEPER = SpareKeeper(redis_url, target, session_resource)
    _KEEPER.start()
