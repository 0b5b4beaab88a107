"""PDF text, page by page, with pypdf. Corrupt, encrypted and image-only PDFs raise
:class:`~runtime.errors.IngestionError` with a message an owner can act on."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from pypdf import PasswordType, PdfReader
from pypdf.errors import PyPdfError

from runtime.errors import IngestionError

log = logging.getLogger(__name__)
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True)
class PdfText:
    """A PDF's title (metadata, else '') and its pages' text (index 0 is page 1; '' for pages
    without a text layer)."""

    title: str
    pages: list[str]


def read_pdf(data: bytes, name: str = "document.pdf") -> PdfText:
    """Text of every page of the PDF in ``data``.

    Raises IngestionError: not a PDF, corrupt/unreadable, encrypted with a password, or no
    page has extractable text (scanned/image-only; OCR is not supported).
    """
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise IngestionError(f"{name}: not a PDF file (it does not start with %PDF)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # Owner-password-only PDFs open with the empty user password.
            if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise IngestionError(
                    f"{name}: the PDF is encrypted with a password; upload an unencrypted copy"
                )
        n_pages = len(reader.pages)
    except IngestionError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for broken files
        raise IngestionError(f"{name}: corrupt or unreadable PDF ({_describe(exc)})") from None
    if n_pages == 0:
        raise IngestionError(f"{name}: the PDF has no pages")
    pages: list[str] = []
    failed = 0
    for i in range(n_pages):
        try:
            pages.append(reader.pages[i].extract_text() or "")
        except Exception as exc:  # noqa: BLE001
            failed += 1
            log.warning("%s: page %d unreadable: %s", name, i + 1, exc)
            pages.append("")
    if not any(p.strip() for p in pages):
        if failed == n_pages:
            raise IngestionError(f"{name}: corrupt PDF (no page could be read)")
        raise IngestionError(
            f"{name}: no extractable text in {n_pages} page(s); it looks scanned or image-only "
            "(OCR is not supported): upload a PDF with a text layer"
        )
    title = ""
    try:
        meta = reader.metadata
        if meta is not None and meta.title:
            title = str(meta.title).strip()
    except Exception:  # noqa: BLE001 - metadata is optional
        pass
    return PdfText(title=title, pages=pages)


def _describe(exc: Exception) -> str:
    kind = "PDF error" if isinstance(exc, PyPdfError) else type(exc).__name__
    return f"{kind}: {exc}" if str(exc) else kind
