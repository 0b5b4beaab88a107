"""A polite async website crawler (httpx): :class:`Crawler`, the crawl loop.

From a start URL it follows ``<a href>`` links breadth-first, up to ``max_pages`` URLs and
``max_depth`` hops, with at most ``concurrency`` requests in flight and requests started at least
``delay_s`` apart (or robots.txt's ``Crawl-delay``, when larger). It stays on the start URL's site
(same host and port; protocol-relative ``//name`` links and other hosts are counted as
``skipped["offsite"]`` and never requested), obeys robots.txt (disallowed URLs are never
requested; :mod:`ingestion.robots`), follows redirects itself so an off-site redirect is reported
and not followed (:mod:`ingestion.fetch`), and de-duplicates URLs (fragments dropped;
:mod:`ingestion.urls`) and byte-identical bodies.

:meth:`Crawler.run` yields :class:`FetchedPage` (HTML, plain text, Markdown or PDF bodies under
``max_bytes``) and :class:`CrawlFailure` (one per URL that could not be used: HTTP errors such as
404, off-site redirects, oversized pages, other content types, network errors).

Every connection (pages, redirects, robots.txt) goes through the egress policy
(:mod:`ingestion.egress`): private, loopback, link-local and metadata addresses are refused before
any connect, as ``refused by the egress policy: ...``. Each HTTP request has a whole-request
deadline (``page_deadline_s``, see :mod:`ingestion.fetch`), and the crawl as a whole an optional
deadline (``job_deadline_s`` from ``started_at``): when it passes the crawl stops, yields one
failure saying so for the start URL, and returns.

The results, URL helpers and limits are importable from here as well as from the modules that
define them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from ingestion.egress import EgressPolicy, EgressTransport
from ingestion.extract import page_links
from ingestion.fetch import (
    HTML_TYPES,
    MAX_REDIRECTS,
    PDF_TYPES,
    TEXT_TYPES,
    CrawlFailure,
    FetchedPage,
    PageFetching,
)
from ingestion.robots import ROBOTS_MAX_BYTES, RobotsRules, load_robots
from ingestion.urls import normalize_url, same_site

__all__ = [
    "HTML_TYPES", "MAX_REDIRECTS", "PDF_TYPES", "ROBOTS_MAX_BYTES", "TEXT_TYPES", "CrawlFailure",
    "Crawler", "FetchedPage", "normalize_url", "same_site",
]

log = logging.getLogger(__name__)


class Crawler(PageFetching):
    """One crawl of one site (see the module docstring). Not reusable: call :meth:`run` once.

    ``skipped`` counts links not followed, by reason: offsite, robots, page_limit, depth_limit,
    duplicate_content, redirect_duplicate. ``fetched`` counts HTTP requests made for pages.
    ``client``: an httpx.AsyncClient to use (default: one created and closed by :meth:`run`, whose
    transport enforces ``egress``; a client given here must bring its own
    :class:`~ingestion.egress.EgressTransport`). ``egress``: the policy (default: refuse private
    addresses). ``page_deadline_s``: the whole-request deadline of one HTTP request.
    ``job_deadline_s``: stop the crawl that long after ``started_at`` (a ``time.monotonic()``
    value; default: when :meth:`run` starts); None: no deadline. :meth:`allowed` and the HTTP
    requests come from :class:`~ingestion.fetch.PageFetching`.
    """

    def __init__(
        self, start_url: str, *, max_pages: int = 500, max_depth: int = 6,
        concurrency: int = 4, delay_s: float = 0.0, max_bytes: int = 2_000_000,
        timeout_s: float = 20.0, user_agent: str = "chat-engine-kb/0.1",
        client: httpx.AsyncClient | None = None, egress: EgressPolicy | None = None,
        page_deadline_s: float = 30.0, job_deadline_s: float | None = None,
        started_at: float | None = None,
    ) -> None:
        parts = urlsplit(start_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {start_url!r}")
        self.start_url = normalize_url(start_url)
        self.max_pages = max_pages
        self.max_depth = max_depth
        self.concurrency = max(1, concurrency)
        self.delay_s = delay_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._client = client
        self.egress = egress or EgressPolicy()
        self.page_deadline_s = page_deadline_s
        self.job_deadline_s = job_deadline_s
        self._started_at = started_at
        self._deadline: float | None = None
        self._robots = RobotsRules()  # allows everything until robots.txt is loaded
        self.skipped: Counter[str] = Counter()
        self.fetched = 0
        self.discovered = 1
        self._seen: set[str] = {self.start_url}
        self._bodies: set[str] = set()
        self._pace_lock = asyncio.Lock()
        self._last_start = 0.0

    # ---------------------------------------------------------------- robots
    async def _load_robots(self, client: httpx.AsyncClient) -> None:
        limit = self.page_deadline_s
        if self._deadline is not None:
            limit = min(limit, max(0.0, self._deadline - time.monotonic()))
        self._robots = await load_robots(client, self.start_url, limit)
        crawl_delay = self._robots.crawl_delay(self.user_agent)
        if crawl_delay:
            self.delay_s = max(self.delay_s, crawl_delay)

    def _deadline_failure(self, pending: int) -> CrawlFailure:
        return CrawlFailure(
            self.start_url,
            f"the job hit its deadline of {self.job_deadline_s:g} s "
            f"(CHAT_ENGINE_CRAWL_JOB_DEADLINE_S): crawling stopped with {pending} URL(s) not "
            "fetched; the pages already stored are kept",
        )

    # ---------------------------------------------------------------- the crawl
    def _consider(self, link: str, depth: int) -> str | None:
        url = normalize_url(link)
        if url in self._seen:
            return None
        if not same_site(self.start_url, url):
            self._seen.add(url)
            self.skipped["offsite"] += 1
            return None
        if not self.allowed(url):
            self._seen.add(url)
            self.skipped["robots"] += 1
            return None
        if depth > self.max_depth:
            self.skipped["depth_limit"] += 1
            return None
        if self.discovered >= self.max_pages:
            self.skipped["page_limit"] += 1
            return None
        self._seen.add(url)
        self.discovered += 1
        return url

    async def run(self) -> AsyncIterator[FetchedPage | CrawlFailure]:
        """Crawl; yields results as pages arrive (order is not guaranteed)."""
        owns_client = self._client is None
        client = self._client or httpx.AsyncClient(
            transport=EgressTransport(self.egress), timeout=self.timeout_s,
            headers={"User-Agent": self.user_agent}, follow_redirects=False,
        )
        if self.job_deadline_s is not None:
            start = time.monotonic() if self._started_at is None else self._started_at
            self._deadline = start + self.job_deadline_s
        frontier: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        out: asyncio.Queue[FetchedPage | CrawlFailure | None] = asyncio.Queue(
            maxsize=self.concurrency * 4
        )
        pending = 0
        workers: list[asyncio.Task[None]] = []

        async def worker() -> None:
            nonlocal pending
            while True:
                url, depth = await frontier.get()
                try:
                    result = await self._fetch(client, url, depth)
                    if isinstance(result, FetchedPage):
                        digest = hashlib.sha256(result.body).hexdigest()
                        if digest in self._bodies:
                            self.skipped["duplicate_content"] += 1
                            result = None
                        else:
                            self._bodies.add(digest)
                    if isinstance(result, FetchedPage) and result.is_html:
                        links = page_links(result.body, result.final_url)
                        for link in links:
                            nxt = self._consider(link, depth + 1)
                            if nxt is not None:
                                pending += 1
                                frontier.put_nowait((nxt, depth + 1))
                    if result is not None:
                        await out.put(result)
                except Exception as exc:  # noqa: BLE001 - reported per URL, crawl goes on
                    log.exception("crawling %s failed", url)
                    await out.put(CrawlFailure(url, f"crawler error ({type(exc).__name__}: {exc})"))
                finally:
                    pending -= 1
                    if pending == 0:
                        await out.put(None)

        try:
            await self._load_robots(client)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                yield self._deadline_failure(1)
                return
            if not self.allowed(self.start_url):
                why = self._robots.block_all or "robots.txt disallows it"
                yield CrawlFailure(self.start_url, f"not crawled: {why}")
                return
            pending = 1
            frontier.put_nowait((self.start_url, 0))
            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            while True:
                left = None if self._deadline is None else self._deadline - time.monotonic()
                try:
                    async with asyncio.timeout(left):
                        item = await out.get()
                except TimeoutError:
                    yield self._deadline_failure(pending)
                    return
                if item is None:
                    return
                yield item
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w
            if owns_client:
                await client.aclose()
