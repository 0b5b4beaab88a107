"""The turn pipeline: from a customer message to a decision, with no side effects.

:meth:`TurnPipeline.decide` runs the steps of a turn in order and returns the first that settles
it: the inbox (a human has the session, or the bot is paused), the media-only note, the policy
signals (tenant keywords, a request for a human, sentiment, repeated failure, amounts, prompt
injection), lead capture (ask for an email before a gated topic; take the email; answer the held-
back question), intent signals matched in embedding space (refund, billing dispute, legal threat,
wants a human: escalate), actions (:mod:`runtime.actions`: a pending action step first, right after
the policy; then a message that triggers an action the tenant set up: order status, bookings), small
talk and off-topic by a precise rule (a polite refusal), then retrieval and the
coverage decision: answer from the chunks, or escalate as "could not answer" (off-topic by
resemblance is refused instead, and only when the knowledge base does not cover the question).
Every await is followed by an abort checkpoint, so a takeover during embedding or search stops the
turn before it says anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from runtime.actions.engine import ActionEngine
from runtime.actions.types import ActionSession, Step
from runtime.answering.coverage import assess_coverage
from runtime.answering.intents import IntentClassifier, refusal_text
from runtime.bot_config import BotConfig
from runtime.conversation.control import TurnControl
from runtime.conversation.decisions import (
    INVALID_EMAIL_REPLY,
    MEDIA_ONLY_REPLY,
    Act,
    Answer,
    CapturedLead,
    Escalate,
    InboundMessage,
    Outcome,
    Reply,
    ToInbox,
)
from runtime.conversation.ports import ModelPorts
from runtime.conversation.state import PendingLead, SessionState
from runtime.policy.engine import PolicyEngine
from runtime.policy.leads import check_email_reply, declines_to_share, find_lead_rule

log = logging.getLogger(__name__)

Retrieve = Callable[[str, np.ndarray], Awaitable[list[Any]]]
# A greeting gets the tenant's greeting; thanks gets a short close. Neither is a question.
SMALL_TALK = {"greeting": "", "thanks": "You're welcome! Anything else I can help with?"}
def is_start_command(text: str) -> bool:
    """Telegram's ``/start`` (``/start payload``, ``/start@BotName``)."""
    head = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    return head.split("@", 1)[0] == "/start"


ESCALATING_INTENTS = {
    "refund": "The customer asks for a refund.",
    "billing_dispute": "The customer disputes a charge.",
    "legal_threat": "The customer mentions legal action.",
    "human_request": "The customer asked to talk to a human.",
}


def step_outcome(step: Step, question: str, state: SessionState,
                 lead: CapturedLead | None = None) -> Outcome:
    """An action step as a turn decision: a Reply, an Act (a request to execute) or an Escalate;
    the state carries the action's pending step and failed-lookup count."""
    update: dict[str, Any] = {"action": step.pending}
    if step.failures is not None:
        update["action_failures"] = step.failures
    new = state.model_copy(update=update)
    if step.handoff is not None:
        h = step.handoff
        return Outcome(Escalate(h.reason, h.signal, question, h.detail, h.priority),
                       new.model_copy(update={"action": None}), lead)
    if step.request is not None:
        return Outcome(Act(step.request), new, lead)
    return Outcome(Reply(step.text, step.intent), new, lead)


