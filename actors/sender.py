"""Outbox senders: one detached Ray actor per messaging channel type, draining the ``outbox``,
and one (``outbox-sender:helpdesk``) for the rows of help-desk destinations (tickets and leads).

A thin shell around :class:`runtime.channels.outbox_sender.OutboxSender` or
:class:`runtime.helpdesk.sender.HelpdeskSender` (which tests drive without Ray): a name
(``outbox-sender:<type>``), a detached lifetime, restart on failure, and
``num_cpus=0`` (a sender waits on the network, not the CPU). Rows survive a restart: a new or
restarted sender picks up pending rows and rows whose lease expired. Several senders of one type
(on other nodes, or two replicas during a rollout) are safe: row leases keep them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from typing import Any

import ray

from runtime.channels.outbox_sender import OutboxSender
from runtime.config import get_settings
from runtime.constants import NAMESPACE, OUTBOX_SENDER_PREFIX
from runtime.helpdesk.sender import HELPDESK, HelpdeskSender

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("whatsapp", "telegram", "sms", "email", "slack")
SENDERS = (*CHANNEL_TYPES, HELPDESK)
"""One sender per channel type, and one for every help-desk destination (tickets and leads)."""


def sender_name(channel_type: str) -> str:
    """``outbox-sender:<channel_type>``."""
    return f"{OUTBOX_SENDER_PREFIX}:{channel_type}"


class OutboxSenderActor:
    """Drains one channel type's rows; create with :func:`ensure_senders`."""

    def __init__(self, channel_type: str) -> None:
        self.channel_type = channel_type
        self.sender = (HelpdeskSender(get_settings()) if channel_type == HELPDESK
                       else OutboxSender(get_settings(), [channel_type]))
        self._task = asyncio.get_running_loop().create_task(self.sender.run())

    async def stats(self) -> dict[str, Any]:
        """Counters since this actor started (sent, retried, dead, passes, errors, by_outcome)."""
        return {"channel_type": self.channel_type, **asdict(self.sender.stats)}

    async def drain(self) -> int:
        """One pass now (tests, operators); returns rows handled."""
        return await self.sender.drain_once()


_REMOTE: Any = None


def ensure_senders(env: dict[str, str] | None = None) -> list[Any]:
    """Get or create the sender of every channel type and the help-desk sender (named, detached,
    restarted on failure)."""
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(OutboxSenderActor)
    handles = []
    for channel_type in SENDERS:
        name = sender_name(channel_type)
        with contextlib.suppress(ValueError):
            handles.append(ray.get_actor(name, namespace=NAMESPACE))
            continue
        opts: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "lifetime": "detached",
                                "get_if_exists": True}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        handles.append(_REMOTE.options(**opts).remote(channel_type))
    return handles
