"""PDF ingestion: the page map, every bad input's message, a ~100k-token PDF, and the text repairs and page
furniture rules on PDFs made here (tests/test_pdf_real.py shows them on real typeset manuals)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from pypdf import PdfWriter

from longheads.errors import ContextTooLongError, LongHeadsError
from longheads.pdf import (
    PAGE_KINDS,
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
from longheads.pdftext import fix_glyphs, join_hyphens
from longheads.sample_pdf import make_long_pdf

SAMPLE = Path(__file__).resolve().parents[1] / "apps" / "longheads_app" / "samples" / "eddystone.pdf"


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
    from longheads.sample_pdf import compose

    first = compose(3000, [], seed=0)
    assert first[0] == ("h", "Chapter 1")
    assert first[1][1].startswith("It is a truth universally acknowledged, that a single man in possession")
    other = compose(3000, [], seed=5)
    assert other[0][0] == "h" and other[0] != first[0]
    with pytest.raises(ValueError, match="source must be one of"):
        compose(3000, [], source="poetry")


def test_long_pdf_reads_each_page_once_and_facts_sit_on_their_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How fast a long PDF loads is a benchmark's business; what keeps it fast is tested here: every page's
    # text layer is extracted exactly once, in pypdf's plain mode (layout mode is many times slower).
    from pypdf import PageObject

    path = tmp_path / "long.pdf"
    facts = make_long_pdf(path, tokens=100_000, n_facts=3)
    calls: list[tuple[tuple, dict]] = []
    extract = PageObject.extract_text

    def counted(page: PageObject, *args, **kwargs) -> str:
        calls.append((args, kwargs))
        return extract(page, *args, **kwargs)

    monkeypatch.setattr(PageObject, "extract_text", counted)
    doc = read_pdf(path)
    assert len(calls) == doc.num_pages
    assert all(not args and kwargs.get("extraction_mode", "plain") == "plain" for args, kwargs in calls)
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


# --- text repairs -------------------------------------------------------------------------------------------


def _typeset(pages: list[str], head: str | None = None, foot: str | None = None, numbered_from: int = 0) -> bytes:
    """A PDF with one page per text (lines as given), a running head "`head` <page>" and a foot `foot` on
    every page, and, from sheet `numbered_from` (1-based) on, the printed page number alone at the bottom,
    counting from 1. Core fonts: the texts must be Latin-1."""
    from fpdf import FPDF

    class Book(FPDF):
        def header(self) -> None:
            if head:
                self.set_font("Helvetica", "I", 9)
                self.cell(0, 8, head, align="L")
                self.cell(0, 8, str(self.page_no()), align="R", new_x="LMARGIN", new_y="NEXT")

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("Helvetica", "", 8)
            if foot:
                self.cell(0, 5, foot, align="C", new_x="LMARGIN", new_y="NEXT")
            if numbered_from and self.page_no() >= numbered_from:
                self.cell(0, 5, str(self.page_no() - numbered_from + 1), align="C")

    pdf = Book()
    for text in pages:
        pdf.add_page()
        pdf.set_font("Times", "", 11)
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def test_split_accents_ligatures_quotes_and_spaces_are_repaired() -> None:
    # TeX draws an accent as a glyph of its own, before the letter (cedilla and ogonek: either side).
    assert fix_glyphs("Wirtschaftsuniversit\u00a8at Wien, \u00b4ecole, na\u00a8\u0131ve, Espa\u02dcna") == (
        "Wirtschaftsuniversität Wien, école, naïve, España"
    )
    assert fix_glyphs("Fran\u00b8cais, gar\u00e7on, c\u00b8a, \u02c7Cesk\u00b4y, r`ole") == (
        "Français, garçon, ça, Český, ròle"
    )
    # Where an accent doubles as something else it stays: an apostrophe, a home directory, a backtick.
    for text in ("it\u00b4s", "/\u02dcuser", "`x` and `y`", "a^b ~c"):
        assert fix_glyphs(text) == text
    assert fix_glyphs("e\ufb03cient \ufb01le \ufb02ow o\ufb00 \ufb00i \ufb04 \ufb06") == (
        "efficient file flow off ffi ffl st"
    )
    assert fix_glyphs("100\u00a0km, infor\u00ad\nmation, soft\u00adhyphen, zero\u200bwidth") == (
        "100 km, information, softhyphen, zerowidth"
    )
    assert fix_glyphs("Copyright c\u00a9 2000, abc\u00a9") == "Copyright \u00a9 2000, abc\u00a9"
    # TeX's ``double quotes'' come out as two single ones; only a pair on both sides is a double quote.
    assert fix_glyphs("entitled \u2018\u2018GNU\nFree License\u2019\u2019.") == (
        "entitled \u201cGNU\nFree License\u201d."
    )
    assert fix_glyphs("Use \u2019\u2019 to denote the root") == "Use \u2019\u2019 to denote the root"
    # A typewriter backtick reads as an opening quote: a span opened and closed by one is code.
    assert fix_glyphs("rm(\u2018*tmp*\u2018) and \u2018+\u2018(x, y) but \u2018a\u2019 and \u2018\u2019\u2019") == (
        "rm(`*tmp*`) and `+`(x, y) but \u2018a\u2019 and \u2018\u2019\u2019"
    )
    assert fix_glyphs("Imports . . . . . . . . 3\nstderr. . . . . 26\nf(x, ...) ..1 ..2") == (
        "Imports ... 3\nstderr ... 26\nf(x, ...) ..1 ..2"
    )


def test_words_hyphenated_at_line_ends_are_joined_when_the_document_says_so() -> None:
    pages = [
        "The informa-\ntion is kept. More information here.",
        "A consider-\nation, a machine-\ndependent path, machine and dependent words.",
        "Options --with-\nblas and cut-and-\npaste stay; a non-\nempty list, non-empty again.",
        "DBMS-\nspecific, Addison-\nWesley, pre-\nor post-, ELE-\nMENT of ELEMENT, x86_64-\nlinux.",
        "A line that ends the page with a hyphen-",
    ]
    assert join_hyphens(pages) == [
        "The information is kept. More information here.",
        "A consideration, a machine-\ndependent path, machine and dependent words.",
        "Options --with-\nblas and cut-and-\npaste stay; a non-\nempty list, non-empty again.",
        "DBMS-\nspecific, Addison-\nWesley, pre-\nor post-, ELEMENT of ELEMENT, x86_64-\nlinux.",
        "A line that ends the page with a hyphen-",
    ]


def test_read_pdf_repairs_the_text_unless_told_not_to() -> None:
    data = _typeset(["Wirtschaftsuniversit\u00a8at Wien and \u00b4ecole.\nThe keeper wrote the infor-\nmation down."])
    assert read_pdf(data).text == "Wirtschaftsuniversität Wien and école.\nThe keeper wrote the information down."
    assert read_pdf(data, clean=False).text == (
        "Wirtschaftsuniversit\u00a8at Wien and \u00b4ecole.\nThe keeper wrote the infor-\nmation down."
    )


# --- page furniture -----------------------------------------------------------------------------------------


def _keepers_log() -> tuple[bytes, list[str]]:
    """Ten pages with a running head and foot: contents, eight body pages, an index."""
    days = [
        "The relief boat came on Monday.\nIt brought oil, flour and a letter from the Board.",
        "Fog all Tuesday; the horn was sounded\nevery thirty seconds from dawn until the evening.",
        "A gale from the south-west on Wednesday\nbroke two panes of the lantern.",
        "Thursday was spent mending the panes\nand cleaning the lenses of salt.",
        "On Friday a fishing smack passed close\nto the reef and her skipper waved his cap.",
        "Saturday: the keeper trimmed the wicks\nand wrote up the log for the week.",
        "Sunday was calm. Prayers were read\nin the kitchen at eleven.",
        "Monday again, and no boat: the sea was\ntoo rough for a landing on the rock.",
    ]
    contents = "Contents\n" + "\n".join(f"{d} Day {d} . . . . . . . . . . . . . . {d + 1}" for d in range(1, 9))
    index = "Index\nB\nbells, 2, 3, 9\nK\nkeeper, 2, 4\nW\nwatch, 5\nwicks, 2, 6, 7"
    return _typeset([contents, *days, index], head="The Keeper's Log", foot="Printed for the Lighthouse Board"), days


def test_running_heads_and_feet_are_dropped_and_pages_classified() -> None:
    data, days = _keepers_log()
    doc = read_pdf(data)
    assert [p.kind for p in doc.pages] == ["contents"] + ["body"] * 8 + ["index"]
    assert "Keeper's Log" not in doc.text and "Lighthouse Board" not in doc.text
    for page in doc.pages:
        assert page.furniture == (f"The Keeper's Log {page.number}", "Printed for the Lighthouse Board")
    for number, day in enumerate(days, start=2):
        assert doc.pages[number - 1].text == day
        assert doc.page_at(doc.text.index(day.split("\n")[1])).number == number
    kept = read_pdf(data, keep_furniture=True)
    assert kept.pages[3].text == f"The Keeper's Log 4\n{days[2]}\nPrinted for the Lighthouse Board"
    assert all(p.furniture == () for p in kept.pages)
    assert [p.kind for p in kept.pages] == [p.kind for p in doc.pages]


def test_page_numbers_that_start_after_the_front_matter_are_found() -> None:
    # No page labels: the printed "1" sits on the 3rd sheet, alone at the bottom.
    texts = ["A Short Book\nby Nobody", "Preface\nThis preface has no page number.",
             "The first chapter starts here.\nIt is short.", "A second chapter follows\nwith two lines.",
             "Then a third,\nwhich says little.", "The fourth is about boats\nand the sea.",
             "The fifth is about lamps\nand oil.", "The last one ends the book\nquietly."]
    doc = read_pdf(_typeset(texts, numbered_from=3))
    assert [p.label for p in doc.pages] == [str(n) for n in range(1, 9)]
    assert [p.furniture for p in doc.pages] == [(), ()] + [(str(n),) for n in range(1, 7)]
    assert [p.text for p in doc.pages] == texts


def test_a_page_number_without_a_scheme_is_text() -> None:
    # Only a number on the edge of most pages is furniture; one section that starts with its page's number is not.
    texts = ["1 Introduction\nWhat this is about.", "2 Methods\nHow it was done.", "Results\n3 tables.",
             "Discussion\nWhat it means.", "References\nNone."]
    doc = read_pdf(_typeset(texts))
    assert [p.text for p in doc.pages] == texts
    assert all(p.kind == "body" for p in doc.pages)


def test_skip_leaves_contents_and_index_out_of_the_text_but_keeps_their_pages() -> None:
    data, days = _keepers_log()
    doc = read_pdf(data, skip=("contents", "index"))
    assert doc.num_pages == 10 and [p.number for p in doc.pages] == list(range(1, 11))
    skipped = [p for p in doc.pages if p.skipped]
    assert [(p.number, p.kind) for p in skipped] == [(1, "contents"), (10, "index")]
    assert all(p.text == "" and p.start == p.end for p in skipped)
    assert doc.empty_pages == []
    assert "Contents" not in doc.text and "wicks, 2, 6, 7" not in doc.text
    assert doc.text == PAGE_SEPARATOR.join(p.text for p in doc.pages)
    for page in doc.pages:
        assert doc.text[page.start : page.end] == page.text
    for number, day in enumerate(days, start=2):
        assert doc.page_at(doc.text.index(day)).number == number
    assert doc.text.strip() == PAGE_SEPARATOR.join(days)
    only_index = read_pdf(data, skip="index")
    assert [p.number for p in only_index.pages if p.skipped] == [10]
    assert only_index.pages[0].text.startswith("Contents\n1 Day 1 ... 2")


def test_a_chunk_across_a_skipped_page_is_credited_to_the_pages_it_read() -> None:
    data = _typeset(["Contents\n" + "\n".join(f"Part {n} . . . . . . . {n + 1}" for n in range(1, 6)),
                     "The first page of the story.", "The second page of the story."],
                    head="A Story")
    doc = read_pdf(data, skip=("contents",))
    assert doc.pages[0].skipped
    # Page 1 (skipped) has no text: the span from the start of the text down into page 3 touches pages 2 and 3.
    assert [p.number for p in doc.pages_in_span(0, doc.pages[2].start + 5)] == [2, 3]
    assert doc.page_at(0).number == 1 and doc.page_for_span(0, 10).number == 2


def test_skip_takes_only_contents_and_index() -> None:
    assert PAGE_KINDS == ("body", "contents", "index")
    with pytest.raises(ValueError, match=r"skip takes page kinds \('contents', 'index'\), not \['toc'\]"):
        read_pdf(SAMPLE, skip=("toc",))
    with pytest.raises(ValueError, match="would leave nothing of the document to read"):
        read_pdf(SAMPLE, skip=("body",))
