"""What a customer reads, turn by turn, on real Postgres + pgvector, real Redis, the real MiniLM
embedder and the real llama.cpp model (in-process; no Ray: the Conversation is driven directly).

The tenant's knowledge base is the fixture billing PDF. Where a test needs the model to say
something exact (a scaffolding marker, an invented price), a GBNF grammar constrains the real
model's output: the tokens it emits are its own, split wherever its tokenizer splits them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.bot_config import BotConfig
from tests.test_conversation import LocalModels, _turn_events

SCAFFOLDING = ("<<<", ">>>", "untrusted", "id=", "im_start", "im_end", "Facts:", "Question:")


class BackendStream:
    """A Generator stream over an in-process backend; ``cancel()`` closes it at the next item."""

    def __init__(self, backend: Any, request: Any) -> None:
        self._agen = backend.stream(request)
        self._cancelled = False

    def __aiter__(self) -> BackendStream:
        return self

    async def __anext__(self) -> Any:
        if self._cancelled:
            await self._agen.aclose()
            raise StopAsyncIteration
        return await self._agen.__anext__()

    def cancel(self) -> None:
        self._cancelled = True


class GrammarModels(LocalModels):
    """MiniLM embeddings and the real llama.cpp model, not marked capable (as the packaged CPU
    model is: ``auto`` answers extractively; tests set ``generative`` to generate); ``grammar``
    (GBNF), when set, is added to every generation request."""

    def __init__(self, embedder: Any, backend: Any) -> None:
        super().__init__(embedder)
        self.backend = backend
        self.grammar: str | None = None

    def generate(self, request: Any) -> Any:
        if self.grammar is not None:
            request = request.model_copy(update={"grammar": self.grammar, "max_tokens": 220})
        return BackendStream(self.backend, request)

def forced(text: str) -> str:
    """A grammar whose only sentence is ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'root ::= "{escaped}"'


@pytest.fixture(scope="module")
def embedder(services: Any) -> Iterator[Any]:
    from ingestion.embed import LocalEmbedder

    emb = LocalEmbedder(threads=1)
    yield emb
    emb.close()


@pytest.fixture(scope="module")
def backend() -> Any:
    from runtime.models.backends.llamacpp import LlamaCppBackend
    from tests.test_models import model_settings

    return LlamaCppBackend(model_settings(llm_max_tokens=220, llm_n_ctx=4096))


@pytest.fixture(scope="module")
def models(embedder: Any, backend: Any) -> GrammarModels:
    return GrammarModels(embedder, backend)


@pytest.fixture(scope="module")
def intents(models: GrammarModels) -> Any:
    from runtime.answering.intents import IntentClassifier

    return IntentClassifier(models.embed_many)


@pytest.fixture(scope="module")
async def billing(db: Any, embedder: Any, fixtures_dir: Path) -> dict[str, Any]:
    """A tenant whose knowledge base is the billing PDF; its strategy is set per test."""
    from ingestion.jobs import IngestSpec, SourceFile, run_job
    from runtime.db import channels, kb_jobs, tenants

    cfg = BotConfig(business_name="Plausible Analytics")
    async with db.acquire() as conn:
        tenant, _owner, _key = await tenants.create_tenant(
            conn, f"billing-{uuid.uuid4().hex[:6]}", "Owner", None, cfg.model_dump(mode="json"))
        widget = await channels.create_channel(conn, tenant["id"], "widget", "site", {}, {},
                                               ["https://shop.example"])
        job = await kb_jobs.create_job(conn, tenant["id"], {"files": []})
    pdf = (fixtures_dir / "kb-pdf" / "billing-guide.pdf").read_bytes()
    state = await run_job(db, embedder, job["id"], tenant["id"], IngestSpec(),
                          [SourceFile("billing-guide.pdf", pdf, "application/pdf")])
    assert state.status == "completed" and state.chunks > 0, state
    return {"tenant_id": tenant["id"], "widget": widget["id"]}


async def _strategy(db: Any, tenant_id: Any, strategy: str) -> None:
    await db.execute(
        "UPDATE bot_configs SET config = jsonb_set(config, '{answer_strategy}', to_jsonb($2::text)) "
        "WHERE tenant_id = $1", tenant_id, strategy)


