"""One generative answer on its way to the customer: guarded, grounded, cancellable.

Generator tokens pass through the output guard (no scaffolding, canary or handoff marker gets
out), then through a sentence gate: each sentence is held until it is complete, checked against
the answer's sources by the grounding checker, and only a supported sentence is delivered (an
unsupported one is dropped and counted). A sentence that repeats an earlier one ends the answer.
An abort cancels the Generator call (at most one more token) and stops the stream at the next
item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runtime.answering.grounding import GroundingChecker
from runtime.conversation.control import TurnControl
from runtime.conversation.delivery import Delivery
from runtime.conversation.ports import ModelPorts
from runtime.models.types import Final, GenerationRequest, TokenDelta
from runtime.policy.output_guard import OutputGuard
from runtime.text import normalize

# A sentence ends at ., ! or ? followed by whitespace, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


@dataclass
class StreamResult:
    """text: the delivered (supported) sentences; supported/removed: sentence counts;
    guard_hit: "canary" | "handoff_marker" | None; repeated: stopped on a repeated sentence."""

    text: str = ""
    final: Final | None = None
    supported: int = 0
    removed: int = 0
    guard_hit: str | None = None
    repeated: bool = False
    sentences: list[str] = field(default_factory=list)


class AnswerStream:
    """Streams one answer. ``answer_id``: the reserved message id its tokens carry; ``turn``: the
    customer message id; checker: None delivers every sentence (no grounding)."""

    def __init__(self, models: ModelPorts, delivery: Delivery, ctl: TurnControl, guard: OutputGuard,
                 checker: GroundingChecker | None, *, turn: int, answer_id: int) -> None:
        self.models = models
        self.delivery = delivery
        self.ctl = ctl
        self.guard = guard
        self.checker = checker
        self.turn = turn
        self.answer_id = answer_id
        self.result = StreamResult()
        self._seen: set[str] = set()

    async def run(self, request: GenerationRequest) -> StreamResult:
        """Generate, gate and deliver. Raises Aborted, and what the Generator raises (the caller
        publishes ``aborted`` when tokens already went out)."""
        stream = self.models.generate(request)
        remove_hook = self.ctl.on_abort(stream.cancel)
        pending = ""
        stop = False
        try:
            async for item in stream:
                self.ctl.checkpoint()
                if isinstance(item, Final):
                    self.result.final = item
                    continue
                if not isinstance(item, TokenDelta) or stop:
                    continue
                pending += self.guard.feed(item.text)
                if self.guard.hit:
                    self.result.guard_hit = self.guard.hit
                    stream.cancel()
                    break
                parts = _BOUNDARY.split(pending)
                pending = parts.pop()
                for sentence in parts:
                    if not await self._gate(sentence):
                        stop = True
                        stream.cancel()
                        break
            self.ctl.checkpoint()
            if self.result.guard_hit is None and not stop:
                pending += self.guard.flush()
                self.result.guard_hit = self.guard.hit
                if self.guard.hit is None:
                    for sentence in _BOUNDARY.split(pending):
                        if not await self._gate(sentence):
                            break
        finally:
            remove_hook()
        self.result.text = " ".join(self.result.sentences)
        return self.result

    async def _gate(self, sentence: str) -> bool:
        """Check and deliver one complete sentence; False when it repeats an earlier one."""
        sentence = " ".join(sentence.split())
        if not sentence:
            return True
        key = normalize(sentence)
        if key in self._seen:
            self.result.repeated = True
            return False
        self._seen.add(key)
        if self.guard.repeats_system_text(sentence):
            # The model echoing its instructions is scaffolding, not an answer.
            self.result.removed += 1
            return True
        if self.checker is not None:
            verdict = await self.checker.check_sentence(sentence)
            self.ctl.checkpoint()
            if not verdict.supported:
                self.result.removed += 1
                return True
        piece = sentence if not self.result.sentences else " " + sentence
        self.result.sentences.append(sentence)
        self.result.supported += 1
        if self.delivery.live_tokens:
            seq = self.ctl.tokens_sent
            self.ctl.tokens_sent += 1
            await self.delivery.emit(
                "token", f"{self.answer_id}:{seq}",
                {"message_id": self.answer_id, "seq": seq, "text": piece}, self.turn,
            )
        return True
