"""Repairs the text pypdf extracts from typeset PDFs and finds the page furniture that answers no question.

Everything here works page by page: a page's text only ever loses or changes characters of its own, so the
page map that `longheads.pdf` builds from the result stays exact. Some rules look at the whole document (which
lines repeat at the top of pages, which words the document spells elsewhere), but they still edit each page
on its own.

Text repairs (`fix_glyphs`, `join_hyphens`):
- ligature code points (U+FB00-FB06: ff fi fl ffi ffl long-st st) become plain letters;
- accents that TeX fonts draw as a separate glyph ("Wirtschaftsuniversit¨at", "´ecole", "c¸a") are composed
  with their letter (NFC);
- TeX quotes typed as two single quotes (‘‘like this’’) become “ and ”; typewriter backticks that pypdf reads
  as opening quotes at both ends (‘*tmp*‘) become backticks again;
- the copyright sign TeX builds from a "c" in a circle ("c©") becomes "©";
- odd spaces (no-break, thin, ideographic) become plain spaces; soft hyphens and zero-width spaces go;
- rows of leader dots between an entry and its page number (". . . . . 37") shrink to "... 37";
- words hyphenated at a line end are joined again (`join_hyphens` says when).

Furniture (`find_furniture`, `classify_pages`): running header and footer lines, and the kind of each page
("body", "contents", "index").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PAGE_KINDS", "PageText", "prepare_pages", "fix_glyphs", "join_hyphens", "find_furniture",
           "classify_pages"]

PAGE_KINDS = ("body", "contents", "index")


@dataclass(frozen=True)
class PageText:
    """One page's text as it goes into the prompt, what kind of page it is, and the furniture lines it lost."""

    text: str
    kind: str
    furniture: tuple[str, ...]


def prepare_pages(
    texts: Sequence[str], labels: Sequence[str], *, clean: bool = True, keep_furniture: bool = False
) -> list[PageText]:
    """Repair (`clean`) and de-furnish (unless `keep_furniture`) the extracted text of every page."""
    if clean:
        texts = [fix_glyphs(t) for t in texts]
    lines = [t.split("\n") for t in texts]
    furniture = find_furniture(lines, labels)
    bodies = ["\n".join(line for i, line in enumerate(page) if i not in drop).strip()
              for page, drop in zip(lines, furniture, strict=True)]
    # Kinds are judged on the text without its running heads, whether or not those are kept.
    kinds = classify_pages(bodies)
    if keep_furniture:
        bodies = [t.strip() for t in texts]
    if clean:
        bodies = join_hyphens(bodies)
    return [PageText(text, kind, tuple(page[i] for i in sorted(drop)) if not keep_furniture else ())
            for text, kind, page, drop in zip(bodies, kinds, lines, furniture, strict=True)]


# --- glyph repairs -------------------------------------------------------------------------------------------

_LIGATURES = re.compile("[\ufb00-\ufb06]")
_ODD_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
# Zero-width joiners (U+200C, U+200D) are left alone: Indic and Persian scripts and emoji need them.
_INVISIBLE = re.compile("\u00ad\n?|[\u200b\u2060\ufeff]")

