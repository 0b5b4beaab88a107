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

Every connection (pages, redirects, robots.txt) goes through the egress policy
(:mod:`ingestion.egress`): private, loopback, link-local and metadata addresses are refused before
any connect, as ``refused by the egress policy: ...``. Each HTTP request has a whole-request
deadline (``page_deadline_s``: connect, headers and the body, so a server that trickles bytes
cannot hold a worker; httpx's ``timeout_s`` only bounds each read), and the crawl as a whole an
optional deadline (``job_deadline_s`` from ``started_at``): when it passes the crawl stops, yields
one failure saying so for the start URL, and returns.
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

from ingestion.egress import EgressPolicy, EgressRefused, EgressTransport
from ingestion.extract import page_links

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
PDF_TYPES = ("application/pdf",)
MAX_REDIRECTS = 5
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB


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


def _norm_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


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
    ``client``: an httpx.AsyncClient to use (default: one created and closed by :meth:`run`, whose
    transport enforces ``egress``; a client given here must bring its own
    :class:`~ingestion.egress.EgressTransport`). ``egress``: the policy (default: refuse private
    addresses). ``page_deadline_s``: the whole-request deadline of one HTTP request.
    ``job_deadline_s``: stop the crawl that long after ``started_at`` (a ``time.monotonic()``
    value; default: when :meth:`run` starts); None: no deadline.
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
    async def _get_robots(self, client: httpx.AsyncClient, robots_url: str) -> tuple[int, str]:
        # Redirects are followed (RFC 9309), each one through the egress policy.
        async with client.stream("GET", robots_url, follow_redirects=True) as resp:
            if resp.status_code != 200:
                return resp.status_code, ""
            body = bytearray()
            async for piece in resp.aiter_bytes():
                body.extend(piece)
                if len(body) >= ROBOTS_MAX_BYTES:
                    break
            return 200, bytes(body[:ROBOTS_MAX_BYTES]).decode(
                resp.charset_encoding or "utf-8", errors="replace")

    async def _load_robots(self, client: httpx.AsyncClient) -> None:
        parts = urlsplit(self.start_url)
        robots_url = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
        limit = self.page_deadline_s
        if self._deadline is not None:
            limit = min(limit, max(0.0, self._deadline - time.monotonic()))
        try:
            async with asyncio.timeout(limit):
                status, text = await self._get_robots(client, robots_url)
        except EgressRefused as exc:
            if _norm_host(exc.host) == (parts.hostname or "").lower():
                self._robots_block_all = f"refused by the egress policy: {exc}"
            else:
                self._robots_block_all = (
                    f"robots.txt redirected to a host refused by the egress policy: {exc}"
                )
            return
        except TimeoutError:
            self._robots_block_all = f"robots.txt did not arrive within {limit:g} s (the page deadline)"
            return
        except httpx.HTTPError as exc:
            self._robots_block_all = f"robots.txt unreachable ({type(exc).__name__}: {exc})"
            return
        if status >= 500:
            # RFC 9309: an unreachable robots.txt means "crawl nothing" for now.
            self._robots_block_all = f"robots.txt answered HTTP {status}"
            return
        rp = urllib.robotparser.RobotFileParser()
        rp.parse(text.splitlines() if status == 200 else [])
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
                async with asyncio.timeout(self.page_deadline_s), client.stream("GET", current) as resp:
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
            except TimeoutError:
                return CrawlFailure(
                    url, f"page deadline passed: the request took longer than "
                    f"{self.page_deadline_s:g} s (CHAT_ENGINE_CRAWL_PAGE_DEADLINE_S)",
                )
            except EgressRefused as exc:
                return CrawlFailure(url, f"refused by the egress policy: {exc}")
            except httpx.TimeoutException:
                return CrawlFailure(url, f"timed out after {self.timeout_s:g} s")
            except httpx.ConnectError as exc:
                return CrawlFailure(url, f"could not connect ({exc})")
            except httpx.HTTPError as exc:
                return CrawlFailure(url, f"request failed ({type(exc).__name__}: {exc})")
        return CrawlFailure(url, f"more than {MAX_REDIRECTS} redirects")

    def _deadline_failure(self, pending: int) -> CrawlFailure:
        return CrawlFailure(
            self.start_url,
            f"the job hit its deadline of {self.job_deadline_s:g} s "
            f"(CHAT_ENGINE_CRAWL_JOB_DEADLINE_S): crawling stopped with {pending} URL(s) not "
            "fetched; the pages already stored are kept",
        )

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
                why = self._robots_block_all or "robots.txt disallows it"
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
