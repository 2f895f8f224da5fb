"""A PDF as the app holds it in a session: the parsed document plus what identifies the upload."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from longheads import pdf

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
GENERATED = ROOT / "out" / "samples"  # long PDFs made on demand; out/ is not versioned
MAX_UPLOAD_MB = 50


@dataclass(frozen=True)
class Doc:
    name: str
    pdf: pdf.PDFDocument  # .text is exactly what goes into the prompt; .pages map it back to pages
    n_bytes: int
    # Identity of the content, not of the upload: the same file uploaded twice reuses its encoding.
    digest: str
    # (question, page) pairs whose answers the file is known to hold: the generated samples record them.
    facts: tuple[tuple[str, int], ...] = ()

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
    """Bundled PDFs and the long ones generated here, smallest first."""
    found = [*SAMPLES.glob("*.pdf"), *GENERATED.glob("*.pdf")]
    return sorted(found, key=lambda p: (p.stat().st_size, p.name))


def known_facts(path: Path) -> tuple[tuple[str, int], ...]:
    """The questions `samples/make_long_pdf.py` planted in a PDF, from the JSON it writes beside it."""
    meta = path.with_suffix(".facts.json")
    if not meta.is_file():
        return ()
    try:
        return tuple((f["question"], int(f["page"])) for f in json.loads(meta.read_text())["facts"])
    except (ValueError, KeyError, TypeError):
        return ()


def make_long_sample(tokens: int) -> Path:
    """Writes a long PDF of real prose (Pride and Prejudice) with facts on known pages (the samples'
    generator) and returns its path."""
    GENERATED.mkdir(parents=True, exist_ok=True)
    path = GENERATED / f"pride-and-prejudice-{tokens // 1000}k.pdf"
    # A separate process: the generator is a script, not part of the installed package.
    subprocess.run(
        [sys.executable, str(SAMPLES / "make_long_pdf.py"), str(path), "--tokens", str(tokens), "--facts", "3"],
        check=True, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return path
