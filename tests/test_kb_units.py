"""Knowledge-base units without services: sectioning, chunk budgets and overlap, extraction,
URL rules, PDF errors, the OR full-text query."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ingestion.chunking import Chunker, Section, markdown_sections, pdf_sections
from ingestion.crawl import normalize_url, same_site
from ingestion.extract import extract_html, page_links
from ingestion.pdf import read_pdf
from runtime.answering.sentences import segment
from runtime.db.kb_search import or_tsquery_text
from runtime.errors import IngestionError


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(max_tokens=60, overlap_tokens=15)


def test_markdown_sections_keep_heading_paths() -> None:
    md = "# Guide\n\nIntro text.\n\n## Setup\n\n### Linux\n\n- step one\n- step two\n\n## FAQ\n\nQ?"
    sections = markdown_sections(md, title="Guide")
    assert [s.name for s in sections] == ["", "Setup > Linux", "FAQ"]
    assert sections[1].paragraphs == ["- step one", "- step two"]


def test_chunks_respect_budget_and_overlap(chunker: Chunker) -> None:
    sentences = [f"Sentence number {i} explains one more detail of the refund policy." for i in
                 range(30)]
    section = Section(headings=["Refunds"], paragraphs=[" ".join(sentences)])
    chunks = chunker.chunk_sections([section], title="Policy")
    assert len(chunks) > 3
    for c in chunks:
        assert c.token_count <= 60 == chunker.max_tokens
        assert chunker.count(c.text) == c.token_count
        assert c.text.startswith("Refunds\n") and c.section == "Refunds" and c.title == "Policy"
    # Consecutive chunks share their boundary sentence (overlap), and no sentence is lost.
    first_body = chunks[0].text.split("\n", 1)[1]
    second_body = chunks[1].text.split("\n", 1)[1]
    last_sentence = first_body.rsplit(". ", 1)[-1]
    assert second_body.startswith(last_sentence.rstrip(".")) or last_sentence in second_body
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)
    assert [c.ord for c in chunks] == list(range(len(chunks)))


def test_a_paragraph_after_a_list_stays_its_own_block(chunker: Chunker) -> None:
    """Chunk text keeps Markdown's blocks: items of one list on consecutive lines, a blank line
    before the paragraph after the list. Joined with a single line break, "On public holidays
    ..." read as the continuation of the list's last item (the demo's hours page)."""
    md = ("## Opening hours\n\n- Monday: closed\n- Sunday: 10:00 to 14:00\n\n"
          "On public holidays the workshop is closed. In December we close early.")
    [chunk] = chunker.chunk_sections(markdown_sections(md))
    assert chunk.text == ("Opening hours\n- Monday: closed\n- Sunday: 10:00 to 14:00\n\n"
                          "On public holidays the workshop is closed. In December we close early.")
    kinds = [(s.kind, s.text) for s in segment(chunk.text.partition("\n")[2])]
    assert kinds == [("list_item", "Monday: closed"), ("list_item", "Sunday: 10:00 to 14:00"),
                     ("sentence", "On public holidays the workshop is closed."),
                     ("sentence", "In December we close early.")]


def test_a_sentence_longer_than_the_budget_is_cut(chunker: Chunker) -> None:
    long = "word " * 500
    chunks = chunker.chunk_sections([Section(headings=[], paragraphs=[long])])
    assert len(chunks) >= 8 and all(c.token_count <= 60 for c in chunks)


def test_pdf_sections_carry_pages_and_headings() -> None:
    pages = ["Billing FAQ\nIs there a free trial?\nYes, 30 days. No card\nis needed.",
             "Cancellation\nYou can cancel any time."]
    sections = pdf_sections(pages)
    assert [(s.page, s.name) for s in sections] == [
        (1, "Is there a free trial?"), (2, "Cancellation")]
    assert sections[0].paragraphs == ["Yes, 30 days. No card is needed."]


def test_extract_drops_boilerplate_and_mdx(fixtures_dir: Path) -> None:
    html = (fixtures_dir / "kb-site" / "2fa.html").read_text()
    page = extract_html(html)
    assert page.title == "Enable two-factor authentication (2FA)"
    assert "## How to enable 2FA" in page.markdown
    assert "Made and hosted" not in page.markdown and "Plausible Docs |" not in page.markdown
    assert "useBaseUrl" not in page.markdown and "**" not in page.markdown
    with pytest.raises(IngestionError, match="no main text"):
        extract_html("<html><body><header>only a header</header></body></html>")


def test_links_and_site_rules() -> None:
    html = ('<a href="/a.html#x">a</a><a href="//other.html">p</a><a href="b.html">b</a>'
            '<a href="mailto:x@y">m</a><a href="https://elsewhere.example/">e</a>')
    links = page_links(html, "http://127.0.0.1:8000/dir/index.html")
    assert links == ["http://127.0.0.1:8000/a.html", "http://other.html",
                     "http://127.0.0.1:8000/dir/b.html", "https://elsewhere.example/"]
    base = "http://127.0.0.1:8000/index.html"
    assert same_site(base, links[0]) and same_site(base, links[2])
    assert not same_site(base, links[1]) and not same_site(base, links[3])
    assert not same_site(base, "http://127.0.0.1:9000/x")
    assert same_site("http://shop.example/", "https://shop.example/help")
    assert normalize_url("HTTP://Shop.Example:80#top") == "http://shop.example/"


def test_pdf_errors_are_actionable(fixtures_dir: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    data = (fixtures_dir / "kb-pdf" / "billing-guide.pdf").read_bytes()
    assert len(read_pdf(data).pages) == 12
    with pytest.raises(IngestionError, match="not a PDF"):
        read_pdf(b"hello", "x.pdf")
    with pytest.raises(IngestionError, match="corrupt"):
        read_pdf(data[:9] + b"\0" * 2000, "broken.pdf")
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password="pw", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(IngestionError, match="encrypted with a password"):
        read_pdf(out.getvalue(), "locked.pdf")
    # Owner-password-only encryption opens with the empty user password.
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    assert len(read_pdf(out.getvalue(), "owner-only.pdf").pages) == 12


def test_or_query_text() -> None:
    assert or_tsquery_text("Is there a FREE trial?") == "is | there | a | free | trial"
    assert or_tsquery_text("?!") is None
