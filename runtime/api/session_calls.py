"""Calling a session's actor from the ingress: activation, passivation races, unwrapped errors,
and the caps of live session actors (a new actor is admitted first, an existing one never
refused)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from typing import Any
from uuid import UUID

import ray

from actors.session import admit_session, node_id, session_actor
from actors.timekeeper import ensure_timekeeper
from runtime.api.context import get_context
from runtime.conversation.capacity import admit_warm
from runtime.errors import CapacityExceeded, ChatEngineError, SessionPassivating

log = logging.getLogger(__name__)

_HANDLES: OrderedDict[tuple[str, str], Any] = OrderedDict()
_HANDLE_CACHE_MAX = 10_000
_timekeeper_started = False
_WARMING: set[asyncio.Task[None]] = set()
# A passivating actor refuses calls until it has exited; the next handle is a new actor.
PASSIVATION_RETRIES = 40
PASSIVATION_BACKOFF_S = 0.05


def worker_env() -> dict[str, str]:
    """The env vars a session actor's process needs (settings and offline model flags)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(("CHAT_ENGINE_", "HF_", "TRANSFORMERS_", "TOKENIZERS_"))}


async def _handle(tenant_id: UUID, session_id: UUID, fresh: bool = False) -> Any:
    """The session actor's handle: the cached one, or (``fresh``, or none cached) one got or
    created after admission under the caps. Raises CapacityExceeded (nothing created)."""
    global _timekeeper_started
    if not _timekeeper_started:
        ensure_timekeeper()
        _timekeeper_started = True
    key = (str(tenant_id), str(session_id))
    if not fresh and key in _HANDLES:
        _HANDLES.move_to_end(key)
        return _HANDLES[key]
    ctx = await get_context()
    await admit_session(ctx.redis, ctx.settings, tenant_id, session_id)
    handle = session_actor(tenant_id, session_id, worker_env())
    _HANDLES[key] = handle
    if len(_HANDLES) > _HANDLE_CACHE_MAX:
        _HANDLES.popitem(last=False)
    return handle


def _unwrap(exc: ray.exceptions.RayTaskError) -> BaseException:
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, Exception) else exc.as_instanceof_cause()


async def call_session(tenant_id: UUID, session_id: UUID, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` on the session's actor, activating it if it was passivated.

    A call that meets a passivating or exited actor is retried on the actor that replaces it.
    Raises CapacityExceeded (503, ``retry_after_s``) when the session has no actor and the
    tenant's or node's cap of live actors is reached, and what the actor raises
    (ChatEngineError subclasses, unwrapped from Ray's wrapper).
    """
    last: BaseException | None = None
    for attempt in range(PASSIVATION_RETRIES):
        handle = await _handle(tenant_id, session_id, fresh=attempt > 0)
        try:
            return await getattr(handle, method).remote(*args, **kwargs)
        except ray.exceptions.RayActorError as exc:
            last = exc  # passivated, or died and not restartable: a new actor takes over
        except ray.exceptions.RayTaskError as exc:
            cause = _unwrap(exc)
            if not isinstance(cause, SessionPassivating):
                raise cause from None
            last = cause
        await asyncio.sleep(PASSIVATION_BACKOFF_S)
    if isinstance(last, ChatEngineError):
        raise last
    raise SessionPassivating("the conversation is restarting; try again in a moment") from last


def warm_session(tenant_id: UUID, session_id: UUID) -> None:
    """Start the session's actor now (fire and forget, from a running event loop), so the
    customer's first message does not wait for a process to start.

    Only within the warm budgets (:func:`runtime.conversation.capacity.admit_warm`: a burst of
    sessions nobody types into starts a bounded number of processes) and the caps of live actors;
    otherwise nothing is started here and the first message starts the actor (or is answered
    with the 503 beyond the caps). A warmed actor that gets no message is put to rest after
    ``warm_idle_s``."""
    task = asyncio.get_running_loop().create_task(_warm(tenant_id, session_id))
    _WARMING.add(task)
    task.add_done_callback(_WARMING.discard)


async def _warm(tenant_id: UUID, session_id: UUID) -> None:
    try:
        if (str(tenant_id), str(session_id)) not in _HANDLES:
            ctx = await get_context()
            if not await admit_warm(ctx.redis, ctx.settings, tenant_id, session_id, node_id()):
                log.debug("session %s not warmed: the warm budget is spent", session_id)
                return
        (await _handle(tenant_id, session_id)).ping.remote()
    except CapacityExceeded as exc:
        log.info("session %s not warmed: %s", session_id, exc.message)
    except Exception:  # noqa: BLE001 - warming is an optimisation; the first call starts it
        log.warning("session %s not warmed", session_id, exc_info=True)
