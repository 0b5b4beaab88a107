"""Intent signals with the real MiniLM embedder: held-out phrasings (none is a copy of an example
in runtime/answering/intents.toml) must reach their intent, and ordinary support questions on the
same topics (the positive twins) must reach none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runtime.answering.intents import IntentClassifier, load_intents, refusal_text
from runtime.text import normalize


@pytest.fixture(scope="module")
def local() -> Iterator[Any]:
    from ingestion.embed import LocalEmbedder

    emb = LocalEmbedder(threads=1)
    yield emb
    emb.close()


@pytest.fixture(scope="module")
async def classifier(local: Any) -> IntentClassifier:
    c = IntentClassifier(local.embed_many)
    await c.prepare()
    return c


async def _classify(classifier: IntentClassifier, local: Any, text: str) -> Any:
    return classifier.classify(text, await local.embed(text))


HELD_OUT = [
    ("my card was charged twice", "billing_dispute"),
    ("There's a payment to you on my bank statement that I don't recognise", "billing_dispute"),
    ("you took 49 dollars from me two times this month", "billing_dispute"),
    ("I want a refund for last month, I barely used it", "refund"),
    ("please send my money back, this tool is not for me", "refund"),
    ("If this isn't fixed by Friday my lawyer will be in touch", "legal_threat"),
    ("we will be pursuing this in small claims court", "legal_threat"),
    ("Can I speak to a real person please?", "human_request"),
    ("is there an actual human on the other end?", "human_request"),
    ("Write a poem about the stock market and give me investment advice", "off_topic"),
    ("What's the weather going to be like in Paris tomorrow?", "off_topic"),
    ("Good afternoon!", "greeting"),
    ("thank you very much", "thanks"),
]

TWINS = [
    "How do I update my card?",
    "What is your refund policy?",
    "What payment methods do you accept?",
    "How do I get an invoice?",
    "Can I change my plan later?",
    "How do I cancel my subscription?",
    "What happens if I go over my pageview limit?",
    "Do you offer a nonprofit discount?",
    "How do I invite a team member?",
    "Where do I find the terms of service?",
    "Hello, how do I cancel my subscription?",
    "Thanks, but how do I export my stats?",
]


@pytest.mark.parametrize(("text", "intent"), HELD_OUT)
async def test_held_out_phrasing_reaches_its_intent(classifier: IntentClassifier, local: Any,
                                                    text: str, intent: str) -> None:
    examples = {normalize(e) for spec in load_intents() for e in spec.examples}
    assert normalize(text) not in examples, "held-out phrasings must not be copies of examples"
    match = await _classify(classifier, local, text)
    assert match is not None and match.intent == intent, (text, match)


@pytest.mark.parametrize("text", TWINS)
async def test_ordinary_support_question_has_no_intent(classifier: IntentClassifier, local: Any,
                                                       text: str) -> None:
    match = await _classify(classifier, local, text)
    assert match is None, (text, match)


async def test_priorities_follow_the_seeds(classifier: IntentClassifier, local: Any) -> None:
    """Seeds 000/004: duplicate charges and refunds go to an agent with high priority."""
    dispute = await _classify(classifier, local, "my card was charged twice")
    refund = await _classify(classifier, local, "I want my money back")
    legal = await _classify(classifier, local, "my attorney will contact you")
    assert (dispute.priority, refund.priority, legal.priority) == ("high", "high", "critical")


def test_refusal_says_what_the_bot_can_help_with() -> None:
    text = refusal_text("Plausible Analytics", ["billing", "the dashboard"])
    assert text.startswith("Sorry, I can't help with that")
    assert "Plausible Analytics" in text and "billing, the dashboard" in text
