"""Top unanswered questions: what the bot could not answer (low-coverage escalations) or answered
only from weak sources, grouped by meaning so the owner answers each question once.

Questions are embedded (the Embedder deployment, or the CLI's local model: all-MiniLM-L6-v2 by
default) and clustered by scikit-learn's agglomerative clustering, average linkage on cosine
distance, cut at ``distance`` (``CHAT_ENGINE_ANALYTICS_CLUSTER_DISTANCE``, 0.40). Measured with
MiniLM: paraphrases of one question ("Do you ship to Canada?", "Can I get my order delivered to
Canada?", "Is shipping to Canada available?", "Could my parcel be shipped to Canada?") are
0.73-0.89 similar, and those of another ("Can I pay with Bitcoin?", "Do you accept
cryptocurrency like bitcoin as payment?") 0.68; different questions are under 0.3 similar. The
limit: one template with another entity is close too ("Do you ship to Australia?" is 0.49-0.75
similar to the Canada wordings, 0.404 average distance: it stays apart at 0.40 by a hair, and
joins from 0.41). A cluster's canonical question is its member nearest the (normalised)
centroid.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID

import numpy as np
from pydantic import BaseModel, Field

from runtime.answering.coverage import WEAK_MARGIN
from runtime.db import Conn
from runtime.db import analytics as an_db
from runtime.retrieval import embed_texts

MAX_EXAMPLES = 5


class UnansweredCluster(BaseModel):
    """Questions that mean the same, most asked first."""

    question: str = Field(description="the canonical question: the member nearest the centroid")
    count: int = Field(description="times asked in the range")
    escalations: int = Field(description="of which the bot could not answer (low-coverage escalations)")
    weak_answers: int = Field(description="of which answered from weak sources only")
    examples: list[str] = Field(description=f"up to {MAX_EXAMPLES} distinct wordings, most frequent first")
    channels: dict[str, int] = Field(description="times asked per channel type")
    last_asked_at: datetime
    escalation_ids: list[UUID] = Field(description="pass to add-to-kb: they are marked answered")
    message_ids: list[int] = Field(description="the weak-answer turns' customer messages, for add-to-kb")


def weak_threshold(min_similarity: float) -> float:
    """Answers whose best source is under this similarity are weak (``runtime.answering.coverage``:
    covered but within ``WEAK_MARGIN`` of the tenant's ``min_similarity``)."""
    return float(min_similarity) + WEAK_MARGIN


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def cluster_vectors(vectors: np.ndarray, distance: float) -> list[list[int]]:
    """Row indices of ``vectors`` (n, dim) grouped by agglomerative clustering (average linkage,
    cosine distance, cut at ``distance``), largest group first."""
    n = int(vectors.shape[0])
    if n == 0:
        return []
    if n == 1:
        return [[0]]
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=distance).fit_predict(vectors)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def canonical_index(vectors: np.ndarray) -> int:
    """The row nearest the normalised centroid of ``vectors`` (rows L2-normalised)."""
    centroid = vectors.mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    if norm > 0:
        centroid = centroid / norm
    return int(np.argmax(vectors @ centroid))


async def unanswered_clusters(
    conn: Conn, embedder: Any, tenant_id: UUID, start: datetime, end: datetime,
    channel: str | None, *, min_similarity: float, distance: float, max_questions: int,
    max_clusters: int,
) -> list[UnansweredCluster]:
    """The range's unanswered questions (at most ``max_questions``, newest first; see
    :func:`runtime.db.analytics.unanswered_questions`) in clusters, most asked first, at most
    ``max_clusters``. embedder: the Embedder handle or a local embedder. Identical wordings
    (case and spacing aside) are embedded once. Raises what the embedder raises."""
    rows = await an_db.unanswered_questions(conn, tenant_id, start, end, channel,
                                            weak_threshold(min_similarity), max_questions)
    if not rows:
        return []
    # One vector per distinct wording; the clustering weighs each wording once (a question asked
    # 30 times does not drag its neighbours in), the counts come from the rows.
    wordings: dict[str, list[Any]] = {}
    for r in rows:
        wordings.setdefault(_key(r["question"]), []).append(r)
    keys = list(wordings)
    texts = [wordings[k][0]["question"] for k in keys]
    vectors = await embed_texts(embedder, texts)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    clusters: list[UnansweredCluster] = []
    for group in cluster_vectors(vectors, distance):
        members = [r for i in group for r in wordings[keys[i]]]
        centre = group[canonical_index(vectors[group])]
        freq = Counter(r["question"] for r in members)
        by_wording = sorted({_key(q): q for q in freq}.values(), key=lambda q: -freq[q])
        clusters.append(UnansweredCluster(
            question=texts[centre], count=len(members),
            escalations=sum(r["kind"] == "escalation" for r in members),
            weak_answers=sum(r["kind"] == "weak_answer" for r in members),
            examples=by_wording[:MAX_EXAMPLES],
            channels=dict(Counter(r["channel"] for r in members)),
            last_asked_at=max(r["created_at"] for r in members),
            escalation_ids=[UUID(r["ref"]) for r in members if r["kind"] == "escalation"],
            message_ids=[int(r["ref"]) for r in members if r["kind"] == "weak_answer"],
        ))
    clusters.sort(key=lambda c: (-c.count, -c.last_asked_at.timestamp()))
    return clusters[:max_clusters]
