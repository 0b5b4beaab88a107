"""Fetching one crawled URL: the results (:class:`FetchedPage`, :class:`CrawlFailure`) and
:class:`PageFetching`, the crawler's half that makes the HTTP requests.

A fetch follows redirects itself (at most ``MAX_REDIRECTS``): a same-site redirect that robots.txt
allows is followed, an off-site one is reported and not followed, one to a URL already seen is
dropped (``skipped["redirect_duplicate"]``). Requests are started at least ``delay_s`` apart.
A usable response is HTML, plain text, Markdown or PDF with status 200 and a body of at most
``max_bytes``; anything else (HTTP errors such as 404, oversized pages, other content types,
network errors, a request refused by the egress policy as ``refused by the egress policy: ...``)
is a :class:`CrawlFailure`. Each HTTP request has a whole-request deadline (``page_deadline_s``:
connect, headers and the body, so a server that trickles bytes cannot hold a worker; httpx's
``timeout_s`` only bounds each read).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from ingestion.egress import EgressRefused
from ingestion.robots import RobotsRules
from ingestion.urls import normalize_url, same_site

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


class PageFetching:
    """The fetching half of :class:`~ingestion.crawl.Crawler` (see the module docstring).

    A base class, not used alone: the crawler's ``__init__`` sets the attributes declared here.
    """

    start_url: str
    user_agent: str
    delay_s: float
    max_bytes: int
    timeout_s: float
    page_deadline_s: float
    fetched: int
    skipped: Counter[str]
    _robots: RobotsRules
    _seen: set[str]
    _pace_lock: asyncio.Lock
    _last_start: float

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets this crawler fetch ``url``."""
        return self._robots.allowed(self.user_agent, url)

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

    def _too_large(self, url: str, size: int | None) -> CrawlFailure:
        got = f"{size} bytes" if size is not None else "more"
        return CrawlFailure(url, f"page too large ({got}; limit {self.max_bytes} bytes)", 200)
