"""PDF ingestion: the page map, every bad input's message, and the load time of a ~100k-token PDF."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from pathlib import Path

import pytest
from pypdf import PdfWriter

from longheads.errors import ContextTooLongError, LongHeadsError
from longheads.pdf import (
    PAGE_SEPARATOR,
    CorruptPDFError,
    EmptyPDFError,
    EncryptedPDFError,
    NoTextLayerError,
    PDFError,
    PDFNotFoundError,
    WrongPasswordError,
    read_pdf,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE = SAMPLES / "eddystone.pdf"
sys.path.insert(0, str(SAMPLES))
from make_long_pdf import make_long_pdf  # noqa: E402


def _encrypted(user_password: str, algorithm: str = "AES-256") -> bytes:
    writer = PdfWriter(clone_from=str(SAMPLE))
    writer.encrypt(user_password=user_password, owner_password="owner-pw", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _scanned(tmp_path: Path) -> bytes:
    """A PDF like a scanner makes: each page one picture of text, no text layer."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    img = Image.new("L", (600, 800), 255)
    ImageDraw.Draw(img).text((40, 40), "This page was scanned; its words are only pixels.", fill=0)
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.image(img, x=10, y=10, w=190)
    return bytes(pdf.output())


# --- reading good PDFs ------------------------------------------------------------------------------------


def test_sample_pages_labels_and_offsets() -> None:
    doc = read_pdf(SAMPLE)
    assert doc.name == "eddystone.pdf"
    assert doc.num_pages == 5
    assert [p.number for p in doc.pages] == [1, 2, 3, 4, 5]
    # The sample's preface is labelled in roman numerals, the chronicle from 1.
    assert [p.label for p in doc.pages] == ["i", "1", "2", "3", "4"]
    assert doc.title == "The Eddystone Lighthouse: Four Towers on One Rock"
    assert doc.text == PAGE_SEPARATOR.join(p.text for p in doc.pages)
    for page in doc.pages:
        assert doc.text[page.start : page.end] == page.text
    assert "swallowed" in doc.pages[2].text
    assert doc.empty_pages == []


def test_page_map_from_offsets_and_spans() -> None:
    doc = read_pdf(SAMPLE)
    at = doc.text.index("swallowed")
    assert doc.page_at(at).number == 3
    assert doc.page_at(0).number == 1
    assert doc.page_at(len(doc.text) - 1).number == 5
    # The blank line between pages belongs to the page before it.
    assert doc.page_at(doc.pages[1].end).number == 2
    with pytest.raises(IndexError):
        doc.page_at(len(doc.text))

    # A span across a page break belongs to the page holding most of it.
    boundary = doc.pages[2].start
    assert [p.number for p in doc.pages_in_span(boundary - 30, boundary + 5)] == [2, 3]
    assert doc.page_for_span(boundary - 30, boundary + 5).number == 2
    assert doc.page_for_span(boundary - 5, boundary + 30).number == 3
    assert doc.page_for_span(len(doc.text) + 10, len(doc.text) + 20) is None


class _ChunkTrace:
    """Just what pages_for_trace reads of a SelectionTrace: chunk spans in the prompt and their ranking."""

    def __init__(self, prompt_text: str, spans: list[tuple[int, int]], ranked: list[int]) -> None:
        self.prompt_text, self.chunk_char_spans, self.ranked = prompt_text, spans, ranked

    def chunk_counts(self):
        import torch

        counts = torch.zeros(len(self.chunk_char_spans), dtype=torch.long)
        for i, c in enumerate(self.ranked):
            counts[c] = 100 - i
        return counts

    def top_chunks(self, k: int, baseline=None) -> list[int]:
        return self.ranked[:k]


