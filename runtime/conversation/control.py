"""Cancelling a running turn safely: abort checkpoints and the delivery critical section.

A turn runs as its own asyncio task. Takeover, handoff and close call :meth:`TurnControl.abort`:
the running generation is cancelled at once (the abort hooks), and the turn stops at its next
:meth:`TurnControl.checkpoint` (one after every await between its steps), so an aborted turn never
escalates, replies or answers. Every outward effect (storing and publishing an answer, a reply or
an escalation) runs inside :meth:`TurnControl.delivering`, entered right after a checkpoint with
no await between: an abort that comes during it waits for it to finish, so whatever the aborting
call publishes next (``agent_joined``, ``handoff``) comes after the whole answer, never inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class Aborted(Exception):
    """The turn was aborted by a takeover, handoff or close."""


class TurnControl:
    """Abort state of one turn (one customer message).

    aborted: set by :meth:`abort`; answer_id / tokens_sent: the answer being streamed, if any
    (the turn publishes ``aborted`` for it).
    """

    def __init__(self, message_id: int) -> None:
        self.message_id = message_id
        self.aborted = False
        self.answer_id: int | None = None
        self.tokens_sent = 0
        self.overhead_ms: float | None = None  # the runtime's own time before the answer (metrics)
        self._hooks: list[Callable[[], None]] = []
        self._delivering: asyncio.Event | None = None
        self.finished = asyncio.Event()

    def checkpoint(self) -> None:
        """Raise :class:`Aborted` if the turn was aborted."""
        if self.aborted:
            raise Aborted

    def on_abort(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` (sync, must not raise) when the turn is aborted, at once if it already
        was. Returns a function that removes the hook."""
        if self.aborted:
            hook()
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook) if hook in self._hooks else None

    @contextlib.asynccontextmanager
    async def delivering(self) -> AsyncIterator[None]:
        """The critical section of an outward effect. Raises Aborted if the turn was already
        aborted; once inside, an abort waits for the section to end."""
        self.checkpoint()
        event = self._delivering = asyncio.Event()
        try:
            yield
        finally:
            event.set()
            self._delivering = None

    async def abort(self) -> None:
        """Abort the turn: wait out a delivery in progress, then flag the turn and cancel its
        generation. Idempotent."""
        if self._delivering is not None:
            await self._delivering.wait()
        if self.aborted:
            return
        self.aborted = True
        for hook in list(self._hooks):
            with contextlib.suppress(Exception):
                hook()

    async def wait_finished(self, timeout_s: float) -> bool:
        """Wait until the turn's task has finished (published what an abort owes the stream).
        Returns False on timeout."""
        try:
            await asyncio.wait_for(self.finished.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
