"""URL identity for the crawler: :func:`normalize_url` (the key URLs are de-duplicated by) and
:func:`same_site` (whether a link or redirect stays on the start URL's site)."""

from __future__ import annotations

from urllib.parse import urldefrag, urlsplit, urlunsplit


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