def test_pages_for_trace_credits_every_page_a_chunk_touches() -> None:
    doc = read_pdf(SAMPLE)
    prompt = "Read this.\n" + doc.text + "\nQuestion?"
    base = len("Read this.\n")
    # Chunk 0 runs across the break between pages 2 and 3 with most of it on page 2; chunk 1 is inside page 4.
    boundary = doc.pages[2].start
    inside = base + doc.pages[3].start
    spans = [(base + boundary - 300, base + boundary + 20), (inside + 5, inside + 90)]
    hits = doc.pages_for_trace(_ChunkTrace(prompt, spans, [0, 1]))
    assert [h.page.number for h in hits] == [2, 3, 4]
    assert [h.chunks for h in hits] == [(0,), (0,), (1,)]
    assert [h.count for h in hits] == [100, 100, 99]
    assert [h.page.number for h in doc.pages_for_trace(_ChunkTrace(prompt, spans, [1, 0]), k=2)] == [4, 2]


def test_locate_document_inside_a_prompt() -> None:
    doc = read_pdf(SAMPLE)
    prompt = "<|im_start|>user\n" + doc.text + "\n\nQuestion: who was Henry Hall?<|im_end|>"
    base = doc.locate(prompt)
    assert base == len("<|im_start|>user\n")
    at = prompt.index("swallowed")
    assert doc.page_for_span(at - base, at - base + 10).label == "2"
    with pytest.raises(ValueError, match="does not contain the text of eddystone.pdf"):
        doc.locate("a prompt about something else")


