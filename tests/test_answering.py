"""Answering without the stack: sentences, extractive answers, the coverage decision and the
grounding check, with the real MiniLM embedder (in-process) and text from the fixture sources.

The chunk texts below are the fixture help site's and billing PDF's own sentences, so the
thresholds are exercised on the kind of text they were calibrated on (benchmarks/answers.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from runtime.answering.coverage import TEXT_LEG_MARGIN, assess_coverage
from runtime.answering.extractive import citation, content_words, extract_answer
from runtime.answering.grounding import GroundingChecker
from runtime.answering.sentences import SentenceBuffer, clean_text, segment, split_sentences


@dataclass(frozen=True)
class Chunk:
    """A retrieved chunk as the answering code reads it (runtime.retrieval.RetrievedChunk)."""

    text: str
    source: str
    title: str
    section: str = ""
    page: int | None = None
    similarity: float = 0.6
    text_all: bool = False
    chunk_id: int = 0
    document_id: uuid.UUID = uuid.UUID(int=0)


PAYMENT = Chunk(
    "What payment methods do you accept?\nCredit/debit card, PayPal, Apple Pay and Google Pay. All "
    "payment processing is handled by\nPaddle. We're not able to accept wire transfers, manual "
    "invoicing or cryptocurrency.",
    "billing-guide.pdf", "Plausible Billing, Plans and Pricing Guide", page=1, similarity=0.44)
CHECKOUT = Chunk(
    "Pay and subscribe\nClick Pay securely via Paddle, choose your location, then pick a payment "
    "method. You can pay by credit/debit card, PayPal, Apple Pay or Google Pay.",
    "billing-guide.pdf", "Plausible Billing, Plans and Pricing Guide", page=11, similarity=0.22)
UPDATE_CARD = Chunk(
    "How do I update my payment method?\nIn your account settings, go to the Subscription section. "
    "Under Next bill amount, click Update billing info.\nWhy did my payment fail?",
    "billing-guide.pdf", "Plausible Billing, Plans and Pricing Guide",
    section="How do I update my payment method?", page=2, similarity=0.49)
CARD_DETAILS = Chunk(
    "Wrong or expired card details\nDouble-check that the card number, expiry date and CVV are "
    "entered correctly and that the card hasn't expired.",
    "billing-guide.pdf", "Plausible Billing, Plans and Pricing Guide", page=2, similarity=0.44)
EMAIL_REPORTS = Chunk(
    "Set reports to be sent through email\nWithin the Email reports section of your website "
    "settings you can decide to enable weekly (every Monday) and/or monthly (every 1st day of the "
    "month) reports to be sent directly through email. All the stats are embedded directly into "
    "the email and there's no need to go to the Plausible Analytics website to view them. There "
    "are no attachments, no PDFs and no links to click on in the email reports either.",
    "https://help.example/email-reports.html", "Set reports to be sent through email",
    section="Set reports to be sent through email", similarity=0.63)
NONPROFIT = Chunk(
    "Discount for nonprofits and educational institutions\n\nWe offer a 15% introductory discount "
    "to nonprofits, educational institutions and open-source projects to help make Plausible more "
    "accessible.",
    "billing-guide.pdf", "Plausible Billing, Plans and Pricing Guide", page=8, similarity=0.73)


class Embedder:
    """The real MiniLM embedder behind ``embed`` / ``embed_many`` (float32, L2-normalised)."""

    def __init__(self, local: Any) -> None:
        self.local = local
        self.calls = 0

    async def embed(self, text: str) -> np.ndarray:
        return np.asarray(await self.local.embed(text), dtype=np.float32)

    async def embed_many(self, texts: Any) -> np.ndarray:
        self.calls += 1
        return np.asarray(await self.local.embed_many(list(texts)), dtype=np.float32)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    from ingestion.embed import LocalEmbedder

    local = LocalEmbedder(threads=1)
    yield Embedder(local)
    local.close()


# ---------------------------------------------------------------- sentences
def test_pdf_residue_is_removed_and_prose_kept() -> None:
    text = ("Cancel your subscription plan\n<div class=\"browser\" <img alt=\"Cancel\"\n"
            "src={useBaseUrl('img/v2/cancel.webp')} / </div\nYour stats keep being counted.")
    cleaned = clean_text(text)
    assert "useBaseUrl" not in cleaned and "<div" not in cleaned
    assert "Your stats keep being counted." in cleaned


def test_prices_versions_and_abbreviations_stay_in_their_sentence() -> None:
    got = split_sentences("The Starter plan costs $9.00 per month, e.g. for one site. Version 2.1 "
                          "adds funnels.")
    assert got == ["The Starter plan costs $9.00 per month, e.g. for one site.",
                   "Version 2.1 adds funnels."]


def test_inline_pdf_list_is_cut_into_items() -> None:
    s = segment("- Review all card details and make sure they're correct - Check your banking app "
                "for any pending approval - Confirm your bank hasn't blocked the charge")
    assert [x.kind for x in s] == ["list_item"] * 3
    assert s[1].text == "Check your banking app for any pending approval"


def test_list_item_keeps_its_continuation_line() -> None:
    s = segment("- Basic tune-up: 49 €. Gears and brakes adjusted, chain cleaned and lubricated,\n"
                "  bolts checked. Usually ready the same day.\n- Full service: 119 €.\n\nAfter.")
    assert [x.text for x in s] == [
        "Basic tune-up: 49 €.", "Gears and brakes adjusted, chain cleaned and lubricated, bolts checked.",
        "Usually ready the same day.", "Full service: 119 €.", "After."]
    assert [x.kind for x in s] == ["list_item"] * 4 + ["sentence"]


def test_sentence_buffer_never_cuts_a_price() -> None:
    buf = SentenceBuffer()
    done = []
    for piece in ["It costs $9", ".", "00 a month", ". Cancel any", "time."]:
        done += buf.feed(piece)
    done += [buf.flush() or ""]
    assert done == ["It costs $9.00 a month.", "Cancel anytime."]


# ---------------------------------------------------------------- extractive answers
async def _extract(embedder: Embedder, question: str, chunks: list[Chunk]) -> Any:
    vec = await embedder.embed(question)
    return await extract_answer(question, vec, chunks, embedder.embed_many)


async def test_wire_transfer_is_answered_with_the_sentence_that_says_no(embedder: Embedder) -> None:
    """A topical sentence ("You can pay by card, PayPal...") must not beat the one that answers."""
    ans = await _extract(embedder, "Can I pay by bank wire transfer?", [CHECKOUT, PAYMENT])
    assert ans is not None
    assert "not able to accept wire transfers" in ans.text
    assert ans.text.endswith("Source: Plausible Billing, Plans and Pricing Guide (billing-guide.pdf, page 1)")
    assert [c.page for c in ans.sources] == [1]


async def test_faq_heading_question_leads_to_its_answer(embedder: Embedder) -> None:
    ans = await _extract(embedder, "How do I update my card?", [UPDATE_CARD, CARD_DETAILS])
    assert ans is not None
    assert "click Update billing info" in ans.text
    # The answer runs to the next FAQ question and never quotes it.
    assert "Why did my payment fail?" not in ans.text


EBIKES = Chunk(
    "Frequently asked questions > Do you repair e-bikes?\nYes. We service Bosch, Shimano Steps and "
    "Brose motor systems and can update their firmware. We do\nnot open motors or battery packs: those "
    "go to the manufacturer under warranty.",
    "faq.md", "faq", section="Frequently asked questions > Do you repair e-bikes?", similarity=0.62)
CARGO = Chunk(
    "Frequently asked questions > Do you repair cargo bikes and recumbents?\nYes, cargo bikes, "
    "tandems, recumbents and kids' bikes are all welcome. Very long bikes should be\nbooked so that "
    "we can keep a stand free.",
    "faq.md", "faq", section="Frequently asked questions > Do you repair cargo bikes and recumbents?",
    similarity=0.60)


async def test_faq_answer_that_opens_with_a_bare_yes_is_still_its_questions_answer(
    embedder: Embedder,
) -> None:
    """The demo's FAQ: "Yes." alone says nothing to score, so the answer is the sentence after it,
    not a neighbouring FAQ whose answer sentence happens to start "Yes, ..." (seen on /demo)."""
    ans = await _extract(embedder, "Do you repair e-bikes from Bosch?", [EBIKES, CARGO])
    assert ans is not None
    assert "We service Bosch, Shimano Steps and Brose motor systems" in ans.text
    assert "cargo" not in ans.text
    # A plain yes/no FAQ question of the other chunk still gets its own answer.
    ans2 = await _extract(embedder, "Do you repair cargo bikes?", [EBIKES, CARGO])
    assert ans2 is not None and "cargo bikes, tandems, recumbents" in ans2.text
    assert "Bosch" not in ans2.text


HOURS = Chunk(
    "Opening hours and location > Opening hours\n- Monday: closed\n- Tuesday to Friday: 9:00 to "
    "18:00\n- Saturday: 9:00 to 16:00\n- Sunday: 10:00 to 14:00 (quick repairs and punctures only, "
    "no bookings)", "hours-and-location.md", "hours-and-location",
    section="Opening hours and location > Opening hours", similarity=0.45)
CONTACT = Chunk(
    "Opening hours and location > Contact\nPhone 0555 0142 (Tuesday to Saturday during opening "
    "hours), email hello@spokeandsprocket.example.", "hours-and-location.md", "hours-and-location",
    section="Opening hours and location > Contact", similarity=0.47)


async def test_a_question_matching_a_sections_heading_gets_the_whole_list_under_it(
    embedder: Embedder,
) -> None:
    """The demo's hours: "What are your opening hours?" got the contact line that says "opening
    hours" and one day of the list (seen on /demo). The section whose heading the question
    matches answers, with every item of its list, "Monday: closed" included."""
    ans = await _extract(embedder, "What are your opening hours?", [CONTACT, HOURS])
    assert ans is not None
    for day in ("Monday: closed", "Tuesday to Friday: 9:00 to 18:00", "Saturday: 9:00 to 16:00",
                "Sunday: 10:00 to 14:00"):
        assert day in ans.text, ans.text
    assert "0555 0142" not in ans.text
    # A question that matches no heading closely still gets the sentence that answers it.
    phone = await _extract(embedder, "What is your phone number?", [CONTACT, HOURS])
    assert phone is not None and "0555 0142" in phone.text
    assert "Monday: closed" not in phone.text


async def test_a_paragraph_after_a_list_answers_on_its_own(embedder: Embedder) -> None:
    """The demo's hours page chunked as ingestion chunks it: "Are you open on public holidays?"
    got the Sunday list item with the holiday sentences glued to it, because chunk text had no
    blank line between the list and the paragraph after it."""
    from pathlib import Path

    from ingestion.chunking import Chunker, markdown_sections

    page = Path(__file__).parents[1] / "widget" / "sample_kb" / "hours-and-location.md"
    rows = Chunker().chunk_sections(markdown_sections(page.read_text(), page.stem), page.stem)
    [hours] = [r for r in rows if r.section.endswith("> Opening hours")]
    chunk = Chunk(hours.text, page.name, page.stem, section=hours.section, similarity=0.5)
    holidays = await _extract(embedder, "Are you open on public holidays?", [chunk])
    assert holidays is not None and "On public holidays the workshop is closed." in holidays.text
    assert "Sunday" not in holidays.text, holidays.text
    week = await _extract(embedder, "What are your opening hours?", [chunk])
    assert week is not None and "Monday: closed" in week.text and "Sunday: 10:00" in week.text
    assert "public holidays" not in week.text, week.text


async def test_headings_are_not_quoted_as_answers(embedder: Embedder) -> None:
    ans = await _extract(embedder, "How big is the discount for nonprofits?", [NONPROFIT])
    assert ans is not None
    assert "15% introductory discount" in ans.text
    assert not ans.text.startswith("Discount for nonprofits and educational")


async def test_web_page_answer_cites_its_url(embedder: Embedder) -> None:
    ans = await _extract(embedder, "Do weekly email reports come with PDF attachments?", [EMAIL_REPORTS])
    assert ans is not None
    assert "no attachments, no PDFs" in ans.text
    assert ans.text.endswith("(https://help.example/email-reports.html)")


async def test_unrelated_question_gets_no_extract(embedder: Embedder) -> None:
    assert await _extract(embedder, "Can I rent a kayak for the weekend?", [NONPROFIT]) is None
    # The positive twin on the same chunk.
    assert await _extract(embedder, "Is there a discount for nonprofits?", [NONPROFIT]) is not None


def test_citation_shapes() -> None:
    assert citation(PAYMENT) == "Plausible Billing, Plans and Pricing Guide (billing-guide.pdf, page 1)"
    assert citation(Chunk("x", "qa:1f2e", "Opening hours")) == "Opening hours"
    assert citation(Chunk("x", "https://a.example/p", "")) == "https://a.example/p"


def test_content_words_drop_stop_words_and_match_word_forms() -> None:
    assert content_words("Can I pay by bank wire transfer?") == {"pay", "bank", "wire", "trans"}
    assert content_words("transfers") == content_words("transfer")


# ---------------------------------------------------------------- coverage
def test_coverage_threshold_and_the_all_words_witness() -> None:
    low = Chunk("x", "s", "t", similarity=0.35)
    assert not assess_coverage([low], min_similarity=0.4).covered
    assert not assess_coverage([], min_similarity=0.4).covered
    rescued = assess_coverage([low, Chunk("y", "s", "t", similarity=0.4 - TEXT_LEG_MARGIN + 0.01,
                                          text_all=True)], min_similarity=0.4)
    assert rescued.covered and rescued.weak and rescued.detail["via"] == "text"
    strong = assess_coverage([Chunk("z", "s", "t", similarity=0.7)], min_similarity=0.4)
    assert strong.covered and not strong.weak and strong.detail["via"] == "vector"


# ---------------------------------------------------------------- grounding
async def _checker(embedder: Embedder, *chunks: Chunk) -> GroundingChecker:
    return await GroundingChecker.build(list(chunks), embedder.embed_many)


async def test_invented_price_is_unsupported_and_a_quoted_fact_supported(embedder: Embedder) -> None:
    checker = await _checker(embedder, NONPROFIT, PAYMENT)
    bad = await checker.check_sentence("The enterprise plan costs $100.")
    assert not bad.supported
    good = await checker.check_sentence(
        "We offer a 15% introductory discount to nonprofits and educational institutions.")
    assert good.supported, good


async def test_changed_number_is_unsupported(embedder: Embedder) -> None:
    checker = await _checker(embedder, NONPROFIT)
    v = await checker.check_sentence("We offer a 25% introductory discount to nonprofits.")
    assert not v.supported and "25" in v.missing_items
    assert (await checker.check_sentence("Nonprofits get a 15% introductory discount.")).supported


async def test_dropped_negation_is_unsupported(embedder: Embedder) -> None:
    checker = await _checker(embedder, EMAIL_REPORTS)
    flipped = await checker.check_sentence("Weekly email reports come with PDF attachments.")
    assert not flipped.supported
    kept = await checker.check_sentence("The email reports have no attachments and no PDFs.")
    assert kept.supported, kept


async def test_check_removes_only_the_unsupported_sentences(embedder: Embedder) -> None:
    checker = await _checker(embedder, PAYMENT)
    res = await checker.check("We accept credit/debit card, PayPal, Apple Pay and Google Pay. "
                              "The enterprise plan costs $100.")
    assert res.supported == 1 and res.removed == 1
    assert "PayPal" in res.text and "$100" not in res.text
