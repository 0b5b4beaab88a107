"""Negative-sentiment signal using VADER (``vaderSentiment``), an offline lexicon analyzer.

VADER's *compound* score is a float in [-1.0, 1.0]: about -0.05..0.05 is neutral, -1.0 is as
negative as it gets. The analyzer loads its lexicon once per process (~10 ms) and is then safe to
share: scoring reads only.
"""

from __future__ import annotations

import threading
from typing import Any

_MAX_CHARS = 5_000  # VADER is linear in length; longer messages are scored on their start.
_lock = threading.Lock()
_analyzer: Any = None


def _get_analyzer() -> Any:
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def sentiment_score(text: str) -> float:
    """VADER compound score of ``text`` in [-1.0, 1.0]; 0.0 for blank text.

    Only the first 5000 characters are scored.
    """
    if not text or not text.strip():
        return 0.0
    scores = _get_analyzer().polarity_scores(text[:_MAX_CHARS])
    return float(scores["compound"])


def is_negative(text: str, threshold: float) -> tuple[bool, float]:
    """Return ``(score <= threshold, score)`` for the VADER compound ``score`` of ``text``.

    ``threshold`` is a compound score in [-1.0, 1.0] (e.g. -0.6); raises ``ValueError`` outside
    that range.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"sentiment threshold must be within [-1.0, 1.0], got {threshold}")
    score = sentiment_score(text)
    return score <= threshold, score
