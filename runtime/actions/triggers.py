"""What starts an action: rules and example phrases (``triggers.toml``), matched the way intent
signals are (:class:`runtime.answering.intents.IntentClassifier`: rules first, then the nearest
examples in the Embedder's space with a per-trigger threshold and counter-examples).

The examples are embedded once per process, and only when a tenant of this process has an action
set up (a tenant without actions never pays for them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.answering.intents import EmbedMany, IntentClassifier, IntentMatch, load_intents

TRIGGERS_FILE = Path(__file__).with_name("triggers.toml")
# trigger -> the action it starts
TRIGGER_ACTIONS = {
    "order_status": "order_status",
    "booking_new": "bookings",
    "booking_lookup": "bookings",
    "booking_cancel": "bookings",
}

_SHARED: IntentClassifier | None = None


def trigger_classifier(embed_many: EmbedMany) -> IntentClassifier:
    """The process's trigger classifier (created on first use; ``embed_many`` embeds its examples
    once, in ``prepare``)."""
    global _SHARED
    if _SHARED is None:
        specs = load_intents(TRIGGERS_FILE)
        unknown = {s.name for s in specs} - set(TRIGGER_ACTIONS)
        if unknown:
            raise ValueError(f"{TRIGGERS_FILE}: triggers without an action: {sorted(unknown)}")
        _SHARED = IntentClassifier(embed_many, specs)
    return _SHARED


async def match_trigger(classifier: IntentClassifier, text: str, vec: np.ndarray | None,
                        enabled: set[str]) -> IntentMatch | None:
    """The trigger ``text`` matches among actions in ``enabled``, or None. vec: the text's
    embedding (float32 (dim,), L2-normalised)."""
    if not enabled:
        return None
    await classifier.prepare()
    match = classifier.classify(text, vec)
    if match is None or TRIGGER_ACTIONS.get(match.intent) not in enabled:
        return None
    return match
