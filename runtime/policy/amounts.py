"""Money amounts quoted in a customer message.

Recognised forms (case-insensitive): a currency symbol or code before or after the number
(``$1,200``, ``US$ 99.99``, ``€50``, ``50 €``, ``1200 USD``, ``EUR 3.5k``, ``1.200,50 €``), a
currency word after it (``2k dollars``, ``300 bucks``, ``40 euros``, ``£5 quid``), magnitude words
(``k``, ``thousand``, ``grand``, ``m``, ``million``, ``bn``, ``billion``), and numbers without a
currency when the sentence talks about money (``our budget is 1.5 million``, ``I paid 1200 for
it``). Plain numbers without any money context (order numbers, years, counts) are not amounts.

Number formats: ``1,200`` and ``1.200.000`` group thousands; ``1.200,50`` and ``1,5`` use a
decimal comma; a single ``.`` is a decimal point (``1.200`` reads as 1.2). ``$`` is taken as USD.
Amounts are never converted between currencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MAX_SCAN = 20_000

# Longest first so that "US$" wins over "$".
_SYMBOLS: dict[str, str] = {
    "us$": "USD",
    "usd$": "USD",
    "c$": "CAD",
    "ca$": "CAD",
    "cad$": "CAD",
    "a$": "AUD",
    "au$": "AUD",
    "nz$": "NZD",
    "hk$": "HKD",
    "s$": "SGD",
    "r$": "BRL",
    "mx$": "MXN",
    "$": "USD",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
    "￥": "JPY",
    "₹": "INR",
    "₩": "KRW",
    "₽": "RUB",
    "₺": "TRY",
    "₪": "ILS",
    "₫": "VND",
    "₱": "PHP",
    "₦": "NGN",
    "฿": "THB",
    "zł": "PLN",
}
_CODES = (
    "USD EUR GBP JPY INR CAD AUD NZD CHF CNY RMB HKD SGD SEK NOK DKK PLN CZK HUF BRL MXN ZAR "
    "KRW RUB TRY ILS AED SAR THB PHP IDR MYR VND NGN KES EGP ARS CLP COP PEN"
).split()
_WORDS: dict[str, str] = {
    "dollar": "USD",
    "dollars": "USD",
    "buck": "USD",
    "bucks": "USD",
    "usd": "USD",
    "euro": "EUR",
    "euros": "EUR",
    "pound": "GBP",
    "pounds": "GBP",
    "quid": "GBP",
    "sterling": "GBP",
    "yen": "JPY",
    "rupee": "INR",
    "rupees": "INR",
    "yuan": "CNY",
    "renminbi": "CNY",
    "franc": "CHF",
    "francs": "CHF",
    "pesos": "MXN",
    "reais": "BRL",
    "rand": "ZAR",
}
_QUALIFIED_WORDS: dict[str, str] = {
    "canadian dollars": "CAD",
    "australian dollars": "AUD",
    "us dollars": "USD",
    "u.s. dollars": "USD",
    "american dollars": "USD",
    "swiss francs": "CHF",
    "british pounds": "GBP",
    "new zealand dollars": "NZD",
    "singapore dollars": "SGD",
    "hong kong dollars": "HKD",
}
_SCALES: dict[str, float] = {
    "k": 1e3,
    "K": 1e3,
    "thousand": 1e3,
    "thousands": 1e3,
    "grand": 1e3,
    "m": 1e6,
    "mm": 1e6,
    "mn": 1e6,
    "mil": 1e6,
    "mio": 1e6,
    "million": 1e6,
    "millions": 1e6,
    "b": 1e9,
    "bn": 1e9,
    "billion": 1e9,
    "billions": 1e9,
}


def _alt(options: list[str]) -> str:
    return "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))


_NUM = (
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:\.\d{3})+(?:,\d+)?|\d{1,3}(?:'\d{3})+(?:\.\d+)?"
    r"|\d+(?:[.,]\d+)?"
)
_PRE = rf"(?P<sym>{_alt(list(_SYMBOLS))})|(?<![A-Za-z])(?P<code>{_alt(_CODES)})(?![A-Za-z])"
_SCALE = rf"(?P<scale>{_alt(list(_SCALES))})(?![A-Za-z])"
_POST = (
    rf"(?P<pqual>{_alt(list(_QUALIFIED_WORDS))})(?![A-Za-z])"
    rf"|(?P<pword>{_alt(list(_WORDS))})(?![A-Za-z])"
    rf"|(?P<pcode>{_alt(_CODES)})(?![A-Za-z])"
    rf"|(?P<psym>{_alt([s for s in _SYMBOLS if not s[0].isalpha()])})(?!\s?\d)"
)
_AMOUNT_RE = re.compile(
    rf"(?:(?:{_PRE})\s?|(?<![\w.,']))"
    rf"(?P<num>{_NUM})(?![\d])(?!\.\d|,\d|:\d|\s?%)"
    rf"(?:\s?{_SCALE})?"
    rf"(?:\s?(?:{_POST}))?",
    re.IGNORECASE,
)
_MONEY_WORDS = (
    r"paid|pay|paying|payment|charged?|charges|charging|refunds?|refunded|costs?|costing|"
    r"priced?|prices|worth|spent|spend|spending|owe[ds]?|owing|budget|invoiced?|invoices|billed|"
    r"bill|fees?|deposit(?:ed)?|withdr[ae]w|withdrawal|transferr?(?:ed)?|wired?|loan|salary|"
    r"revenue|money|funds|sum|overcharged|debited|credited|purchase[ds]?|bought|deal|contract"
)
_MONEY_CONTEXT_BEFORE = re.compile(rf"\b(?:{_MONEY_WORDS})\b(?:\s+[\w']+){{0,2}}\s*[:=]?\s*$", re.I)
_MONEY_IN_SENTENCE = re.compile(rf"\b(?:{_MONEY_WORDS})\b", re.I)
_NEXT_WORD = re.compile(r"\s*([A-Za-z]+)")
_FUNCTION_WORDS = frozenset(
    "for in on to and or a an the per from this that last next each every is was were are be "
    "please right ok okay now total but so if because since already yet which with at by as of "
    "up down over under than then i we you it they he she my our your their its".split()
)
_RANGE_GAP = re.compile(r"\s*(?:-|–|—|to|and)\s*$", re.I)
_YEAR = re.compile(r"(?:19|20)\d\d")
_NOT_MONEY_BEFORE = re.compile(
    r"(?:#|\bno\.?|\bnumber|\bnum|\bid|\border|\bticket|\baccount|\bcase|\bref|\breference|"
    r"\bphone|\bversion|\bv|\bstep|\bpage|\bline|\broom|\bzip|\bcode)\s*[:#]?\s*$",
    re.I,
)


@dataclass(frozen=True)
class Amount:
    """One money amount found in text.

    value: the amount as a float in units of ``currency`` (magnitudes applied: "2k" -> 2000.0);
    currency: ISO 4217 code when the text says it ("$" is USD), else ``None``;
    text: the matched substring; span: ``(start, end)`` character offsets into the input.
    """

    value: float
    currency: str | None
    text: str
    span: tuple[int, int]


def parse_number(raw: str) -> float:
    """Parse a number written with thousands separators or a decimal comma.

    ``"1,200"`` -> 1200.0, ``"1.200,50"`` -> 1200.5, ``"1,5"`` -> 1.5, ``"1'000"`` -> 1000.0,
    ``"1.5"`` -> 1.5. Raises ``ValueError`` for text that is not a number.
    """
    s = raw.strip().replace("'", "")
    if "," in s and "." in s:
        if s.rfind(",") > s.rfind("."):
            s = s.replace(".", "").replace(",", ".")
        else:
            s = s.replace(",", "")
    elif "," in s:
        parts = s.split(",")
        if len(parts) > 2 or len(parts[1]) == 3:
            s = s.replace(",", "")
        else:
            s = s.replace(",", ".")
    elif s.count(".") > 1:
        s = s.replace(".", "")
    return float(s)


def _sentence_around(text: str, start: int, end: int) -> str:
    left = max(text.rfind(c, 0, start) for c in ".!?\n")
    rights = [i for i in (text.find(c, end) for c in "!?\n") if i != -1]
    dot = re.search(r"\.(?:\s|$)", text[end:])
    if dot:
        rights.append(end + dot.start())
    right = min(rights) if rights else len(text)
    return text[left + 1 : right]


def extract_amounts(text: str) -> list[Amount]:
    """Return every money amount in ``text``, in order of appearance (see the module doc).

    Only the first 20000 characters are examined. Never raises on odd input.
    """
    text = text[:_MAX_SCAN]
    found: list[Amount] = []
    for m in _AMOUNT_RE.finditer(text):
        try:
            value = parse_number(m.group("num"))
        except ValueError:
            continue
        scale_word = m.group("scale")
        if scale_word:
            # "m" / "b" alone after a bare number is too ambiguous ("5m" metres, "2b" flat).
            scale = _SCALES.get(scale_word, _SCALES.get(scale_word.lower(), 1.0))
            value *= scale
        currency: str | None = None
        if m.group("sym"):
            currency = _SYMBOLS[m.group("sym").lower()]
        elif m.group("code"):
            currency = m.group("code").upper()
        if m.group("pqual"):
            currency = _QUALIFIED_WORDS[m.group("pqual").lower()]
        elif m.group("pword"):
            currency = currency or _WORDS[m.group("pword").lower()]
        elif m.group("pcode"):
            currency = currency or m.group("pcode").upper()
        elif m.group("psym"):
            currency = currency or _SYMBOLS[m.group("psym").lower()]
        if currency == "RMB":
            currency = "CNY"

        start, end = m.span()
        if currency is None and found and _RANGE_GAP.fullmatch(text[found[-1].span[1] : start]):
            currency = found[-1].currency  # "$100-200", "between €5 and 10"
        if currency is None:
            if not scale_word and _YEAR.fullmatch(m.group("num")):
                continue
            before = text[max(0, m.start("num") - 40) : m.start("num")]
            if _NOT_MONEY_BEFORE.search(before):
                continue
            if scale_word and scale_word.lower() == "grand":
                pass  # "5 grand" is money on its own
            elif scale_word and scale_word.lower() not in ("m", "b"):
                # "1.5 million" counts unless a noun says what is counted ("10k users").
                nxt = _NEXT_WORD.match(text, end)
                counted = nxt is not None and nxt.group(1).lower() not in _FUNCTION_WORDS
                if counted and not _MONEY_IN_SENTENCE.search(_sentence_around(text, start, end)):
                    continue
            elif not _MONEY_CONTEXT_BEFORE.search(before):
                continue
        found.append(Amount(value=value, currency=currency, text=text[start:end].strip(), span=(start, end)))
    return found


def amount_over(text: str, threshold: float) -> Amount | None:
    """Return the largest amount in ``text`` strictly greater than ``threshold``, else ``None``.

    ``threshold`` is compared with each amount's value whatever its currency (no conversion).
    """
    over = [a for a in extract_amounts(text) if a.value > threshold]
    return max(over, key=lambda a: a.value) if over else None