# Spacing accents as pypdf names TeX's accent glyphs, and the combining mark each stands for. TeX draws an
# accent above a letter before the letter, so the accent comes first in the extracted text.
_ABOVE = {
    "\u00a8": "\u0308",  # ¨ diaeresis
    "\u00b4": "\u0301",  # ´ acute
    "`": "\u0300",  # grave
    "\u02c6": "\u0302",  # ˆ circumflex
    "\u02dc": "\u0303",  # ˜ tilde
    "\u02c7": "\u030c",  # ˇ caron
    "\u02d8": "\u0306",  # ˘ breve
    "\u02d9": "\u0307",  # ˙ dot above
    "\u02da": "\u030a",  # ˚ ring
    "\u02dd": "\u030b",  # ˝ double acute
    "\u00af": "\u0304",  # ¯ macron
}
# Cedilla and ogonek hang below the letter; TeX draws them before a small letter (\accent) and after a tall
# one, so they take the letter after them, or else the one before.
_BELOW = {"\u00b8": "\u0327", "\u02db": "\u0328"}
# Some accents double as something else, so they only take the letters that carry them in European
# languages: acute as an apostrophe ("it´s"), tilde as a home directory ("/˜user"), grave as the backtick of
# code (`x`, and only inside a word); cedilla and ogonek, which may stand on either side of their letter.
# The others take any letter.
_TAKES = {
    "\u00b4": set("aeiouyAEIOUY"),
    "`": set("aeiouAEIOU"),
    "\u02dc": set("anoANO"),
    "\u00b8": set("cCsStT"),
    "\u02db": set("aAeEiIoOuU"),
}
_LETTER = "[^\\W\\d_]"
_ACCENT_BEFORE = re.compile(f"([{''.join(set(_ABOVE) - {'`'})}{''.join(_BELOW)}])({_LETTER})")
_GRAVE_BEFORE = re.compile(f"(?<={_LETTER})(`)({_LETTER})")
_ACCENT_AFTER = re.compile(f"({_LETTER})([{''.join(_BELOW)}])")

_TEX_DOUBLE_QUOTES = re.compile("\u2018\u2018([^\u2018\u2019]{1,400}?)\u2019\u2019")
# Typewriter fonts draw ` with the glyph named quoteleft: a quoted span closed by an opening quote is code.
_BACKTICKS = re.compile("\u2018([^\\s\u2018\u2019](?:[^\u2018\u2019\n]*[^\\s\u2018\u2019])?)\u2018")
_TEX_COPYRIGHT = re.compile(f"(?<!{_LETTER})c\u00a9")
# Spaced like TeX sets them (". . . ."), or a run of 8 dots; R's "..." and "..1" are neither.
_DOT_LEADER = re.compile(r"\.?(?: \.){3,}|\.{8,}")


def fix_glyphs(text: str) -> str:
    """Undo the character-level damage of extraction (see the module's docstring). One page at a time."""
    text = _LIGATURES.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _ODD_SPACES.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _ACCENT_BEFORE.sub(lambda m: _accented(m.group(2), m.group(1)) or m.group(), text)
    text = _GRAVE_BEFORE.sub(lambda m: _accented(m.group(2), m.group(1)) or m.group(), text)
    text = _ACCENT_AFTER.sub(lambda m: _accented(m.group(1), m.group(2)) or m.group(), text)
    text = _TEX_DOUBLE_QUOTES.sub("\u201c\\1\u201d", text)
    text = _BACKTICKS.sub("`\\1`", text)
    text = _TEX_COPYRIGHT.sub("\u00a9", text)
    return _DOT_LEADER.sub(" ...", text)


def _accented(letter: str, accent: str) -> str | None:
    """The letter with the accent on it, or None where that is no letter of a European alphabet."""
    if letter == "\u0131":
        letter = "i"  # TeX puts accents on a dotless i (\\"\\i): the accented letter is the dotted one's (ï)
    if letter not in _TAKES.get(accent, letter):
        return None
    composed = unicodedata.normalize("NFC", letter + (_ABOVE.get(accent) or _BELOW[accent]))
    return composed if len(composed) == 1 else None  # no precomposed letter: keep the text as it was


# --- hyphenation ---------------------------------------------------------------------------------------------

_LETTERS = f"{_LETTER}+"
# A letter run, a hyphen, the line break, a letter run. `_rejoin` looks back for the rest of the token.
_LINE_END_HYPHEN = re.compile(f"({_LETTERS})-\n({_LETTERS})")
_OPENERS = "([{\u201c\u2018\"'"


@dataclass(frozen=True)
class _Vocabulary:
    words: Counter[str]  # lower-cased words of the document, line-end fragments left out
    compounds: Counter[str]  # lower-cased "word-word" spelled with a hyphen inside a line