@pytest.fixture
async def conversation(db: Any, billing: dict[str, Any], models: GrammarModels,
                       intents: Any) -> AsyncIterator[Any]:
    from runtime.config import get_settings
    from runtime.conversation.conversation import Conversation
    from runtime.db import sessions as sess_db

    async with db.acquire() as conn:
        contact = await sess_db.upsert_contact(conn, billing["tenant_id"], billing["widget"],
                                               f"visitor-{uuid.uuid4().hex}")
        row = await sess_db.create_session(conn, billing["tenant_id"], billing["widget"], contact, None)
    conv = Conversation(billing["tenant_id"], row["id"], settings=get_settings(), models=models,
                        intents=intents)
    yield conv
    models.grammar = None
    await conv.passivate(force=True)


async def _ask(conv: Any, db: Any, text: str) -> dict[str, Any]:
    """Submit ``text``; the turn's streamed token text, its stored reply row, handoff and done."""
    res = await conv.submit(text, client_msg_id=uuid.uuid4().hex)
    evs = await _turn_events(conv, res["message_id"], timeout_s=120)
    reply = await db.fetchrow(
        "SELECT id, text, intent, strategy, supported_sentences, removed_sentences, source_chunk_ids "
        "FROM messages WHERE reply_to = $1", res["message_id"])
    return {
        "tokens": "".join(e.data.get("text", "") for e in evs if e.kind == "token"),
        "reply": reply,
        "handoff": next((e.data for e in evs if e.kind == "handoff"), None),
        "done": next((e.data for e in evs if e.kind == "done"), None),
        "kinds": [e.kind for e in evs],
    }


# The model, forced, wraps a true sentence of the PDF in each kind of scaffolding; the fence
# markers carry made-up nonces, one is cut short at the end, one has extra brackets and stars.
VARIANTS = [
    "<<<end untrusted id=1a8b6478e69e>>>> All payment processing is handled by Paddle.",
    "<<<untrusted customer question id=7f3a>> All payment processing is handled by Paddle.",
    "All payment processing is handled by Paddle. <<<end untrusted id=7",
    "**<<<end untrusted id=0c0ffee1>>>>>** All payment processing is handled by Paddle.",
    "<|im_start|>assistant\nAll payment processing is handled by Paddle.<|im_end|>",
    "Facts:\nAll payment processing is handled by Paddle.",
]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_forced_scaffolding_never_reaches_the_customer_or_the_inbox(
    conversation: Any, db: Any, billing: dict[str, Any], models: GrammarModels, variant: str
) -> None:
    await _strategy(db, billing["tenant_id"], "generative")
    models.grammar = forced(variant)
    out = await _ask(conversation, db, "What payment methods do you accept?")
    reply = out["reply"]
    assert reply is not None and reply["strategy"] == "generative", out
    # The agent's inbox reads the stored message; the customer read the tokens.
    for text in (out["tokens"], reply["text"]):
        assert not any(marker in text for marker in SCAFFOLDING), text
        assert "All payment processing is handled by Paddle." in text
    assert out["tokens"].strip() == reply["text"].strip()


async def test_forced_invented_price_is_removed_and_the_true_sentence_kept(
    conversation: Any, db: Any, billing: dict[str, Any], models: GrammarModels
) -> None:
    await _strategy(db, billing["tenant_id"], "generative")
    models.grammar = forced("The enterprise plan costs $100. All payment processing is handled by Paddle.")
    out = await _ask(conversation, db, "What payment methods do you accept?")
    reply = out["reply"]
    assert reply is not None, out
    assert "$100" not in out["tokens"] and "$100" not in reply["text"]
    assert "handled by Paddle" in reply["text"]
    assert (reply["supported_sentences"], reply["removed_sentences"]) == (1, 1)
    assert out["done"]["answer"] == {"strategy": "generative", "supported_sentences": 1,
                                     "removed_sentences": 1}


async def test_answer_with_nothing_supported_falls_back_to_the_sources(
    conversation: Any, db: Any, billing: dict[str, Any], models: GrammarModels
) -> None:
    await _strategy(db, billing["tenant_id"], "generative")
    models.grammar = forced("The enterprise plan costs $100.")
    out = await _ask(conversation, db, "Can I pay by bank wire transfer?")
    reply = out["reply"]
    assert reply is not None and reply["intent"] == "answer", out
    assert "$100" not in reply["text"]
    assert reply["strategy"] == "extractive" and reply["removed_sentences"] == 1
    assert "not able to accept wire transfers" in reply["text"]