class TurnPipeline:
    """Decides one turn. models: embeddings (and the intent examples' embeddings); retrieve:
    ``(question, question_vec) -> chunks`` best first; intents: the shared classifier (its
    examples are embedded once per process); actions: the session's action engine (None: no
    actions, e.g. tests without a database)."""

    def __init__(self, models: ModelPorts, retrieve: Retrieve, intents: IntentClassifier,
                 policy: PolicyEngine | None = None, actions: ActionEngine | None = None) -> None:
        self.models = models
        self.retrieve = retrieve
        self.intents = intents
        self.policy = policy or PolicyEngine()
        self.actions = actions

    async def decide(
        self, msg: InboundMessage, cfg: BotConfig, state: SessionState, *, status: str,
        paused: bool, contact_has_email: Callable[[], Awaitable[bool]], ctl: TurnControl,
        who: ActionSession | None = None,
    ) -> Outcome:
        """The decision for ``msg``. status: the session's status now; paused: the tenant's bot
        is paused or out of credit; who: the customer, for actions (None: no actions). Raises
        Aborted (at a checkpoint) and what the models and Postgres raise."""
        if status != "ai_handled":
            return Outcome(ToInbox(f"the session is {status}"), state)
        if paused:
            notice = None if state.paused_notice_sent else cfg.paused_message
            return Outcome(ToInbox("the bot is paused", notice),
                           state.model_copy(update={"paused_notice_sent": True}))
        text = msg.text
        if msg.attachments or not text.strip():
            # The bot reads no images, voice notes or files: the customer is told, and the
            # attachment (and any caption) waits for a human in the inbox.
            return Outcome(Reply(MEDIA_ONLY_REPLY, "media_only", "inbox", notify_inbox=True), state)
        if is_start_command(text):  # Telegram's /start opens a chat: the greeting, not a search
            return Outcome(Reply(cfg.greeting, "greeting"), state)

        # Repeated failure is judged after retrieval: a well-covered question is answered even
        # after weak ones, and ends the streak.
        decision = self.policy.evaluate(text, cfg.escalation)
        if decision.escalate:
            return Outcome(Escalate(decision.reason or "policy", decision.signal, text,
                                    decision.detail), state)

        actions = self.actions if who is not None else None
        if actions is not None and who is not None and state.action is not None:
            step = await actions.resume(text, state.action, who)
            ctl.checkpoint()
            if step is not None:
                return step_outcome(step, text, state)
            state = state.model_copy(update={"action": None})  # not an answer to it: move on

        question, lead, state = await self._lead_capture(text, cfg, state, contact_has_email, ctl)
        if isinstance(question, Reply):
            return Outcome(question, state)

        vec = await self.models.embed(question)
        ctl.checkpoint()
        await self.intents.prepare()
        ctl.checkpoint()
        intent = self.intents.classify(question, vec)
        if intent is not None and intent.intent in ESCALATING_INTENTS:
            return Outcome(Escalate(ESCALATING_INTENTS[intent.intent], intent.intent, question,
                                    {"score": round(float(intent.score), 4),
                                     "example": intent.example, "via": intent.via},
                                    intent.priority or "normal"), state, lead)
        if actions is not None and who is not None:
            step = await actions.start(question, vec, who)
            ctl.checkpoint()
            if step is not None:
                return step_outcome(step, question, state, lead)
        if intent is not None and intent.intent in SMALL_TALK:
            text_out = cfg.greeting if intent.intent == "greeting" else SMALL_TALK[intent.intent]
            return Outcome(Reply(text_out, intent.intent), state, lead)
        off_topic = intent is not None and intent.intent == "off_topic"
        if off_topic and intent is not None and intent.via == "rule":
            return Outcome(Reply(refusal_text(cfg.business_name, []), "off_topic"), state, lead)

        chunks = await self.retrieve(question, vec)
        ctl.checkpoint()
        coverage = assess_coverage(chunks, min_similarity=cfg.escalation.min_similarity)
        if not coverage.covered and off_topic:
            # Off-topic by resemblance only counts when this tenant's knowledge base does not
            # cover it: "a recipe for pizza dough" is a fair question for a pizzeria.
            return Outcome(Reply(refusal_text(cfg.business_name, []), "off_topic"), state, lead)
        if not coverage.covered:
            weak = state.model_copy(update={"weak_streak": state.weak_streak + 1})
            return Outcome(Escalate("could not answer: " + coverage.reason, "low_coverage",
                                    question, coverage.detail), weak, lead)
        streak = state.weak_streak + 1 if coverage.weak else 0
        if coverage.weak:
            # After max weak answers in a row, another weak one goes to a human instead.
            again = self.policy.check_repeated_failure(state.weak_streak,
                                                       cfg.escalation.max_low_coverage_turns)
            if again.escalate:
                return Outcome(Escalate(again.reason or "repeated failure", again.signal, question,
                                        {**again.detail, **coverage.detail}),
                               state.model_copy(update={"weak_streak": streak}), lead)
        return Outcome(Answer(question, vec, chunks, coverage.detail),
                       state.model_copy(update={"weak_streak": streak}), lead)

    async def _lead_capture(
        self, text: str, cfg: BotConfig, state: SessionState,
        contact_has_email: Callable[[], Awaitable[bool]], ctl: TurnControl,
    ) -> tuple[str | Reply, CapturedLead | None, SessionState]:
        """(the question to answer, or a Reply that settles the turn; a captured lead; state)."""
        pending = state.lead
        if pending is not None:
            check = check_email_reply(text)
            cleared = state.model_copy(update={"lead": None})
            if check.email:
                return pending.question, CapturedLead(check.email, pending.topic, pending.question), cleared
            if declines_to_share(text):
                return pending.question, None, cleared
            error = check.error or "no email address found"
            return Reply(INVALID_EMAIL_REPLY.format(error=error), "invalid_email"), None, state
        found = find_lead_rule(text, cfg.lead_capture)
        if found is not None:
            has_email = await contact_has_email()
            ctl.checkpoint()
            if not has_email:
                rule, topic = found
                held = state.model_copy(update={"lead": PendingLead(question=text, topic=topic)})
                return Reply(rule.ask_message, "lead_ask"), None, held
        return text, None, state
