"""Owner-written question/answer pairs: embedded and searchable as soon as the call returns."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg

from ingestion.chunking import Chunker, Section
from ingestion.store import content_hash, store_document
from runtime.errors import InvalidInput

MAX_QUESTION_CHARS = 1000
MAX_ANSWER_CHARS = 20000
_chunker: Chunker | None = None


def _get_chunker() -> Chunker:
    global _chunker
    if _chunker is None:
        _chunker = Chunker()
    return _chunker


def qa_source(question: str, source: str = "qa") -> str:
    """The document source of a Q&A entry: ``<source>:<16 hex>`` from the normalised question,
    so adding the same question again replaces its answer."""
    return f"{source}:{content_hash(' '.join(question.lower().split()))[:16]}"


async def add_qa(
    pool: asyncpg.Pool, embedder: Any, tenant_id: UUID, question: str, answer: str,
    source: str = "qa",
) -> dict[str, Any]:
    """Store a Q&A pair as a knowledge-base document (kind ``qa``) and embed it now.

    The chunk text is ``Q: <question>`` then ``A: <answer>`` (long answers are split, each chunk
    repeating the question). Re-adding a question (same words, any case/spacing) swaps its
    answer. ``source`` prefixes the document's source (e.g. ``"agent"`` for answers agents add).
    embedder: the Embedder handle or a local embedder (see runtime.retrieval).
    Returns {"document_id", "source", "question", "answer", "chunk_ids", "chunks"}.
    Raises InvalidInput (empty or too long), IngestionError (embedding failed).
    """
    question, answer = question.strip(), answer.strip()
    if not question:
        raise InvalidInput("question: must not be empty", field="question")
    if not answer:
        raise InvalidInput("answer: must not be empty", field="answer")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(f"question: at most {MAX_QUESTION_CHARS} characters", field="question")
    if len(answer) > MAX_ANSWER_CHARS:
        raise InvalidInput(f"answer: at most {MAX_ANSWER_CHARS} characters", field="answer")
    chunker = await asyncio.to_thread(_get_chunker)
    section = Section(headings=[f"Q: {question}"], paragraphs=[f"A: {answer}"])
    chunks = chunker.chunk_sections([section], title=question)
    src = qa_source(question, source)
    result = await store_document(
        pool, embedder, tenant_id, source=src, kind="qa", title=question, chunks=chunks,
        digest=content_hash(question, answer), size_bytes=len((question + answer).encode()),
        metadata={"question": question, "answer": answer}, force=True,
    )
    return {
        "document_id": result.document_id, "source": src, "question": question,
        "answer": answer, "chunk_ids": result.chunk_ids, "chunks": len(result.chunk_ids),
    }
