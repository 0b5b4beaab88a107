"""SessionActor: the Ray shell around one conversation (DESIGN.md, Session actor).

One detached actor per active session, named ``session:<tenant_id>:<session_id>`` in namespace
``chat``, ``num_cpus=0``, restarted on failure. Every method delegates to
:class:`runtime.conversation.Conversation`, which holds all the logic and runs without Ray in
tests; this module adds only what Ray gives: the name and lifetime, the Serve handles to the
models, and the process exit after passivation.

Light process: no torch, sentence-transformers or llama_cpp here; models are reached through
Serve handles. Methods return JSON-safe dicts; errors are ChatEngineError subclasses (the ingress
unwraps them from Ray's wrapper).

Caps: whoever would create a session's actor (the ingress, the Timekeeper) first calls
:func:`admit_session`, which reserves a place under the tenant's and the node's caps of live actors
(:mod:`runtime.conversation.capacity`) or raises CapacityExceeded; a session whose actor exists is
never refused. The actor keeps its lease while active and gives it back when it passivates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any
from uuid import UUID

import ray
import redis.asyncio as aioredis

from actors.models import process_models
from actors.spare_workers import claim_spare, session_runtime_env
from runtime.config import Settings, get_settings
from runtime.constants import NAMESPACE
from runtime.conversation.capacity import admit_actor, release_warm
from runtime.conversation.conversation import Conversation
from runtime.errors import CapacityExceeded

log = logging.getLogger(__name__)


def actor_name(tenant_id: Any, session_id: Any) -> str:
    """``session:<tenant_id>:<session_id>``."""
    return f"session:{tenant_id}:{session_id}"


class SessionActor:
    """One conversation; create with :func:`session_actor`. Raises SessionNotFound (through
    Ray) if the session row is gone."""

    def __init__(self, tenant_id: str, session_id: str) -> None:
        claim_spare()  # this process was a warmed spare (or was started for this actor)
        models, intents = process_models()
        self.conv = Conversation(UUID(tenant_id), UUID(session_id), settings=get_settings(),
                                 models=models, intents=intents, node_id=node_id())
        # Until a call other than ping/status/passivate, the actor may be one the widget warmed
        # for a visitor who never types: it is put to rest after warm_idle_s, not idle_minutes.
        self._engaged = False
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._warm()), loop.create_task(self._idle_watch())]

    async def _warm(self) -> None:
        # Activation and the intent examples now rather than on the customer's first message;
        # a failure here is retried by the first call.
        with contextlib.suppress(Exception):
            await self.conv.activate()
            await self.conv.intents.prepare()

    def _engage(self) -> None:
        """A real call: the full idle timeout applies from now, and a place under the warm
        budgets (if the widget warmed this actor) is given back at once."""
        if self._engaged:
            return
        self._engaged = True
        self._tasks.append(asyncio.get_running_loop().create_task(self._release_warm()))

    async def _release_warm(self) -> None:
        with contextlib.suppress(Exception):  # else the place lapses after warm_idle_s
            live = await self.conv.activate()
            await release_warm(live.events.redis, self.conv.tenant_id, self.conv.session_id,
                               self.conv.node_id)

    async def _idle_watch(self) -> None:
        settings = self.conv.settings
        idle_s = settings.idle_minutes * 60
        warm_s = min(idle_s, settings.warm_idle_s)
        while True:
            await asyncio.sleep(max(0.5, min(30.0, (idle_s if self._engaged else warm_s) / 4)))
            limit = idle_s if self._engaged else warm_s
            if self.conv.idle_for() >= limit and await self.conv.passivate():
                self._exit()
                return

    def _exit(self) -> None:
        log.info("session %s passivated", self.conv.session_id)
        loop = asyncio.get_running_loop()
        # After the reply has gone out. Not ray.actor.exit_actor(): outside a running method
        # it only flags the actor, which then lives on until some later call ends; the state
        # is in Postgres and the resources are closed, so the actor can simply go.
        loop.call_later(0.05, self._kill_self)

    @staticmethod
    def _kill_self() -> None:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def ping(self) -> dict[str, Any]:
        """Liveness; activates the session."""
        await self.conv.activate()
        return {"ok": True, "pid": os.getpid()}

    async def status(self) -> dict[str, Any]:
        """Status, assignee, queue length, whether a turn runs, this process's pid and Ray node."""
        return {**await self.conv.status(), "pid": os.getpid(), "node_id": self.conv.node_id}

    async def submit(self, text: str, client_msg_id: str | None = None, external_id: str | None = None,
                     attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """See :meth:`Conversation.submit`."""
        self._engage()
        return await self.conv.submit(text, client_msg_id, external_id, attachments)

    async def handoff(self, reason: str = "The customer asked for a human.") -> dict[str, Any]:
        """See :meth:`Conversation.handoff`."""
        self._engage()
        return await self.conv.handoff(reason)

    async def takeover(self, agent_id: str, agent_name: str) -> dict[str, Any]:
        """See :meth:`Conversation.takeover`."""
        self._engage()
        return await self.conv.takeover(agent_id, agent_name)

    async def agent_reply(self, agent_id: str, agent_name: str, text: str) -> dict[str, Any]:
        """See :meth:`Conversation.agent_reply`."""
        self._engage()
        return await self.conv.agent_reply(agent_id, agent_name, text)

    async def hand_back(self, agent_id: str | None = None) -> dict[str, Any]:
        """See :meth:`Conversation.hand_back`."""
        self._engage()
        return await self.conv.hand_back(agent_id)

    async def close(self, resolution: str | None = None, ask_csat: bool = True) -> dict[str, Any]:
        """See :meth:`Conversation.close`."""
        self._engage()
        return await self.conv.close(resolution, ask_csat)

    async def rate(self, score: int) -> dict[str, Any]:
        """See :meth:`Conversation.rate`."""
        self._engage()
        return await self.conv.rate(score)

    async def fire_timer(self, kind: str) -> dict[str, Any]:
        """See :meth:`Conversation.fire_timer`."""
        self._engage()
        return await self.conv.fire_timer(kind)

    async def recover(self) -> dict[str, Any]:
        """See :meth:`Conversation.recover`."""
        self._engage()
        return await self.conv.recover()

    async def passivate(self, force: bool = False) -> dict[str, Any]:
        """Persist and exit. Refused (``{"passivated": False}``) while a turn runs or waits or a
        call is in flight. An escalated session passivates too (its SLA timer is durable);
        ``force`` changes nothing now."""
        await self.conv.activate()
        status = self.conv.live.record.status if self.conv.live else None
        ok = await self.conv.passivate(force)
        if ok:
            self._exit()
        return {"passivated": ok, "status": status}


_REMOTE: Any = None
_NODE_ID: str | None = None


def node_id() -> str:
    """This process's Ray node id (hex), where a zero-CPU actor it creates is placed when the
    node can take it."""
    global _NODE_ID
    if _NODE_ID is None:
        _NODE_ID = str(ray.get_runtime_context().get_node_id())
    return _NODE_ID


def actor_exists(tenant_id: Any, session_id: Any) -> bool:
    """Whether the session's named actor is registered (alive, starting or restarting). A
    blocking call to Ray's control store: run it in a thread from async code."""
    try:
        ray.get_actor(actor_name(tenant_id, session_id), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


async def admit_session(redis: aioredis.Redis, settings: Settings, tenant_id: Any,
                        session_id: Any) -> None:
    """Let the session have an actor under the caps of live actors (per tenant, per node); call
    before :func:`session_actor` would create one.

    A session with a live lease passes at once; otherwise a place is reserved on this process's
    node. When the caps are reached, a session whose actor exists all the same (its lease lapsed,
    say while Redis was away) still passes: an existing actor is always reachable. Raises
    CapacityExceeded (503, ``retry_after_s``) otherwise, DependencyUnavailable when Redis is
    unreachable and ``rate_limit_fail_open`` is off.
    """
    try:
        await admit_actor(redis, settings, tenant_id, session_id, node_id())
    except CapacityExceeded:
        if not await asyncio.to_thread(actor_exists, tenant_id, session_id):
            raise


def session_actor(tenant_id: Any, session_id: Any, env: dict[str, str] | None = None) -> Any:
    """Get or create the session's actor (named, detached, restarted on failure). ``env``: its
    process's env vars (default: this process's settings, :func:`actors.spare_workers.session_env`);
    with the default, Ray places a new actor in a spare warmed process when the node has one.
    With ``session_resource`` set, the actor asks one unit of it and Ray spreads the actors over
    the nodes that advertise it; otherwise it runs on this process's node."""
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,  # type: ignore[call-overload]
                             max_concurrency=1000)(SessionActor)
    opts: dict[str, Any] = {
        "name": actor_name(tenant_id, session_id), "namespace": NAMESPACE,
        "lifetime": "detached", "get_if_exists": True, "runtime_env": session_runtime_env(env),
    }
    resource = get_settings().session_resource
    if resource:  # only on the nodes that host sessions, spread over them
        opts.update(resources={resource: 1}, scheduling_strategy="SPREAD")
    return _REMOTE.options(**opts).remote(str(tenant_id), str(session_id))
