"""The handoff context an agent reads before answering (seed 001, 6.5): a summary of the
conversation, the trigger and its priority, the captured contact, the question that triggered
it, the knowledge-base snippets the bot used, and the intents it saw.

The summary is extractive: it is assembled from the conversation's own messages and the
escalation row (no model call), so it is instant and says nothing the conversation did not.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

MAX_QUOTE = 140


def _quote(text: str | None) -> str:
    t = " ".join((text or "").split())
    return "“" + (t if len(t) <= MAX_QUOTE else t[: MAX_QUOTE - 1].rstrip() + "…") + "”"


def _contact(facts: dict[str, Any]) -> dict[str, Any] | None:
    c = facts.get("contact")
    leads = facts.get("leads") or []
    if c is None and not leads:
        return None
    out = {"id": str(c["id"]) if c else None, "name": c["name"] if c else None,
           "email": c["email"] if c else None, "phone": c["phone"] if c else None}
    for lead in leads:  # what lead capture got, where the contact row has nothing
        for key in ("name", "email", "phone"):
            out[key] = out[key] or lead[key]
    return out


def handoff_context(messages: list[dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """The context of a conversation.

    messages: the conversation's message payloads (``sender``, ``text``, ``intent``,
    ``sources``), oldest first; facts: :func:`runtime.db.inbox.handoff_facts`. Returns
    ``{summary, trigger, question, contact, leads, kb_snippets, detected_intents}``; trigger is
    None for a conversation that never escalated.
    """
    esc = facts.get("escalation")
    customer = [m for m in messages if m["sender"] == "customer" and (m.get("text") or "").strip()]
    answers = [m for m in messages if m["sender"] == "ai" and m.get("intent") == "answer"]
    agents = sorted({m.get("agent_name") or "an agent" for m in messages if m["sender"] == "agent"})
    contact = _contact(facts)

    parts: list[str] = []
    if customer:
        parts.append(f"The customer wrote {len(customer)} message{'s' if len(customer) != 1 else ''}, "
                     f"starting with {_quote(customer[0]['text'])}.")
        if len(customer) > 1:
            parts.append(f"Latest: {_quote(customer[-1]['text'])}.")
    else:
        parts.append("The customer has not written yet.")
    if answers:
        titles = []
        for m in answers:
            for s in m.get("sources") or []:
                if s.get("title") and s["title"] not in titles:
                    titles.append(s["title"])
        cited = f" (citing {', '.join(titles[:3])})" if titles else ""
        parts.append(f"The bot answered {len(answers)} question{'s' if len(answers) != 1 else ''} from "
                     f"the knowledge base{cited}.")
    if esc is not None:
        why = esc["reason"].rstrip(".")
        parts.append(f"Escalated ({esc['priority']} priority): {why}"
                     + (f", on {_quote(esc['question'])}." if esc["question"] else "."))
    if agents:
        parts.append(f"Agent{'s' if len(agents) > 1 else ''} in the conversation: {', '.join(agents)}.")
    if contact and (contact["name"] or contact["email"] or contact["phone"]):
        known = ", ".join(v for v in (contact["name"], contact["email"], contact["phone"]) if v)
        parts.append(f"Contact: {known}.")
    else:
        parts.append("No contact details captured.")

    snippets: list[dict[str, Any]] = []
    seen: set[int] = set()
    for m in reversed(answers):
        for s in m.get("sources") or []:
            if s.get("chunk_id") in seen or len(snippets) >= 5:
                continue
            seen.add(s.get("chunk_id"))
            snippets.append({"title": s.get("title"), "source": s.get("source"), "snippet": s.get("snippet")})
    intents = Counter(m.get("intent") for m in messages if m["sender"] == "ai" and m.get("intent"))
    trigger = None
    if esc is not None:
        trigger = {"reason": esc["reason"], "signal": esc["signal"], "priority": esc["priority"],
                   "escalated_at": esc["created_at"].isoformat(),
                   "claimed_at": esc["claimed_at"].isoformat() if esc["claimed_at"] else None,
                   "sla_breached_at": esc["sla_breached_at"].isoformat() if esc["sla_breached_at"] else None}
    return {
        "summary": " ".join(parts),
        "trigger": trigger,
        "question": esc["question"] if esc is not None else None,
        "contact": contact,
        "leads": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(r).items()}
                  for r in facts.get("leads") or []],
        "kb_snippets": snippets,
        "detected_intents": [{"name": k, "count": v} for k, v in intents.most_common()],
    }
