"""Reads a PDF's text layer into one string with a page map, so a selected chunk can be shown as "page 37".

`read_pdf` returns a whole `PDFDocument` or raises a `PDFError`: never a document with pages missing.
The document's `text` is what goes into the prompt; `page_at` / `pages_for_trace` map character spans of
that text (and so the chunks of a selection trace) back to pages.

Typeset PDFs carry more than their prose: running headers and footers on every page, a table of contents and
an index. They match many questions and answer none, so heads that read them miss the page with the answer.
`read_pdf` drops running headers and footers, repairs what extraction breaks (words hyphenated at line ends,
split accents, ligatures, TeX quotes: `longheads.pdftext`), tells contents and index pages from body pages
(`PDFPage.kind`) and can leave those out of the text (`skip`).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from longheads.errors import ContextTooLongError, LongHeadsError
from longheads.pdftext import PAGE_KINDS, prepare_pages

__all__ = [
    "PDFError",
    "PDFNotFoundError",
    "EmptyPDFError",
    "CorruptPDFError",
    "EncryptedPDFError",
    "WrongPasswordError",
    "NoTextLayerError",
    "PDFPage",
    "PDFDocument",
    "PageHit",
    "read_pdf",
    "PAGE_SEPARATOR",
    "PAGE_KINDS",
    "REFERENCE_PAGES",
]

PDFSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

# Pages are joined with a blank line: it reads as a paragraph break to the model and keeps page
# boundaries out of any word, so a character offset always belongs to exactly one page (or the gap).
PAGE_SEPARATOR = "\n\n"

# What the app and `longheads ask` leave out: contents and index pages list every section's words and answer no
# question, and heads read them for every question. Left out, the page map (with the neutral baseline) found the
# answer's page among its first three for 16 of 30 questions on one H100 against 13 of 30, and for 13 of 17
# against 8 of 17 on the CPU (README "Real PDFs"). read_pdf itself keeps every page unless asked.
REFERENCE_PAGES = ("contents", "index")


class PDFError(LongHeadsError):
    """The PDF could not be read into text. The message says why and what to do."""


class PDFNotFoundError(PDFError, FileNotFoundError):
    """The path does not exist or is not a file."""


class EmptyPDFError(PDFError, ValueError):
    """The file is empty (0 bytes) or the PDF has no pages."""


class CorruptPDFError(PDFError, ValueError):
    """The bytes are not a readable PDF (damaged, truncated, or not a PDF at all)."""


class EncryptedPDFError(PDFError, PermissionError):
    """The PDF is encrypted and no password was given."""


class WrongPasswordError(EncryptedPDFError):
    """The PDF is encrypted and the given password does not open it."""


class NoTextLayerError(PDFError, ValueError):
    """No page has a text layer (typically a scanned document)."""


@dataclass(frozen=True)
class PDFPage:
    """One page: its text and where that text sits in `PDFDocument.text`."""

    index: int  # 0-based position in the file
    label: str  # the label the viewer shows ("iv", "37", "A-2"); the 1-based number when the PDF has none
    text: str  # exactly PDFDocument.text[start:end]; "" for a page left out with read_pdf(skip=...)
    start: int  # character offset of the page's text in PDFDocument.text
    end: int  # exclusive
    kind: str = "body"  # "body", "contents" or "index" (PAGE_KINDS)
    skipped: bool = False  # its kind was in read_pdf's `skip`: the page's text is not in PDFDocument.text
    furniture: tuple[str, ...] = ()  # running header / footer lines taken out of `text`

    @property
    def number(self) -> int:
        """1-based page number, as a person counts pages."""
        return self.index + 1


@dataclass(frozen=True)
class PageHit:
    """A page and how strongly a selection trace pointed at it."""

    page: PDFPage
    count: int  # (step, layer, head) selections of the page's chunks, always-kept chunks left out
    chunks: tuple[int, ...]  # the page's selected chunks, most selected first


class _Trace(Protocol):
    prompt_text: str
    chunk_char_spans: Sequence[tuple[int, int]]
    selections: Any  # [steps, layers, heads, slots]

    def chunk_counts(self) -> Any: ...

    def top_chunks(self, k: int, baseline: Any = None) -> list[int]: ...


@dataclass(frozen=True)
class PDFDocument:
    """The text of every page of a PDF, joined with `PAGE_SEPARATOR`, and the page of every character."""

    pages: tuple[PDFPage, ...]
    text: str
    name: str | None = None  # file name, for messages and metadata
    metadata: dict[str, str] = field(default_factory=dict)  # the PDF's info dictionary (title, author, ...)

    @property
    def num_pages(self) -> int:
        return len(self.pages)

    @property
    def empty_pages(self) -> list[int]:
        """1-based numbers of pages without text (images, blank pages) in an otherwise readable PDF; skipped
        pages are not among them."""
        return [p.number for p in self.pages if not p.text and not p.skipped]

    @property
    def title(self) -> str | None:
        return self.metadata.get("title") or None

    def page_at(self, offset: int) -> PDFPage:
        """The page holding character `offset` of `text`; an offset in the gap between pages goes to the page
        before it."""
        if not 0 <= offset < max(len(self.text), 1):
            raise IndexError(f"offset {offset} is outside the document text (0..{len(self.text)})")
        lo, hi = 0, len(self.pages) - 1
        while lo < hi:  # binary search: last page whose start <= offset
            mid = (lo + hi + 1) // 2
            if self.pages[mid].start <= offset:
                lo = mid
            else:
                hi = mid - 1
        return self.pages[lo]

    def pages_in_span(self, start: int, end: int) -> list[PDFPage]:
        """Every page whose text overlaps the character span [start, end) of `text`; a span that lies in the
        gap between pages gives the page before it."""
        start, end = max(start, 0), min(end, len(self.text))
        if end <= start:
            return []
        first, last = self.page_at(start), self.page_at(end - 1)
        pages = self.pages[first.index : last.index + 1]
        # Empty and skipped pages sit in the gaps: a chunk across them read nothing of theirs.
        return [p for p in pages if p.end > p.start] or [first]

    def page_for_span(self, start: int, end: int) -> PDFPage | None:
        """The page that holds most of the span [start, end) of `text`, or None if the span is outside it."""
        best, best_overlap = None, 0
        for page in self.pages_in_span(start, end):
            overlap = min(end, page.end) - max(start, page.start)
            if overlap > best_overlap:
                best, best_overlap = page, overlap
        return best

    def locate(self, prompt_text: str) -> int:
        """Character offset of this document's text inside a rendered prompt (chat template and question
        around it). Raises ValueError if the prompt does not contain the whole document."""
        at = prompt_text.find(self.text)
        if at < 0:
            raise ValueError(
                f"the prompt does not contain the text of {self.name or 'this PDF'}; "
                "pass the document's text unchanged (PDFDocument.text) into the prompt"
            )
        return at

    def pages_for_trace(self, trace: _Trace, k: int = 3, baseline: _Trace | None = None) -> list[PageHit]:
        """The `k` pages the model's heads chose to read while answering, best first.

        Pages are ranked by their most selected chunk, as `trace.top_chunks` ranks chunks: the first chunks
        and those next to the question are read by every head by rule and say nothing, so they are left out.
        A chunk that runs across a page break counts for every page it touches, in page order: the sentence
        that made the heads read it may sit on the page that holds the smaller part of it.
        `baseline`, the trace of another question about the same document laid out the same way (a neutral
        one such as "What is this document about?"), leaves out what the heads read whatever is asked
        (`SelectionTrace.top_chunks`).
        """
        counts = [int(c) for c in trace.chunk_counts().tolist()]
        base = self.locate(trace.prompt_text)
        if baseline is not None and self.locate(baseline.prompt_text) != base:
            raise ValueError("the baseline's prompt does not hold this document at the same place")
        hits: dict[int, list[int]] = {}  # page index -> its chunks, in the order pages were first hit
        for chunk in trace.top_chunks(len(counts), baseline=baseline):
            if chunk >= len(trace.chunk_char_spans):
                continue
            start, end = trace.chunk_char_spans[chunk]
            for page in self.pages_in_span(start - base, end - base):
                hits.setdefault(page.index, []).append(chunk)
        return [PageHit(self.pages[i], sum(counts[c] for c in chunks), tuple(chunks))
                for i, chunks in list(hits.items())[:k]]

    def check_fits(self, n_tokens: int, max_context: int, reserve: int = 0) -> None:
        """Raise ContextTooLongError unless `n_tokens` of this document plus `reserve` tokens (question, chat
        template, answer) fit in `max_context`."""
        if n_tokens + reserve > max_context:
            what = f"PDF {self.name!r}" if self.name else "PDF"
            what += f" ({self.num_pages} pages)"
            if reserve:
                what += f" plus {reserve:,} tokens reserved for the question and answer"
            raise ContextTooLongError(n_tokens + reserve, max_context, what=what)


def read_pdf(
    source: PDFSource,
    *,
    password: str | bytes | None = None,
    name: str | None = None,
    keep_furniture: bool = False,
    skip: Collection[str] = (),
    clean: bool = True,
) -> PDFDocument:
    """Read the text layer of every page of a PDF.

    `source` is a path, the file's bytes, or a binary file object (read to its end). `password` opens an
    encrypted PDF. Raises a PDFError subclass that says what is wrong; never returns part of a document.

    Running headers and footers ("Chapter 2: Objects 3") are taken out of the pages' text unless
    `keep_furniture` (`PDFPage.furniture` lists what went). `skip` names page kinds, "contents" and/or
    "index", whose text stays out of `PDFDocument.text`: such pages stay in `pages`, numbered as in the PDF,
    with no text and `skipped` set. `clean=False` leaves the characters as pypdf extracts them: no hyphens
    joined, accents composed, ligatures, quotes or dot leaders repaired (`longheads.pdftext` lists the rules).
    """
    skip = _check_skip(skip)
    data, name = _read_bytes(source, name)
    label = repr(name) if name else "The file"
    if not data:
        raise EmptyPDFError(f"{label} is empty (0 bytes).")

    # Imported here so `import longheads` does not pay for pypdf when no PDF is read.
    import pypdf
    from pypdf import errors as pdf_errors

    # pypdf logs every recovered oddity of slightly malformed files as a warning; those files still read,
    # and the noise would drown the messages that matter.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt(reader, password, label)
        n_pages = len(reader.pages)
    except PDFError:
        raise
    except pdf_errors.DependencyError as e:
        # AES-encrypted PDFs (the default of current writers) need the `cryptography` package.
        raise EncryptedPDFError(
            f"{label} is AES-encrypted and reading it needs the 'cryptography' package: "
            f"pip install 'pypdf[crypto]' ({e})"
        ) from e
    except pdf_errors.EmptyFileError as e:
        raise EmptyPDFError(f"{label} is empty (0 bytes).") from e
    except Exception as e:  # pypdf raises many types (PdfReadError, ValueError, KeyError...) on damage
        raise CorruptPDFError(f"{label} is not a readable PDF (damaged or not a PDF at all): {e}") from e
    if n_pages == 0:
        raise EmptyPDFError(f"{label} has no pages.")

    try:
        labels = list(reader.page_labels)
    except Exception:
        labels = []  # a broken /PageLabels tree should not cost the text: fall back to numbers
    if len(labels) != n_pages:
        labels = [str(i + 1) for i in range(n_pages)]

    texts: list[str] = []
    for i in range(n_pages):
        try:
            texts.append(_clean(reader.pages[i].extract_text()))
        except Exception as e:
            raise CorruptPDFError(f"{label} is damaged: page {i + 1} of {n_pages} cannot be read: {e}") from e

    if not any(_has_text(t) for t in texts):
        raise NoTextLayerError(
            f"{label} has no text: none of its {n_pages} page(s) has a text layer. It is probably scanned "
            "images; run OCR on it first (for example with ocrmypdf), OCR is out of scope here."
        )

    prepared = prepare_pages(texts, labels, clean=clean, keep_furniture=keep_furniture)
    pages: list[PDFPage] = []
    offset = 0
    for i, (page, page_label) in enumerate(zip(prepared, labels, strict=True)):
        if i:
            offset += len(PAGE_SEPARATOR)
        skipped = page.kind in skip
        text = "" if skipped else page.text
        pages.append(PDFPage(index=i, label=page_label, text=text, start=offset, end=offset + len(text),
                             kind=page.kind, skipped=skipped, furniture=page.furniture))
        offset += len(text)
    text = PAGE_SEPARATOR.join(p.text for p in pages)
    return PDFDocument(pages=tuple(pages), text=text, name=name, metadata=_info(reader))


def _check_skip(skip: Collection[str]) -> frozenset[str]:
    kinds = frozenset([skip] if isinstance(skip, str) else skip)
    unknown = sorted(kinds - set(PAGE_KINDS))
    if unknown:
        raise ValueError(f"skip takes page kinds {PAGE_KINDS[1:]}, not {unknown}")
    if "body" in kinds:
        raise ValueError("skip=('body', ...) would leave nothing of the document to read")
    return kinds


def _read_bytes(source: PDFSource, name: str | None) -> tuple[bytes, str | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not a PDF file" if path.is_dir() else "does not exist"
            raise PDFNotFoundError(f"{str(path)!r} {what}.")
        return path.read_bytes(), name or path.name
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("read_pdf needs a file opened in binary mode ('rb'), got one that returns text")
        # Upload widgets (streamlit's UploadedFile) and open files carry the file's name; paths are trimmed
        # to the name so metadata does not leak local directories.
        given = getattr(source, "name", None)
        return bytes(data), name or (os.path.basename(given) if isinstance(given, str) else None)
    raise TypeError(f"read_pdf takes a path, bytes or a binary file object, not {type(source).__name__}")


def _decrypt(reader: Any, password: str | bytes | None, label: str) -> None:
    from pypdf import PasswordType

    if password is None:
        # Many PDFs are encrypted only to restrict printing or copying, with an empty user password:
        # those open without asking.
        if reader.decrypt("") != PasswordType.NOT_DECRYPTED:
            return
        raise EncryptedPDFError(f"{label} is encrypted: pass its password (read_pdf(..., password=...)).")
    if reader.decrypt(password) == PasswordType.NOT_DECRYPTED:
        raise WrongPasswordError(f"{label} is encrypted and the password given does not open it.")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def _clean(text: str | None) -> str:
    # Control characters (NULs from odd font encodings, form feeds) mean nothing to a tokenizer and can
    # break chat templates; trailing spaces only cost tokens.
    text = _CONTROL.sub("", text or "")
    return _TRAILING_SPACE.sub("\n", text).strip()


def _has_text(text: str) -> bool:
    # Whitespace or punctuation alone is what invisible scan overlays and empty text objects yield.
    return any(ch.isalnum() for ch in text)


def _info(reader: Any) -> dict[str, str]:
    try:
        info = reader.metadata or {}
        return {str(k).lstrip("/").lower(): str(v) for k, v in info.items() if v is not None}
    except Exception:
        return {}  # broken info dictionaries are common and never worth refusing a readable document
