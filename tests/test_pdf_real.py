"""The text repairs and page furniture of `read_pdf` on real typeset manuals (benchmarks/real_pdfs/): texinfo
books with running heads, tables of contents, indexes, hyphenation and TeX quotes, as pypdf extracts them.

Pages are named by their 1-based number in the file (`PDFPage.number`) and, where it helps, by their label.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from longheads.pdf import PAGE_SEPARATOR, PDFDocument, read_pdf

REAL = Path(__file__).resolve().parents[1] / "benchmarks" / "real_pdfs"
FILES = ("R-data", "R-lang", "R-admin", "R-ints", "libtasn1")

# 1-based page numbers of the contents and index pages of each manual (read off the PDFs).
CONTENTS = {"R-data": [3, 4], "R-lang": [3, 4, 5], "R-admin": [3, 4, 5], "R-ints": [3, 4, 5], "libtasn1": [3]}
INDEX = {"R-data": [38, 39, 40, 41], "R-lang": [65, 66, 67, 68], "R-admin": [83, 84, 85],
         "R-ints": [78, 79, 80, 81], "libtasn1": [35, 36]}

# Texinfo's running head: "Chapter 1: Introduction 4", "Appendix A: Copying Information 25".
RUNNING_HEAD = re.compile(r"^(?:Chapter \d+|Appendix [A-Z]): .* \d+$", re.MULTILINE)

RAW = {"keep_furniture": True, "clean": False}  # the text as pypdf extracts it

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="benchmarks/real_pdfs/ is not in this checkout")


@functools.cache
def _read(name: str, **options) -> PDFDocument:
    return read_pdf(REAL / f"{name}.pdf", **options)


def _page_of(doc: PDFDocument, text: str) -> int:
    return doc.page_at(doc.text.index(text)).number


# --- the page map survives every repair ---------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"skip": ("contents", "index")}, RAW], ids=["default", "skip", "raw"])
@pytest.mark.parametrize("name", FILES)
def test_every_page_sits_at_its_offsets(name: str, options: dict) -> None:
    doc = _read(name, **options)
    assert doc.num_pages == len(_read(name).pages)
    assert doc.text == PAGE_SEPARATOR.join(p.text for p in doc.pages)
    for page in doc.pages:
        assert doc.text[page.start : page.end] == page.text
        if page.text:
            assert doc.page_at(page.start) is page and doc.page_at(page.end - 1) is page
    assert doc.empty_pages == []


def test_sentences_map_back_to_their_pages() -> None:
    doc = _read("R-data")
    sentence = "Reading data into a statistical system for analysis and exporting the results to some other"
    assert _page_of(doc, sentence) == 7 and doc.page_at(doc.text.index(sentence)).label == "3"
    # A word joined across a line break is on the page it was printed on.
    assert _page_of(doc, "rather inconvenient. In categorical data analysis") == 17
    skipped = _read("R-data", skip=("contents", "index"))
    assert _page_of(skipped, sentence) == 7
    assert _page_of(skipped, "Function cat underlies the functions for exporting data") == 9
    assert _page_of(_read("libtasn1"), "containing the DER encoding of PKIX1.Dss-Sig-Value") == 9
    assert _page_of(_read("R-ints"), "the reference hash tables in serializa-") == 9  # a page that ends mid-word


# --- text repairs -------------------------------------------------------------------------------------------


def test_words_hyphenated_at_line_ends_are_joined() -> None:
    data, raw = _read("R-data"), _read("R-data", **RAW)
    assert "rather incon-\nvenient." in raw.pages[16].text
    assert "rather inconvenient." in data.pages[16].text
    assert "the combina-\ntion of factor" in raw.pages[16].text
    assert "the combination of factor" in data.pages[16].text
    assert "(Structured Query Language, sometimes" in data.pages[21].text  # "Lan-\nguage"
    assert "Section 2.1.5 [Function objects], page 4" in _read("R-lang").pages[10].text  # "[Func-\ntion"
    assert "ASN1_ELEMENT_NOT_FOUND if ELEMENT is NULL" in _read("libtasn1").pages[22].text  # "ELE-\nMENT"


def test_hyphens_of_compounds_and_options_are_kept() -> None:
    data = _read("R-data")
    assert "is machine-\ndependent, and possibly also compiler-dependent" in data.pages[33].text
    assert "You can also cut-and-\npaste between" in data.pages[35].text
    assert "Springer-\nVerlag." in data.pages[36].text
    admin = _read("R-admin")
    assert "--with-\nblas with no value" in admin.pages[52].text  # a configure option, not a word
    assert "Unix-\nalikes" in admin.text  # "Unix-alikes" is spelled with its hyphen elsewhere


def test_tex_quotes_backticks_copyright_and_leaders_are_repaired() -> None:
    licence = _read("libtasn1").pages[33].text
    assert "entitled \u201cGNU\nFree Documentation License\u201d." in licence
    assert "\u2018\u2018" not in licence
    # Two closing quotes without opening ones are code (an empty string in the source): left as they are.
    assert "Use \u2019\u2019 to denote the root element itself." in _read("libtasn1").pages[7].text
    lang = _read("R-lang")
    assert 'x <- "[<-"(`*tmp*`, 3:5, value=13:15)\nrm(`*tmp*`)' in lang.pages[24].text
    assert "\u2018*tmp*\u2018" in _read("R-lang", **RAW).text and "\u2018*tmp*\u2018" not in lang.text
    assert "can equivalently be written `+`(x, y). Notice that since \u2018+\u2019 is" in lang.pages[16].text
    assert "Copyright \u00a9 2000\u20132022 R Core Team" in _read("R-data").pages[1].text
    assert "1.1 Imports ... 3\n1.1.1 Encodings ... 4" in _read("R-data").pages[2].text


@pytest.mark.parametrize("name", FILES)
def test_no_known_extraction_damage_is_left(name: str) -> None:
    # pypdf already maps these manuals' ligatures and accents through their fonts' ToUnicode tables; the
    # repairs for split accents and ligature code points are shown on generated PDFs in test_pdf.py.
    text = _read(name).text
    assert not re.search("[\ufb00-\ufb06\u00a0\u00ad\u200b]|\u2018\u2018|(?<![A-Za-z])c\u00a9| \\. \\. \\.", text)
    assert not re.search("[\u00a8\u00b4\u02c6\u02dc\u02c7\u02d8\u02d9\u02da\u02dd\u00af\u00b8\u02db][A-Za-z]", text)


# --- page furniture -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_contents_and_index_pages_are_classified(name: str) -> None:
    doc = _read(name)
    assert [p.number for p in doc.pages if p.kind == "contents"] == CONTENTS[name]
    assert [p.number for p in doc.pages if p.kind == "index"] == INDEX[name]
    assert all(p.kind == "body" for p in doc.pages if p.number not in CONTENTS[name] + INDEX[name])


def test_r_data_pages_by_kind() -> None:
    doc = _read("R-data")
    assert doc.pages[2].text.startswith("Table of Contents\nAcknowledgements ... 1")
    assert doc.pages[37].text.startswith("Function and variable index\n")  # an index page...
    assert doc.pages[38].kind == "index" and doc.pages[40].text == "Y\nyaml ... 7"  # ...down to its last entry
    assert doc.pages[36].kind == "body" and doc.pages[36].text.startswith("Appendix A References")


@pytest.mark.parametrize("name", FILES)
def test_running_heads_are_gone_from_the_text(name: str) -> None:
    doc, kept = _read(name), _read(name, **RAW)
    assert RUNNING_HEAD.search(doc.text) is None
    assert len(RUNNING_HEAD.findall(kept.text)) >= 20
    for page in doc.pages[2:]:  # the title and copyright pages have no running head
        # Each page lost exactly its head: the chapter title and page number, or the number alone.
        assert len(page.furniture) == 1 and page.furniture[0].split()[-1] == page.label
        assert kept.pages[page.index].text.split("\n", 1)[0] == page.furniture[0]


def test_r_data_running_heads_and_page_labels() -> None:
    doc, kept = _read("R-data"), _read("R-data", **RAW)
    page = doc.pages[7]
    assert (page.label, page.furniture) == ("4", ("Chapter 1: Introduction 4",))
    assert page.text.startswith("In a few cases, data have been stored in a binary form for compactness")
    assert kept.pages[7].text.startswith("Chapter 1: Introduction 4\nIn a few cases")
    assert doc.pages[6].furniture == ("3",) and doc.pages[6].text.startswith("1 Introduction\nReading data")
    assert [p.label for p in doc.pages] == [p.label for p in kept.pages]
    assert doc.pages[0].furniture == () and doc.pages[0].text.startswith("R Data Import/Export")


def test_skip_leaves_contents_and_index_out() -> None:
    full, doc = _read("R-data"), _read("R-data", skip=("contents", "index"))
    skipped = [p.number for p in doc.pages if p.skipped]
    assert skipped == CONTENTS["R-data"] + INDEX["R-data"]
    assert all(doc.pages[n - 1].text == "" and doc.pages[n - 1].kind != "body" for n in skipped)
    assert "Table of Contents" not in doc.text and "Table of Contents" in full.text
    assert "showConnections ... 29" not in doc.text and "showConnections ... 29" in full.text
    assert len(doc.text) < len(full.text) - 4000
    # The body pages' text is the same with or without the skip.
    assert [p.text for p in doc.pages if not p.skipped] == [p.text for p in full.pages if p.kind == "body"]
