"""The shapes of messages and cited sources on the wire (session events and the message APIs).

One place for both, so the widget, the agent API and channel deliveries agree on them. DESIGN.md,
HTTP API: ``message {id, sender, text, sources[], agent_name?, created_at}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class SourceOut(BaseModel):
    """A cited source: chunk/document ids, where it came from (URL or file name, title, section,
    PDF page) and its cosine similarity to the question."""

    chunk_id: int
    document_id: str
    source: str
    title: str | None
    section: str | None
    page: int | None
    similarity: float


class MessageOut(BaseModel):
    """A delivered message. sender: customer | ai | agent | system; intent: why the bot said it
    (answer, lead_ask, escalation, off_topic, media_only, ...); created_at: ISO 8601."""

    id: int
    sender: str
    text: str
    sources: list[SourceOut] = []
    created_at: str | None
    agent_name: str | None = None
    intent: str | None = None
    attachments: list[dict[str, Any]] | None = None
    source_chunk_ids: list[int] | None = None
    status: str | None = None


def message_payload(row: Any) -> dict[str, Any]:
    """The ``message`` event / API shape of a message row (optional keys only when set)."""
    created = row["created_at"]
    keys = set(row.keys()) if hasattr(row, "keys") else set()  # asyncpg: an iterator
    out: dict[str, Any] = {
        "id": row["id"], "sender": row["sender"], "text": row["text"],
        "sources": [], "created_at": created.isoformat() if created else None,
    }
    for key in ("agent_name", "intent", "attachments"):
        if key in keys and row[key]:
            out[key] = row[key]
    if "source_chunk_ids" in keys and row["source_chunk_ids"]:
        out["source_chunk_ids"] = list(row["source_chunk_ids"])
    return out


def source_payload(chunk: Any) -> dict[str, Any]:
    """A cited source (``runtime.retrieval.RetrievedChunk`` -> :class:`SourceOut` dict)."""
    return {
        "chunk_id": int(chunk.chunk_id), "document_id": str(chunk.document_id),
        "source": chunk.source, "title": chunk.title, "section": chunk.section,
        "page": chunk.page, "similarity": round(float(chunk.similarity), 4),
    }