def _vocabulary(texts: Sequence[str]) -> _Vocabulary:
    text = "\n".join(_LINE_END_HYPHEN.sub(" ", t) for t in texts).lower()
    return _Vocabulary(Counter(re.findall(_LETTERS, text)),
                       Counter(re.findall(f"(?<![-\\w]){_LETTERS}-{_LETTERS}(?![-\\w])", text)))


def join_hyphens(texts: Sequence[str]) -> list[str]:
    """Join the words TeX hyphenated at a line end ("informa-\\ntion" -> "information"), on every page.

    Only a letter, hyphen, line break, letter is ever joined, and the document itself decides when it can:
    kept as "left-\\nright" when the line before holds more of the token than letters ("--with-\\nblas",
    "cut-and-\\npaste", "x86_64-\\nopenbsd"), or the document spells "left-right" with a hyphen elsewhere and
    never "leftright"; joined when it spells "leftright" elsewhere. Without such evidence: kept when the right
    part starts with a capital, when a part is shorter than TeX ever splits (2 letters left, 3 right), when
    the left part is an acronym ("DBMS-\\nspecific"), or when both parts are words of the document
    ("machine-\\ndependent"); joined otherwise ("consider-\\nation"). A hyphen at the very end of a page is
    left alone: joining it would move text across the page break.
    """
    vocabulary = _vocabulary(texts)
    return [_LINE_END_HYPHEN.sub(lambda m: _rejoin(m, vocabulary), t) for t in texts]


def _rejoin(m: re.Match[str], vocabulary: _Vocabulary) -> str:
    left, right = m.groups()
    line = m.string.rfind("\n", 0, m.start()) + 1
    prefix = re.split(r"\s", m.string[line : m.start()])[-1]  # "--" of "--with-", "cut-" of "cut-and-"
    return left + right if _is_split_word(prefix, left, right, vocabulary) else m.group()


def _is_split_word(prefix: str, left: str, right: str, vocabulary: _Vocabulary) -> bool:
    if prefix.strip(_OPENERS):
        return False
    joined, compound = (left + right).lower(), f"{left}-{right}".lower()
    if vocabulary.compounds[compound] and not vocabulary.words[joined]:
        return False
    if vocabulary.words[joined]:
        return True
    if right[0].isupper() or len(left) < 2 or len(right) < 3 or left.isupper():
        return False
    return not (len(left) >= 3 and vocabulary.words[left.lower()] and vocabulary.words[right.lower()])


# --- running heads and feet ----------------------------------------------------------------------------------

# The lines of a page that can be a running head or foot: first two, last two. The outer ones come first: a
# second line is only furniture below (or above) furniture, never below a page's first line of prose.
_EDGES = (0, -1, 1, -2)
_OUTER = {1: 0, -2: -1}
_MAX_FURNITURE_CHARS = 120


def find_furniture(pages: Sequence[Sequence[str]], labels: Sequence[str]) -> list[set[int]]:
    """The running header and footer lines of every page, as sets of line indices.

    Two rules, both about the first and last line of a page, and the second and second-to-last line where
    the first or last is furniture:
    - page-number lines: a line that starts or ends with the page's own number (its label, "37" or "iv", or
      for PDFs without labels the number that runs in step with the page) is furniture when at least half the
      pages have such a line at the same place; one page whose first line happens to start with its number
      proves nothing, a scheme does ("Chapter 2: Objects 3", "3", "Concept index 37");
    - repeated lines: a line that, digits aside, sits at the same place on at least a quarter of the pages
      (and 3 or more), such as "Company confidential" or "Page 3 of 40".
    """
    n = len(pages)
    offset = _printed_offset(pages)
    numbered = [_page_numbers(i, labels[i], offset) for i in range(n)]
    drop: list[set[int]] = [set() for _ in range(n)]
    with_text = sum(1 for p in pages if any(line.strip() for line in p)) or 1
    min_repeats = max(3, math.ceil(with_text / 4))
    for edge in _EDGES:
        lines = [_edge_line(pages[i], edge, drop[i]) for i in range(n)]
        folios = {i for i, line in enumerate(lines) if _folio(line, numbered[i])}
        hits = folios if len(folios) >= max(2, with_text / 2) else set()
        shapes = [_shape(line) for line in lines]
        counts = Counter(shape for shape in shapes if shape)
        hits |= {i for i, shape in enumerate(shapes) if shape and counts[shape] >= min_repeats}
        for i in hits:
            drop[i].add(edge % len(pages[i]))
    return drop


