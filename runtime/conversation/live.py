"""The resources and in-memory truth of one active session, shared by its turn runner and the
operations of :class:`runtime.conversation.conversation.Conversation`.

Fields change only after the database transaction recording the change has committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runtime.bot_config import BotConfig
from runtime.config import Settings
from runtime.conversation.delivery import Delivery
from runtime.conversation.escalation import SlaTimer
from runtime.conversation.state import SessionRecord, SessionState
from runtime.db import Conn, bot_configs
from runtime.events import SessionEvents


@dataclass
class LiveSession:
    """record/state: the committed session; pool: asyncpg pool (max 2 connections); events: the
    session's Redis stream and the inbox channel; delivery: the channel's Delivery; canary: the
    tenant's canary secret; sla: the in-memory SLA timer."""

    record: SessionRecord
    state: SessionState
    pool: Any
    events: SessionEvents
    delivery: Delivery
    settings: Settings
    canary: str
    sla: SlaTimer

    def escalated(self, record: SessionRecord, state: SessionState, due_at: datetime) -> None:
        """An escalation committed: take its status and state, arm the SLA."""
        self.record = record
        self.state = state
        self.sla.arm(due_at)

    @property
    def tenant_id(self) -> Any:
        return self.record.tenant_id

    @property
    def session_id(self) -> Any:
        return self.record.session_id


async def load_config(conn: Conn, tenant_id: Any) -> tuple[BotConfig, bool]:
    """The tenant's bot config and whether the bot is paused (status or credit at zero)."""
    row = await bot_configs.get_bot_config(conn, tenant_id)
    paused = row["status"] == "paused" or (row["credit_balance"] is not None and row["credit_balance"] <= 0)
    return BotConfig.model_validate(row["config"]), paused
