"""HTML to clean Markdown-ish text (headings kept), and the links a page points to.

Boilerplate: the page's ``header``, ``nav``, ``footer``, ``aside``, scripts, styles, forms and
JSON-LD are removed structurally first (lxml), then trafilatura extracts the main content as
Markdown (headings as ``#`` lines, lists as ``- ``). Leftover MDX/JSX residue such as
``<img src={useBaseUrl('x.png')} />`` that sites render as text is removed too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin

import lxml.html
import trafilatura
from lxml import etree

from runtime.errors import IngestionError

_BOILERPLATE_XPATH = (
    "//header|//footer|//nav|//aside|//script|//style|//noscript|//template|//form|//iframe"
    "|//svg|//*[@role='navigation']|//*[@role='banner']|//*[@role='contentinfo']"
)
# JSX/MDX residue rendered as text, e.g. <img alt="x" src={useBaseUrl('img/a.png')} />
_JSX_TAG = re.compile(r"\\?<(?:img|Image|video|iframe|source)\b[^>\n]*?/?>", re.IGNORECASE)
_JSX_EXPR = re.compile(r"\{\s*useBaseUrl\([^)]*\)\s*\}")
_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_BLANKS = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class ExtractedPage:
    """A page's title (first ``h1``, else ``<title>``) and its main content as Markdown."""

    title: str
    markdown: str


def _parse(html: str | bytes) -> lxml.html.HtmlElement:
    try:
        return lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError) as exc:
        raise IngestionError(f"unparseable HTML: {exc}") from None


def _text(el: lxml.html.HtmlElement | None) -> str:
    return " ".join(el.text_content().split()) if el is not None else ""


def page_links(html: str | bytes, base_url: str) -> list[str]:
    """Absolute http(s) URLs of the page's ``<a href>`` links, fragments removed, in page order
    (duplicates removed). Honours ``<base href>``. Protocol-relative links (``//host/x``) resolve
    to another host and are returned as such; the crawler decides what is on-site."""
    doc = _parse(html)
    base = doc.find(".//base")
    if base is not None and base.get("href"):
        base_url = urljoin(base_url, base.get("href"))
    seen: dict[str, None] = {}
    for href in doc.xpath("//a/@href"):
        href = str(href).strip()
        if not href or href.startswith(("#", "mailto:", "tel:", "javascript:", "data:")):
            continue
        url = urldefrag(urljoin(base_url, href))[0]
        if url.startswith(("http://", "https://")):
            seen.setdefault(url, None)
    return list(seen)


def clean_markdown(text: str) -> str:
    """Remove MDX/JSX residue and emphasis markers; collapse runs of blank lines."""
    text = _JSX_EXPR.sub("", _JSX_TAG.sub("", text))
    text = _EMPHASIS.sub(r"\2", text)
    lines = [ln.rstrip() for ln in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def extract_html(html: str | bytes, url: str = "") -> ExtractedPage:
    """Main content of an HTML page as Markdown, boilerplate removed.

    Raises IngestionError when the page is unparseable or has no main text.
    """
    doc = _parse(html)
    title = _text(doc.find(".//h1")) or _text(doc.find(".//title"))
    for el in doc.xpath(_BOILERPLATE_XPATH):
        el.drop_tree()
    for el in doc.xpath("//script[@type='application/ld+json']"):
        el.drop_tree()
    cleaned = lxml.html.tostring(doc, encoding="unicode")
    md = trafilatura.extract(
        cleaned, url=url or None, output_format="markdown", include_comments=False,
        include_tables=True, include_images=False, include_links=False,
        include_formatting=True, favor_recall=True, deduplicate=False,
    )
    md = clean_markdown(md or "")
    if not md:
        raise IngestionError("no main text found on the page (empty, or all boilerplate)")
    return ExtractedPage(title=title, markdown=md)
