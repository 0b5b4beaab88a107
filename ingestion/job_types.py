"""The data of an ingestion job: what it is given (:class:`IngestSpec`, :class:`SourceFile`),
the crawl limits it runs under (:func:`crawl_limits`) and its running totals (:class:`JobState`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from runtime.config import Settings


class IngestSpec(BaseModel):
    """What a job ingests (stored in ``kb_jobs.spec``; files are listed by name and size).

    url: a website to crawl from (same-site links, robots.txt obeyed).
    max_pages / max_depth: crawl limits (default ``crawl_max_pages`` / ``crawl_max_depth``; an
      owner's value above the operator's is capped to it, see :func:`crawl_limits`).
    text: pasted text; ``text_format`` markdown (``#`` headings) or plain; ``name`` is its source
      name (default ``text:<hash>``) and ``title`` its title.
    force: re-embed sources whose content has not changed (default: they are skipped).
    """

    url: str | None = None
    max_pages: int | None = Field(default=None, ge=1, le=100_000)
    max_depth: int | None = Field(default=None, ge=0, le=50)
    text: str | None = None
    text_format: Literal["markdown", "text"] = "markdown"
    name: str | None = Field(default=None, max_length=500)
    title: str | None = Field(default=None, max_length=500)
    force: bool = False
    files: list[dict[str, Any]] = Field(default_factory=list, description="[{name, bytes}]")


def crawl_limits(spec: IngestSpec, settings: Settings) -> tuple[int, int]:
    """``(max_pages, max_depth)`` of a job's crawl: the owner's values where given, never above
    the operator's ``crawl_max_pages`` / ``crawl_max_depth``."""
    pages = settings.crawl_max_pages if spec.max_pages is None else min(
        spec.max_pages, settings.crawl_max_pages)
    depth = settings.crawl_max_depth if spec.max_depth is None else min(
        spec.max_depth, settings.crawl_max_depth)
    return pages, depth


@dataclass(frozen=True)
class SourceFile:
    """An uploaded file: ``name`` (its source name), raw ``data``, declared ``content_type``."""

    name: str
    data: bytes
    content_type: str | None = None


@dataclass
class JobState:
    """Running totals of a job (what ``kb_jobs`` shows)."""

    documents: int = 0
    unchanged: int = 0
    chunks: int = 0
    pages_fetched: int = 0
    discovered: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    status: str = "running"
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        return {
            "status": self.status, "documents": self.documents, "unchanged": self.unchanged,
            "chunks": self.chunks, "pages_fetched": self.pages_fetched,
            "error_count": len(self.errors), "errors": self.errors,
            "skipped": dict(self.skipped), "message": self.message,
        }
