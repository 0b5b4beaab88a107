"""A polite async website crawler (httpx).

From a start URL it follows ``<a href>`` links breadth-first, up to ``max_pages`` URLs and
``max_depth`` hops, with at most ``concurrency`` requests in flight and requests started at least
``delay_s`` apart (or robots.txt's ``Crawl-delay``, when larger). It stays on the start URL's site
(same host and port; protocol-relative ``//name`` links and other hosts are counted as
``skipped["offsite"]`` and never requested), obeys robots.txt (disallowed URLs are never
requested), follows redirects itself so an off-site redirect is reported and not followed, and
de-duplicates URLs (fragments dropped) and byte-identical bodies.

:meth:`Crawler.run` yields :class:`FetchedPage` (HTML, plain text, Markdown or PDF bodies under
``max_bytes``) and :class:`CrawlFailure` (one per URL that could not be used: HTTP errors such as
404, off-site redirects, oversized pages, other content types, network errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import urllib.robotparser
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

import httpx

from ingestion.extract import page_links

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
PDF_TYPES = ("application/pdf",)
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class FetchedPage:
    """A usable response: ``url`` as linked, ``final_url`` after same-site redirects,
    ``content_type`` (lower case, no parameters), the raw ``body`` and its ``encoding``."""

    url: str
    final_url: str
    depth: int
    content_type: str
    body: bytes
    encoding: str | None

    @property
    def is_html(self) -> bool:
        return self.content_type in HTML_TYPES

    def text(self) -> str:
        """The body decoded (declared charset, else UTF-8 with replacement)."""
        return self.body.decode(self.encoding or "utf-8", errors="replace")


@dataclass(frozen=True)
class CrawlFailure:
    """A URL that yielded nothing usable; ``error`` says why, ``status`` is the HTTP status."""

    url: str
    error: str
    status: int | None = None


def normalize_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped, empty path -> ``/``."""
    url = urldefrag(url)[0]
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else (
        f"{host}:{port}"
    )
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _site(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return (parts.hostname or "").lower(), parts.port or default


def same_site(a: str, b: str) -> bool:
    """Same host and port (an http->https upgrade on default ports counts as the same site)."""
    (ha, pa), (hb, pb) = _site(a), _site(b)
    return ha == hb and (pa == pb or {pa, pb} == {80, 443})


class Crawler:
    """One crawl of one site (see the module docstring). Not reusable: call :meth:`run` once.

    ``skipped`` counts links not followed, by reason: offsite, robots, page_limit, depth_limit,
    duplicate_content, redirect_duplicate. ``fetched`` counts HTTP requests made for pages.
    ``client``: an httpx.AsyncClient to use (default: one created and closed by :meth:`run`).
    """

    def __init__(
        self, start_url: str, *, max_pages: int = 500, max_depth: int = 6,
        concurrency: int = 4, delay_s: float = 0.0, max_bytes: int = 2_000_000,
        timeout_s: float = 20.0, user_agent: str = "chat-engine-kb/0.1",
        client: httpx.AsyncClient | None = None,
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
        self._robots: urllib.robotparser.RobotFileParser | None = None
        self._robots_block_all: str | None = None
        self.skipped: Counter[str] = Counter()
        self.fetched = 0
        self.discovered = 1
        self._seen: set[str] = {self.start_url}
        self._bodies: set[str] = set()
        self._pace_lock = asyncio.Lock()
        self._last_start = 0.0

    # ---------------------------------------------------------------- robots
    async def _load_robots(self, client: httpx.AsyncClient) -> None:
        parts = urlsplit(self.start_url)
        robots_url = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
        try:
            resp = await client.get(robots_url, follow_redirects=True)
        except httpx.HTTPError as exc:
            self._robots_block_all = f"robots.txt unreachable ({type(exc).__name__}: {exc})"
            return
        if resp.status_code >= 500:
            # RFC 9309: an unreachable robots.txt means "crawl nothing" for now.
            self._robots_block_all = f"robots.txt answered HTTP {resp.status_code}"
            return
        rp = urllib.robotparser.RobotFileParser()
        rp.parse(resp.text.splitlines() if resp.status_code == 200 else [])
        self._robots = rp
        crawl_delay = rp.crawl_delay(self.user_agent)
        if crawl_delay:
            self.delay_s = max(self.delay_s, float(crawl_delay))

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets this crawler fetch ``url``."""
        if self._robots_block_all is not None:
            return False
        return self._robots is None or self._robots.can_fetch(self.user_agent, url)

    # ---------------------------------------------------------------- fetching
    async def _pace(self) -> None:
        if self.delay_s <= 0:
            return
        async with self._pace_lock:
            wait = self._last_start + self.delay_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_start = time.monotonic()

    async def _fetch(
        self, client: httpx.AsyncClient, url: str, depth: int
    ) -> FetchedPage | CrawlFailure | None:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            await self._pace()
            self.fetched += 1
            try:
                async with client.stream("GET", current) as resp:
                    if resp.is_redirect:
                        location = resp.headers.get("location", "")
                        target = normalize_url(urljoin(current, location))
                        if not same_site(self.start_url, target):
                            return CrawlFailure(
                                url, f"redirected off-site to {target}; not followed",
                                resp.status_code,
                            )
                        if not self.allowed(target):
                            self.skipped["robots"] += 1
                            return CrawlFailure(
                                url, f"redirected to {target}, which robots.txt disallows",
                                resp.status_code,
                            )
                        if target != url and target in self._seen:
                            self.skipped["redirect_duplicate"] += 1
                            return None
                        self._seen.add(target)
                        current = target
                        continue
                    if resp.status_code != 200:
                        reason = resp.reason_phrase or ""
                        return CrawlFailure(
                            url, f"HTTP {resp.status_code} {reason}".strip(), resp.status_code
                        )
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype not in HTML_TYPES + TEXT_TYPES + PDF_TYPES:
                        return CrawlFailure(
                            url, f"not an HTML page (Content-Type: {ctype or 'none'}); skipped",
                            200,
                        )
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        return self._too_large(url, int(declared))
                    body = bytearray()
                    async for piece in resp.aiter_bytes():
                        body.extend(piece)
                        if len(body) > self.max_bytes:
                            return self._too_large(url, None)
                    return FetchedPage(
                        url=url, final_url=current, depth=depth, content_type=ctype,
                        body=bytes(body), encoding=resp.charset_encoding,
                    )
            except httpx.TimeoutException:
                return CrawlFailure(url, f"timed out after {self.timeout_s:g} s")
            except httpx.HTTPError as exc:
                return CrawlFailure(url, f"request failed ({type(exc).__name__}: {exc})")
        return CrawlFailure(url, f"more than {MAX_REDIRECTS} redirects")

    def _too_large(self, url: str, size: int | None) -> CrawlFailure:
        got = f"{size} bytes" if size is not None else "more"
        return CrawlFailure(url, f"page too large ({got}; limit {self.max_bytes} bytes)", 200)

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
            timeout=self.timeout_s, headers={"User-Agent": self.user_agent},
            follow_redirects=False,
        )
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
            if not self.allowed(self.start_url):
                why = self._robots_block_all or "robots.txt disallows it"
                yield CrawlFailure(self.start_url, f"not crawled: {why}")
                return
            pending = 1
            frontier.put_nowait((self.start_url, 0))
            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            while (item := await out.get()) is not None:
                yield item
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w
            if owns_client:
                await client.aclose()