def test_path_bytes_and_file_object_give_the_same_document(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    from_path = read_pdf(str(SAMPLE))
    from_bytes = read_pdf(data)
    with open(SAMPLE, "rb") as f:
        from_file = read_pdf(f)
    from_buffer = read_pdf(io.BytesIO(data), name="upload.pdf")
    assert from_path.text == from_bytes.text == from_file.text == from_buffer.text
    assert from_bytes.name is None
    assert from_file.name == "eddystone.pdf"  # trimmed to the file name, never the directory
    assert from_buffer.name == "upload.pdf"


def test_password_opens_an_encrypted_pdf() -> None:
    doc = read_pdf(_encrypted("s3cret"), password="s3cret")
    assert doc.text == read_pdf(SAMPLE).text
    # The owner password opens it too, and RC4 (older writers) works like AES.
    assert read_pdf(_encrypted("s3cret", "RC4-128"), password="owner-pw").num_pages == 5


def test_encryption_without_user_password_opens_without_asking() -> None:
    # Permission-only encryption (no printing, no copying) must not ask the user for a password.
    assert read_pdf(_encrypted("")).num_pages == 5


# --- every bad input, with its message --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PDFNotFoundError, match=r"'.*nope\.pdf' does not exist\."):
        read_pdf(tmp_path / "nope.pdf")
    with pytest.raises(PDFNotFoundError, match="is a directory, not a PDF file"):
        read_pdf(tmp_path)


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(EmptyPDFError, match=r"^'empty\.pdf' is empty \(0 bytes\)\.$"):
        read_pdf(empty)
    with pytest.raises(EmptyPDFError, match=r"^The file is empty \(0 bytes\)\.$"):
        read_pdf(io.BytesIO())


def test_pdf_with_no_pages() -> None:
    out = io.BytesIO()
    PdfWriter().write(out)
    with pytest.raises(EmptyPDFError, match="^The file has no pages.$"):
        read_pdf(out.getvalue())


@pytest.mark.parametrize(
    "data",
    [
        b"Dear diary, this is a text file with a .pdf name.",
        b"%PDF-1.7\n" + bytes(range(256)) * 8,
        SAMPLE.read_bytes()[: len(SAMPLE.read_bytes()) // 2],  # a download cut off half way
    ],
    ids=["text-file", "garbage-after-header", "truncated"],
)
def test_corrupt_file(data: bytes) -> None:
    message = r"^The file is not a readable PDF \(damaged or not a PDF at all\): "
    with pytest.raises(CorruptPDFError, match=message):
        read_pdf(data)


def test_damaged_page_fails_the_whole_document(tmp_path: Path) -> None:
    # One unreadable page must not give a document with a hole in it.
    path = tmp_path / "book.pdf"
    make_long_pdf(path, tokens=6000, n_facts=1)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1500] = b"x" * 1500
    message = r"is damaged: page \d+ of \d+ cannot be read|not a readable PDF"
    with pytest.raises(CorruptPDFError, match=message):
        read_pdf(bytes(data))


def test_encrypted_without_password() -> None:
    with pytest.raises(EncryptedPDFError, match=r"^'locked\.pdf' is encrypted: pass its password") as info:
        read_pdf(_encrypted("s3cret"), name="locked.pdf")
    assert not isinstance(info.value, WrongPasswordError)


def test_encrypted_with_wrong_password() -> None:
    message = "^The file is encrypted and the password given does not open it.$"
    with pytest.raises(WrongPasswordError, match=message):
        read_pdf(_encrypted("s3cret"), password="guess")


def test_scanned_pdf_without_text_layer(tmp_path: Path) -> None:
    with pytest.raises(NoTextLayerError, match="has no text: none of its 2 page.s. has a text layer") as info:
        read_pdf(_scanned(tmp_path), name="scan.pdf")
    assert "OCR is out of scope" in str(info.value)


def test_document_longer_than_the_context() -> None:
    doc = read_pdf(SAMPLE)
    doc.check_fits(900, max_context=1000)
    doc.check_fits(900, max_context=1000, reserve=100)
    with pytest.raises(ContextTooLongError) as info:
        doc.check_fits(120_000, max_context=32_768)
    assert info.value.n_tokens == 120_000 and info.value.max_context == 32_768
    assert str(info.value).startswith(
        "The PDF 'eddystone.pdf' (5 pages) is 120,000 tokens long, but the maximum context is 32,768 tokens."
    )
    message = "plus 200 tokens reserved for the question and answer is 1,100"
    with pytest.raises(ContextTooLongError, match=message):
        doc.check_fits(900, max_context=1000, reserve=200)


def test_not_a_pdf_source() -> None:
    with pytest.raises(TypeError, match="takes a path, bytes or a binary file object, not int"):
        read_pdf(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary mode"):
        read_pdf(io.StringIO("%PDF-1.4"))  # type: ignore[arg-type]


def test_every_pdf_error_is_a_longheads_error() -> None:
    for cls in (PDFNotFoundError, EmptyPDFError, CorruptPDFError, EncryptedPDFError, WrongPasswordError,
                NoTextLayerError):
        assert issubclass(cls, PDFError) and issubclass(cls, LongHeadsError)


# --- the long sample ---------------------------------------------------------------------------------------


def test_long_sample_is_the_novel_from_the_chapter_the_seed_picks(tmp_path: Path) -> None:
    from make_long_pdf import compose

    first = compose(3000, [], seed=0)
    assert first[0] == ("h", "Chapter 1")
    assert first[1][1].startswith("It is a truth universally acknowledged, that a single man in possession")
    other = compose(3000, [], seed=5)
    assert other[0][0] == "h" and other[0] != first[0]
    with pytest.raises(ValueError, match="source must be one of"):
        compose(3000, [], source="poetry")


def test_long_pdf_loads_in_seconds_and_facts_sit_on_their_pages(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    facts = make_long_pdf(path, tokens=100_000, n_facts=3)
    start = time.perf_counter()
    doc = read_pdf(path)
    seconds = time.perf_counter() - start
    print(f"\n~100k-token PDF: {doc.num_pages} pages, {len(doc.text):,} characters, read in {seconds:.2f} s")
    assert seconds < 10, f"reading a ~100k-token PDF took {seconds:.1f} s"
    assert len(doc.text) > 400_000
    meta = json.loads(path.with_suffix(".facts.json").read_text())
    assert [f["page"] for f in meta["facts"]] == [f.page for f in facts]
    for fact in facts:
        # The PDF's line breaks fall anywhere in the sentence: match words separated by any whitespace.
        found = re.search(r"\s+".join(map(re.escape, fact.sentence.split())), doc.text)
        assert found, fact.sentence
        assert doc.page_at(found.start()).number == fact.page
        assert doc.page_for_span(*found.span()).number == fact.page
    # Beginning, middle and end of the book.
    pages = [f.page for f in facts]
    assert pages[0] < doc.num_pages * 0.2 < doc.num_pages * 0.4 < pages[1] < doc.num_pages * 0.6 < pages[2]