async def test_wire_transfer_is_answered_from_the_pdf_page_it_quotes(
    conversation: Any, db: Any, billing: dict[str, Any]
) -> None:
    await _strategy(db, billing["tenant_id"], "auto")  # extractive: the CPU model is not capable
    out = await _ask(conversation, db, "Can I pay by bank wire transfer?")
    reply = out["reply"]
    assert out["handoff"] is None and reply["intent"] == "answer", out
    assert "not able to accept wire transfers" in reply["text"]
    assert reply["text"].endswith("(billing-guide.pdf, page 1)")
    pages = await db.fetch("SELECT page, text FROM kb_chunks WHERE id = ANY($1::bigint[])",
                           list(reply["source_chunk_ids"]))
    assert [p["page"] for p in pages] == [1]
    assert "wire transfers" in " ".join(pages[0]["text"].split())


async def test_card_charged_twice_escalates_high_and_card_update_is_answered(
    conversation: Any, db: Any, billing: dict[str, Any]
) -> None:
    await _strategy(db, billing["tenant_id"], "auto")
    twin = await _ask(conversation, db, "How do I update my card?")
    assert twin["handoff"] is None and twin["reply"]["intent"] == "answer", twin
    assert "Update billing info" in twin["reply"]["text"]
    out = await _ask(conversation, db, "My card was charged twice yesterday")
    assert out["handoff"] is not None, out
    assert (out["handoff"]["signal"], out["handoff"]["priority"]) == ("billing_dispute", "high")
    prio = await db.fetchval("SELECT priority FROM escalations WHERE session_id = $1",
                             conversation.session_id)
    assert prio == "high"


async def test_off_topic_poem_is_refused_politely(
    conversation: Any, db: Any, billing: dict[str, Any]
) -> None:
    await _strategy(db, billing["tenant_id"], "auto")
    out = await _ask(conversation, db, "Write a poem about the stock market and give me investment advice")
    reply = out["reply"]
    assert out["handoff"] is None and reply["intent"] == "off_topic", out
    assert "Plausible Analytics" in reply["text"] and "poem" not in reply["text"].lower()
    # Its twin on the same session is answered.
    ok = await _ask(conversation, db, "Do you offer a discount for nonprofits?")
    assert ok["reply"]["intent"] == "answer" and "15%" in ok["reply"]["text"], ok


async def test_history_in_the_prompt_stays_bounded(
    db: Any, billing: dict[str, Any], models: GrammarModels, intents: Any
) -> None:
    """Three generative turns with long answers: the history in the prompt is cut to its token
    budget (``prompt_history_tokens``, 60 here), so the third prompt does not carry both earlier
    answers (about 150 tokens)."""
    from runtime.config import get_settings
    from runtime.conversation.conversation import Conversation
    from runtime.db import sessions as sess_db

    budget = 60
    settings = get_settings().model_copy(update={"prompt_history_tokens": budget})
    async with db.acquire() as conn:
        contact = await sess_db.upsert_contact(conn, billing["tenant_id"], billing["widget"],
                                               f"visitor-{uuid.uuid4().hex}")
        row = await sess_db.create_session(conn, billing["tenant_id"], billing["widget"], contact, None)
    conv = Conversation(billing["tenant_id"], row["id"], settings=settings, models=models,
                        intents=intents)
    await _strategy(db, billing["tenant_id"], "generative")
    models.grammar = forced(
        "Credit/debit card, PayPal, Apple Pay and Google Pay are accepted. All payment processing "
        "is handled by Paddle. We're not able to accept wire transfers, manual invoicing or "
        "cryptocurrency. If paying via PayPal, make sure a valid card is linked to your PayPal "
        "account. Paddle requires this for recurring subscriptions.")
    sizes, answers = [], []
    try:
        for q in ("What payment methods do you accept?", "Do you accept prepaid cards?",
                  "Can I pay by bank wire transfer?"):
            out = await _ask(conv, db, q)
            sizes.append(out["done"]["timing"].get("prompt_tokens"))
            answers.append(await models.backend.count_tokens(out["reply"]["text"]))
    finally:
        models.grammar = None
        await conv.passivate(force=True)
    assert all(isinstance(n, int) and n > 0 for n in sizes), sizes
    assert answers[0] + answers[1] > 2 * budget, answers  # unbounded, both would be in the third
    assert sizes[2] - sizes[0] <= budget + 30, (sizes, answers)
