"""Answering a covered question: the tenant's strategy, extractive or generative, then storing it.

- extractive: the 1-3 sentences of the retrieved chunks that best answer the question, quoted with
  their source; no model, so the first text comes in milliseconds.
- generative: the Generator writes from the sources (:mod:`runtime.conversation.answer_stream`);
  every sentence passes the grounding check before it is delivered. An answer left with nothing
  falls back to the extractive one, or to the could-not-answer escalation.
- ``auto`` (the default): generative only when the operator's generator is marked capable.

The stored answer records its strategy and the supported/removed sentence counts; the ``done``
event carries them (``answer``) with the turn's timing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any, cast

from runtime.answering.extractive import extract_answer
from runtime.answering.grounding import GroundingChecker
from runtime.bot_config import BotConfig
from runtime.conversation.answer_stream import AnswerStream
from runtime.conversation.control import TurnControl
from runtime.conversation.decisions import Answer, InboundMessage
from runtime.conversation.delivery import publish_message, store_message
from runtime.conversation.live import LiveSession
from runtime.conversation.payloads import source_payload
from runtime.conversation.ports import ModelPorts
from runtime.conversation.source_vectors import SourceVectors
from runtime.conversation.state import SessionState
from runtime.conversation.usage import cost_micros, model_name, notify_credit_alert
from runtime.db import Conn, bot_configs
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.db import usage as usage_db
from runtime.errors import ChatEngineError
from runtime.helpdesk.notices import email_credit_alert
from runtime.metrics import metrics
from runtime.models.capability import resolve_strategy
from runtime.models.types import Final, GenerationRequest
from runtime.policy.output_guard import OutputGuard
from runtime.prompting import build_prompt

log = logging.getLogger(__name__)

REPETITION_PENALTY = 1.15
EXTRACTIVE_PACE_S = 0.03  # seconds between the pieces of an extractive answer on the stream
# The model starting a new prompt section ends its answer (the output guard strips the rest).
ANSWER_STOPS = ("\nQuestion:", "\nFacts:")


_PIECE_END = re.compile(r"(?<=[.!?]) (?=\S)|\n+")


def sentence_pieces(text: str) -> list[str]:
    """``text`` cut after each sentence and line break; ``"".join`` of the pieces is ``text``."""
    out, start = [], 0
    for m in _PIECE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


class CouldNotAnswer(Exception):
    """Neither strategy produced a supported answer; ``signal`` says why (low_coverage,
    canary, generation_failed)."""

    def __init__(self, reason: str, signal: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signal = signal


class _CheckerWhenBuilt:
    """A :class:`GroundingChecker` still being built (its sources embedded) in a task of its
    own: the first sentence to check waits for it; :meth:`cancel` drops it if unused."""

    def __init__(self, build: Awaitable[GroundingChecker]) -> None:
        self._task = asyncio.ensure_future(build)

    async def check_sentence(self, sentence: str) -> Any:
        return await (await self._task).check_sentence(sentence)

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled():
            self._task.exception()  # retrieved: a failed build is not logged as unhandled


class AnswerWriter:
    """Produces, stores and delivers one answer for a turn."""

    def __init__(self, live: LiveSession, models: ModelPorts) -> None:
        self.live = live
        self.models = models
        self._state = live.state

    def _source_vectors(self) -> SourceVectors:
        """Embeddings of the sources' sentences, through the Redis cache every session shares."""
        return SourceVectors(self.live.events.redis, self.live.settings.embedding_model,
                             self.models.embed_many)

    async def answer(self, msg: InboundMessage, decision: Answer, cfg: BotConfig, ctl: TurnControl,
                     t0: float, timing: dict[str, float], state: SessionState) -> None:
        """Answer ``msg`` from ``decision.chunks``; ``state`` commits with the answer. Raises
        Aborted, CouldNotAnswer (the caller escalates), and what Postgres/Redis raise."""
        self._state = state
        strategy = resolve_strategy(cfg.answer_strategy, await self.models.generator_capable())
        ctl.checkpoint()
        if strategy == "generative":
            await self._generative(msg, decision, cfg, ctl, t0, timing)
        else:
            await self._extractive(msg, decision, ctl, t0, timing)

    async def _extractive(self, msg: InboundMessage, decision: Answer, ctl: TurnControl, t0: float,
                          timing: dict[str, float], *, final: Final | None = None,
                          removed: int = 0) -> None:
        t = time.perf_counter()
        ext = await extract_answer(decision.question, decision.question_vec, decision.chunks,
                                   self._source_vectors())
        ctl.checkpoint()
        timing["extract_ms"] = round((time.perf_counter() - t) * 1000, 2)
        if ext is None:
            raise CouldNotAnswer("no sentence of the sources answers the question", "low_coverage")
        async with ctl.delivering():
            seq = ctl.tokens_sent
            answer_id = ctl.answer_id
            if answer_id is None:
                answer_id, _ = await self._reserve(msg.id)
            if self.live.delivery.live_tokens:
                # A token per sentence or line, a few frames apart: the widget reveals the quote
                # as it renders a generated answer (under 0.1 s in all), and the tokens always
                # add up to the stored answer.
                for i, piece in enumerate(sentence_pieces(ext.text)):
                    if i:
                        await asyncio.sleep(EXTRACTIVE_PACE_S)
                    await self.live.delivery.emit("token", f"{answer_id}:{seq}", {
                        "message_id": answer_id, "seq": seq, "text": piece}, msg.id)
                    seq += 1
                await asyncio.sleep(EXTRACTIVE_PACE_S)
            await self._store(msg, answer_id, ext.text, list(ext.sources), seq, t0, timing,
                              strategy="extractive", supported=len(ext.quotes), removed=removed,
                              final=final)

    async def _generative(self, msg: InboundMessage, decision: Answer, cfg: BotConfig,
                          ctl: TurnControl, t0: float, timing: dict[str, float]) -> None:
        s = self.live.settings
        async with self.live.pool.acquire() as conn:
            history = await msg_db.recent_history(conn, self.live.tenant_id, self.live.session_id,
                                                  msg.id, s.history_turns)
        ctl.checkpoint()
        window = await self.models.context_window()
        ctl.checkpoint()
        prompt = build_prompt(
            cfg, self.live.canary, decision.question, decision.chunks,
            [(r["sender"], r["text"]) for r in history], context_window=window,
            max_new_tokens=s.llm_max_tokens, source_tokens=s.prompt_source_tokens,
            history_tokens=s.prompt_history_tokens,
        )
        used = [decision.chunks[i] for i in prompt.used_chunks]
        # The sources are embedded while the model works on its first sentence, not before.
        checker = _CheckerWhenBuilt(GroundingChecker.build(used, self.models.embed_many,
                                                           embed_sources=self._source_vectors()))
        try:
            ctl.answer_id, _ = await self._reserve(msg.id)
            ctl.checkpoint()
            request = GenerationRequest(messages=prompt.messages, max_tokens=s.llm_max_tokens,
                                        prefix_messages=1, repetition_penalty=REPETITION_PENALTY,
                                        stop=list(ANSWER_STOPS))
            guard = OutputGuard(self.live.canary, system_text=prompt.messages[0].content)
            stream = AnswerStream(self.models, self.live.delivery, ctl, guard,
                                  cast(GroundingChecker, checker), turn=msg.id, answer_id=ctl.answer_id)
            t = time.perf_counter()
            result = await stream.run(request)
        except ChatEngineError as exc:
            if ctl.tokens_sent:
                raise
            # The Generator failed before any text: the customer still gets the sources' answer.
            log.warning("generation failed before the first token (%s): answering extractively", exc)
            await self._extractive(msg, decision, ctl, t0, timing)
            return
        finally:
            checker.cancel()
        timing["generate_ms"] = round((time.perf_counter() - t) * 1000, 2)
        if result.guard_hit == "canary":
            raise CouldNotAnswer("The answer was stopped by the output guard.", "canary")
        if not result.sentences:
            if ctl.tokens_sent == 0:
                await self._extractive(msg, decision, ctl, t0, timing, final=result.final,
                                       removed=result.removed)
                return
            raise CouldNotAnswer("The assistant could not answer from the knowledge base.", "low_coverage")
        async with ctl.delivering():
            await self._store(msg, ctl.answer_id, result.text, used, ctl.tokens_sent, t0, timing,
                              strategy="generative", supported=result.supported,
                              removed=result.removed, final=result.final)

    async def _reserve(self, message_id: int) -> tuple[int, int | None]:
        async with self.live.pool.acquire() as conn:
            return await msg_db.reserve_answer_id(conn, self.live.tenant_id, message_id)

    async def _store(self, msg: InboundMessage, answer_id: int, text: str, sources: list[Any],
                     seq: int, t0: float, timing: dict[str, float], *, strategy: str,
                     supported: int, removed: int, final: Final | None) -> None:
        """Store the answer (usage, credit, state in the same transaction), then publish
        ``message`` and ``done``. Runs inside the delivery critical section."""
        live = self.live
        usage = final.usage if final is not None else None
        state = self._state

        alert: dict[str, Any] = {}

        async def writes(conn: Conn) -> None:
            if usage is not None and final is not None:
                model = model_name(live.settings, final.backend)
                await usage_db.record_usage(
                    conn, live.tenant_id, live.session_id, answer_id, final.backend, model,
                    usage.prompt_tokens, usage.completion_tokens,
                    cost_micros(live.settings, model, usage.prompt_tokens, usage.completion_tokens))
            alert.clear()  # a retried transaction starts again
            alert.update(await bot_configs.consume_credit(conn, live.tenant_id) or {})
            if alert:
                await email_credit_alert(conn, live.tenant_id, alert)
            await sess_db.update_session(conn, live.tenant_id, live.session_id, state=state.dump())

        stored = await store_message(
            live.pool, live.delivery, live.record, "ai", text, reply_to=msg.id,
            customer_status="answered", in_tx=writes, message_id=answer_id,
            payload_extra={"sources": [source_payload(c) for c in sources]},
            latency_ms=int((time.perf_counter() - t0) * 1000),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            backend=final.backend if final else None,
            source_chunk_ids=[int(c.chunk_id) for c in sources],
            confidence=max((float(c.similarity) for c in sources), default=None),
            intent="answer", strategy=strategy, supported_sentences=supported,
            removed_sentences=removed,
        )
        done_timing = {**timing, "turn_ms": round((time.perf_counter() - t0) * 1000, 2)}
        if usage is not None and final is not None:
            metrics().model_ttft(final.backend, usage.ttft_ms)
            done_timing.update(model_ttft_ms=round(usage.ttft_ms, 2),
                               cached_prompt_tokens=usage.cached_prompt_tokens,
                               prompt_tokens=usage.prompt_tokens)
        live.state = state
        record = {"strategy": strategy, "supported_sentences": supported, "removed_sentences": removed}
        await publish_message(live.delivery, stored, msg.id, first_seq=seq,
                              done_extra={"timing": done_timing, "answer": record})
        if alert:
            await notify_credit_alert(live, alert)
