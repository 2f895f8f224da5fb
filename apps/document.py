"""A PDF as the app holds it in a session: the parsed document plus what identifies the upload."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from longheads import pdf

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MAX_UPLOAD_MB = 50


@dataclass(frozen=True)
class Doc:
    name: str
    pdf: pdf.PDFDocument  # .text is exactly what goes into the prompt; .pages map it back to pages
    n_bytes: int
    # Identity of the content, not of the upload: the same file uploaded twice reuses its encoding.
    digest: str

    @property
    def text(self) -> str:
        return self.pdf.text

    @property
    def pages(self) -> tuple[pdf.PDFPage, ...]:
        return self.pdf.pages


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(data: bytes, name: str, password: str | None = None) -> Doc:
    """Parses a PDF; raises a `longheads.pdf.PDFError` subclass that says what is wrong."""
    return Doc(name, pdf.read_pdf(data, password=password, name=name), len(data), digest(data))


def page_range(pages: list[pdf.PDFPage]) -> str:
    """'p. 12' or 'pp. 12–13', with the labels a PDF viewer shows."""
    if not pages:
        return ""
    if len(pages) == 1:
        return f"p. {pages[0].label}"
    return f"pp. {pages[0].label}–{pages[-1].label}"


def samples() -> list[Path]:
    """Bundled PDFs, smallest first; the generated long one is included once it exists."""
    return sorted(SAMPLES.glob("**/*.pdf"), key=lambda p: (p.stat().st_size, p.name))