def _edge_line(page: Sequence[str], edge: int, dropped: set[int]) -> str:
    if edge in _OUTER and _OUTER[edge] % max(len(page), 1) not in dropped:
        return ""
    return _line(page, edge)


def _line(page: Sequence[str], edge: int) -> str:
    # A short page's edges overlap: line 1 of a 2-line page is also its last line, which is fine.
    return page[edge] if -len(page) <= edge < len(page) else ""


def _shape(line: str) -> str:
    line = " ".join(line.split())
    if len(line) > _MAX_FURNITURE_CHARS or not any(ch.isalnum() for ch in line):
        return ""
    return re.sub(r"\d+", "#", line).casefold()


def _folio(line: str, numbers: set[str]) -> bool:
    words = line.split()
    return bool(words) and len(line) <= _MAX_FURNITURE_CHARS and (words[0] in numbers or words[-1] in numbers)


def _page_numbers(index: int, label: str, offset: int) -> set[str]:
    numbers = {label, label.lower()}
    if label == str(index + 1):
        # No page labels (or labels that only count sheets): the printed numbers may still start after the
        # front matter, page 1 on the 5th sheet.
        numbers.add(str(index + 1 + offset))
    return numbers


def _printed_offset(pages: Sequence[Sequence[str]]) -> int:
    """How far printed page numbers run from sheet numbers: the most common difference between a number that
    starts or ends an edge line and the 1-based sheet number."""
    votes: Counter[int] = Counter()
    for i, page in enumerate(pages):
        for edge in _EDGES:
            words = _line(page, edge).split()
            for word in {words[0], words[-1]} if words else ():
                if word.isdigit() and len(word) <= 5:
                    votes[int(word) - (i + 1)] += 1
    return votes.most_common(1)[0][0] if votes else 0


# --- contents and index pages --------------------------------------------------------------------------------

_REF = r"(?:\d+|[ivxlcdm]+|[A-Z]-\d+)"  # a page reference: 37, iv, A-2
_REFS = rf"{_REF}(?:\s*[,–-]\s*{_REF})*"
_LEADER_REF = re.compile(rf"(?:[.…·]\s?){{3,}}\s*(?:{_REFS})?\s*$")  # "Imports . . . 3", "sink ... 6, 27"
_COMMA_REF = re.compile(rf"{_LETTER}[^\d,]*,\s*{_REFS}\s*$")  # "term, 12, 34", not a row of numbers "1, 2, 3"


def classify_pages(texts: Sequence[str]) -> list[str]:
    """"contents", "index" or "body" for every page.

    A page is a list of references when at least half its lines end in page numbers after a dot leader or a
    comma ("Imports . . . 3", "sink, 6, 27") and it has 3 such lines, or 1 when the page before was such a
    list (the last page of an index holds a few entries). Lists in the first half of the document are its
    contents, lists in the second half its index: the words on the page would mislead ("Concept index . . . 36"
    is a line of a contents page).
    """
    kinds: list[str] = []
    listed = False
    for i, text in enumerate(texts):
        refs, lines = _count_refs(text)
        listed = refs >= (1 if listed else 3) and refs >= lines / 2
        kinds.append(("contents" if i < len(texts) / 2 else "index") if listed else "body")
    return kinds


def _count_refs(text: str) -> tuple[int, int]:
    # An index's letter headings ("A", "S") are neither entries nor prose: they count for nothing.
    lines = [line for line in text.split("\n") if len(line.strip()) > 2]
    refs = sum(1 for line in lines if len(line) <= 200 and (_LEADER_REF.search(line) or _COMMA_REF.search(line)))
    return refs, len(lines)
