"""The crawler's robots.txt: :func:`load_robots` fetches and parses it into :class:`RobotsRules`.

robots.txt is fetched from the start URL's site, its redirects followed (RFC 9309), each one
through the client's egress policy, and at most the first ``ROBOTS_MAX_BYTES`` parsed. A missing
robots.txt (HTTP 4xx) allows everything. One that cannot be had (HTTP 5xx, unreachable, past
its deadline, or refused by the egress policy, on the site itself or on a redirect) means "crawl
nothing" (RFC 9309), with the reason in :attr:`RobotsRules.block_all`. Disallowed URLs are never
requested; a ``Crawl-delay`` larger than the crawler's own delay replaces it.
"""

from __future__ import annotations

import asyncio
import urllib.robotparser
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from ingestion.egress import EgressRefused

ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB


def _norm_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


@dataclass(frozen=True)
class RobotsRules:
    """What robots.txt allows: ``parser`` the parsed file (None: everything allowed), or
    ``block_all`` the reason nothing may be fetched (set, it wins over ``parser``)."""

    parser: urllib.robotparser.RobotFileParser | None = None
    block_all: str | None = None

    def allowed(self, user_agent: str, url: str) -> bool:
        """Whether ``user_agent`` may fetch ``url``."""
        if self.block_all is not None:
            return False
        return self.parser is None or self.parser.can_fetch(user_agent, url)

    def crawl_delay(self, user_agent: str) -> float | None:
        """robots.txt's ``Crawl-delay`` for ``user_agent`` in seconds, None when it sets none."""
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(user_agent)
        return float(delay) if delay else None


async def _get_robots(client: httpx.AsyncClient, robots_url: str) -> tuple[int, str]:
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


async def load_robots(client: httpx.AsyncClient, start_url: str, limit: float) -> RobotsRules:
    """The robots.txt rules of ``start_url``'s site, fetched within ``limit`` seconds.

    Never raises for a robots.txt that cannot be had: that is a :class:`RobotsRules` whose
    ``block_all`` says why (see the module docstring)."""
    parts = urlsplit(start_url)
    robots_url = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
    try:
        async with asyncio.timeout(limit):
            status, text = await _get_robots(client, robots_url)
    except EgressRefused as exc:
        if _norm_host(exc.host) == (parts.hostname or "").lower():
            return RobotsRules(block_all=f"refused by the egress policy: {exc}")
        return RobotsRules(
            block_all=f"robots.txt redirected to a host refused by the egress policy: {exc}")
    except TimeoutError:
        return RobotsRules(block_all=f"robots.txt did not arrive within {limit:g} s (the page deadline)")
    except httpx.HTTPError as exc:
        return RobotsRules(block_all=f"robots.txt unreachable ({type(exc).__name__}: {exc})")
    if status >= 500:
        # RFC 9309: an unreachable robots.txt means "crawl nothing" for now.
        return RobotsRules(block_all=f"robots.txt answered HTTP {status}")
    rp = urllib.robotparser.RobotFileParser()
    rp.parse(text.splitlines() if status == 200 else [])
    return RobotsRules(parser=rp)
