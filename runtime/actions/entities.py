"""The entities actions read from a customer's message, found by rules and checked in code (no
model): an order id, an email address, a phone number, a choice from a numbered list, a booking
reference, a yes/no.

Each extractor returns what it found and whether it is valid, so the turn can ask again with
the expected shape ("order numbers are 4 to 12 digits, like 10234") instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A phone number as people write it: an optional +, then digits with spaces, dots, dashes or
# brackets between them (at least 7 digits in all).
_PHONE = re.compile(r"(?<![\w@])\+?\(?\d[\d\s().-]{5,22}\d(?![\w@])")
# "order 10234", "order #10234", "order number: AB-1234", "order no. 10234", "#10234".
_AFTER_ORDER = re.compile(
    r"\b(?:order|ord|purchase|invoice)(?:\s*(?:number|num|no\.?|nr\.?|id|ref(?:erence)?))?\s*(?:is|was|:)?"
    r"\s*#?\s*([A-Za-z0-9][A-Za-z0-9_/-]{0,39})", re.IGNORECASE)
_HASH = re.compile(r"#\s*([A-Za-z0-9][A-Za-z0-9_/-]{0,39})")
_TOKEN_WITH_DIGIT = re.compile(r"(?<![\w@+#-])([A-Za-z0-9_/-]*\d[A-Za-z0-9_/-]*)(?![\w@])")
_BOOKING_REF = re.compile(r"\bBK-?([23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8})\b", re.IGNORECASE)
_YES = re.compile(r"^\W*(?:y|yes|yeah|yep|yup|sure|ok(?:ay)?|please(?:\s+do)?|go\s+ahead|confirm(?:ed)?|"
                  r"do\s+it|yes\s+please|that'?s\s+right|correct)\W*$", re.IGNORECASE)
_NO = re.compile(r"^\W*(?:n|no|nope|nah|don'?t|do\s+not|cancel|stop|never\s*mind|forget\s+it)\b",
                 re.IGNORECASE)
_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4,
             "4th": 4, "fifth": 5, "5th": 5, "sixth": 6, "6th": 6}
_CHOICE = re.compile(r"^\W*(?:(?:number|no\.?|option|#)\s*)?(\d{1,2})\W*$", re.IGNORECASE)


@dataclass(frozen=True)
class OrderIdShape:
    """What a tenant's order ids look like: ``chars`` digits | alphanumeric (letters, digits and
    ``-``), ``min_length``..``max_length`` characters (a max below the min counts as the min);
    ``prefix``: a fixed start some stores print (``#``, ``SO-``), optional when the customer
    writes the id."""

    chars: str = "digits"
    min_length: int = 4
    max_length: int = 12
    prefix: str = ""

    def pattern(self) -> re.Pattern[str]:
        body = r"[0-9]" if self.chars == "digits" else r"[A-Za-z0-9-]"
        top = max(self.min_length, self.max_length)
        return re.compile(f"{body}{{{self.min_length},{top}}}")

    def hint(self) -> str:
        """The expected shape in words, e.g. "4 to 12 digits, like 10234"."""
        top = max(self.min_length, self.max_length)
        count = f"{self.min_length}" if top == self.min_length else f"{self.min_length} to {top}"
        kind = "digits" if self.chars == "digits" else "letters and digits"
        example = ("1023456789012"[:max(self.min_length, min(5, top))] if self.chars == "digits"
                   else "AB12345678901"[:max(self.min_length, min(7, top))])
        return f"{count} {kind}, like {self.prefix}{example}"

    def normalize(self, raw: str) -> str:
        """``raw`` without the prefix (any case) and surrounding punctuation; letters upper-cased
        for alphanumeric ids."""
        value = raw.strip().strip(".,;:!?()[]\"'")
        if self.prefix and value.upper().startswith(self.prefix.upper()):
            value = value[len(self.prefix):]
        value = value.lstrip("#")
        return value.upper() if self.chars != "digits" else value

    def valid(self, value: str) -> bool:
        return self.pattern().fullmatch(value) is not None


@dataclass(frozen=True)
class Found:
    """An extracted entity: ``value`` normalised, ``valid`` against its validator, ``raw`` as
    written. ``value`` is None when nothing that could be the entity was found."""

    value: str | None
    valid: bool
    raw: str = ""


def _without_contacts(text: str) -> str:
    """``text`` with emails and +phone numbers blanked (their digits are not order ids)."""
    text = _EMAIL.sub(" ", text)
    return re.sub(r"\+\d[\d\s().-]{5,22}\d", " ", text)


def find_order_id(text: str, shape: OrderIdShape, *, expecting: bool = False) -> Found:
    """The order id in ``text``: a token after "order"/"order number"/"#" (or starting with the
    tenant's prefix); else, when the customer was asked for it (``expecting``) or the message
    speaks of an order or a parcel, any token with a digit (or the whole message when it is one
    word and expected). Emails and +phone numbers are never read as ids. A candidate that does not
    fit ``shape`` comes back with ``valid=False`` (a stray number in an unprompted message is not
    a malformed id: nothing found); nothing found is ``Found(None, False)``."""
    clean = _without_contacts(text)
    strong: list[str] = []
    for m in _AFTER_ORDER.finditer(clean):
        token = m.group(1)
        if any(c.isdigit() for c in token) or "#" in clean[m.start():m.start(1)]:
            strong.append(token)
    strong += [m.group(1) for m in _HASH.finditer(clean)]
    if shape.prefix:
        strong += re.findall(re.escape(shape.prefix) + r"[A-Za-z0-9-]+", clean, re.IGNORECASE)
    candidates = strong
    if not candidates and (expecting or _mentions_order(text)):
        candidates = [m.group(1) for m in _TOKEN_WITH_DIGIT.finditer(clean)]
        words = clean.split()
        if not candidates and expecting and len(words) == 1:
            candidates = words
    if not candidates:
        return Found(None, False)
    for raw in candidates:
        value = shape.normalize(raw)
        if shape.valid(value):
            return Found(value, True, raw)
    if not strong and not expecting:
        return Found(None, False)  # "I ordered 3 items": a number, but not given as an order id
    return Found(shape.normalize(candidates[0]), False, candidates[0])


def _mentions_order(text: str) -> bool:
    return re.search(r"\b(?:order|ord|purchase|invoice|package|parcel|delivery|shipment)", text,
                     re.IGNORECASE) is not None


def find_email(text: str) -> str | None:
    """The first valid email address in ``text``, normalised (domain lower-cased), or None."""
    for m in _EMAIL.finditer(text):
        try:
            return str(validate_email(m.group(0), check_deliverability=False).normalized)
        except EmailNotValidError:
            continue
    return None


def normalize_phone(raw: str | None, region: str = "US") -> str | None:
    """``raw`` as E.164 (``+16505551234``) via ``phonenumbers``, reading a number without a
    country code as ``region``'s. None when it is not a possible number."""
    if not raw:
        return None
    import phonenumbers  # ~7 MB of metadata: loaded by the first phone read, not in every actor

    value = str(raw).strip()
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def find_phone(text: str, region: str = "US") -> str | None:
    """The first possible phone number in ``text`` as E.164, or None."""
    for m in _PHONE.finditer(_EMAIL.sub(" ", text)):
        digits = re.sub(r"\D", "", m.group(0))
        if len(digits) < 7:
            continue
        phone = normalize_phone(m.group(0), region)
        if phone is not None:
            return phone
    return None


def find_choice(text: str, count: int) -> int | None:
    """A 1-based choice from a list of ``count`` ("2", "number 2", "the second one"), or None."""
    m = _CHOICE.match(text)
    if m:
        n = int(m.group(1))
        return n if 1 <= n <= count else None
    words = re.findall(r"[a-z0-9]+", text.lower())
    if len(words) <= 4:
        for word in words:
            if word in _ORDINALS and _ORDINALS[word] <= count:
                return _ORDINALS[word]
    return None


def find_booking_reference(text: str) -> str | None:
    """A booking reference (``BK-7KQ2M9XD``, any case, the dash optional), normalised."""
    m = _BOOKING_REF.search(text)
    return f"BK-{m.group(1).upper()}" if m else None


def is_yes(text: str) -> bool:
    """A short agreement ("yes", "sure", "ok please")."""
    return _YES.match(text) is not None


def is_no(text: str) -> bool:
    """A refusal or a change of mind ("no", "never mind", "cancel")."""
    return _NO.match(text) is not None
