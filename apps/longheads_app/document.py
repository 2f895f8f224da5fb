"""A PDF as the app holds it in a browser session: the parsed document plus what identifies the upload."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from longheads import pdf
from longheads.loading import cache_root
from longheads.sample_pdf import make_long_pdf

SAMPLES = Path(__file__).resolve().parent / "samples"  # shipped with the package
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
    parsed = pdf.read_pdf(data, password=password, name=name, skip=pdf.REFERENCE_PAGES)
    return Doc(name, parsed, len(data), digest(data))


def page_range(pages: list[pdf.PDFPage]) -> str:
    """'p. 12' or 'pp. 12–13', with the labels a PDF viewer shows."""
    if not pages:
        return ""
    if len(pages) == 1:
        return f"p. {pages[0].label}"
    return f"pp. {pages[0].label}–{pages[-1].label}"


def samples() -> list[Path]:
    """Bundled PDFs and the long ones generated here, smallest first."""
    found = [*SAMPLES.glob("*.pdf"), *generated_dir().glob("*.pdf")]
    return sorted(found, key=lambda p: (p.stat().st_size, p.name))


def known_facts(path: Path) -> tuple[tuple[str, int], ...]:
    """The questions `longheads.sample_pdf` planted in a PDF, from the JSON it writes beside it."""
    meta = path.with_suffix(".facts.json")
    if not meta.is_file():
        return ()
    try:
        return tuple((f["question"], int(f["page"])) for f in json.loads(meta.read_text())["facts"])
    except (ValueError, KeyError, TypeError):
        return ()


def generated_dir() -> Path:
    """Where long samples made on demand go: `LONGHEADS_SAMPLES_DIR`, else `samples/` in longheads' cache folder
    (`LONGHEADS_CACHE_DIR`), else a temporary folder; never the installed package, which may be read-only."""
    override = os.environ.get("LONGHEADS_SAMPLES_DIR")
    if override:
        return Path(override).expanduser()
    root = cache_root()
    return (root if root is not None else Path(tempfile.gettempdir()) / "longheads") / "samples"


def make_long_sample(tokens: int) -> Path:
    """Writes a long PDF of real prose (Pride and Prejudice) with facts on known pages and returns its path."""
    folder = generated_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pride-and-prejudice-{tokens // 1000}k.pdf"
    make_long_pdf(path, tokens=tokens, n_facts=3)
    return path
