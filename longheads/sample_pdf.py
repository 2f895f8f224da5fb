"""Writes a long PDF of prose with a few known facts on known pages, and a JSON of fact -> page.

    python -m longheads.sample_pdf out/long.pdf                 # about 100k tokens
    python -m longheads.sample_pdf out/short.pdf --tokens 16000 --facts 3

The prose (`--source`) is either a real novel, Jane Austen's *Pride and Prejudice* (public domain,
`longheads/data/`), read from a chapter that the seed picks and wrapping around to chapter 1 when needed, or
a *chronicle* of an invented harbour town built from sentence patterns with a fixed seed. The chronicle never
repeats a paragraph but is made of twenty sentence patterns over the same people and places, so every page
resembles every other: a harder haystack than a book, kept because the early measurements in docs/design.md used
it. The facts are single sentences about things neither text mentions (soup, a parrot,
a key...), so a correct answer can only come from the fact's own page. Each fact's page is taken from reading
the written PDF back, not from where the writer thought it put it.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# SmolLM2's tokenizer (a GPT-2 style BPE) gives about 4.1 characters per token on the novel, 4.3 on the chronicle.
CHARS_PER_TOKEN = 4.3


@dataclass
class Fact:
    sentence: str
    question: str
    answer: str  # a word the correct answer must contain (case-insensitive)
    page: int = 0  # 1-based, filled in from the written PDF
    position: float = 0.0  # where in the document it was placed, as a fraction of the text


# Each fact is one sentence whose wording the question mirrors, about something the filler never mentions.
# All were checked with the embedded 135M model on short books that fit its window (docs/design.md):
# facts it could not answer even when it read every token (a rare word to copy, a name to pick out of a
# clause) were reworded or replaced, because they test the model, not the reach of LongHeads.
FACTS = [
    Fact(
        "The secret ingredient of the lighthouse keeper's soup is fennel.",
        "What is the secret ingredient of the lighthouse keeper's soup?",
        "fennel",
    ),
    Fact(
        "The harbour master's parrot is named Bartholomew.",
        "What is the name of the harbour master's parrot?",
        "Bartholomew",
    ),
    Fact(
        "The ferry to the island of Kest leaves on Thursdays.",
        "On which day does the ferry to the island of Kest leave?",
        "Thursday",
    ),
    Fact(
        "The key to the old observatory is hidden under the blue stone by the well.",
        "Where is the key to the old observatory hidden?",
        "blue stone",
    ),
    Fact(
        "The baker's prize-winning cake was flavoured with saffron.",
        "What was the baker's prize-winning cake flavoured with?",
        "saffron",
    ),
    Fact(
        "The schoolmaster's tortoise is named Hannibal.",
        "What is the name of the schoolmaster's tortoise?",
        "Hannibal",
    ),
    Fact(
        "The miller's grey horse is named Chestnut.",
        "What is the name of the miller's grey horse?",
        "Chestnut",
    ),
    Fact(
        "The lighthouse keeper's dog is named Biscuit.",
        "What is the name of the lighthouse keeper's dog?",
        "Biscuit",
    ),
]

# The facts a book gets first, by answer: the three the model answered in every book that held them (8 of 8
# each) when it read every token (`benchmarks/prose_grid.py`, 16 books at 2.5k tokens, docs/design.md).
# The soup and the parrot, once first, scored 4 of 5 and 1 of 3 there: an end-to-end test of LongHeads
# should not hang on what the 135M model fails at without it. The others follow in list order.
PLACED_FIRST = ("blue stone", "saffron", "Thursday")


def placement_order() -> list[Fact]:
    first = [f for answer in PLACED_FIRST for f in FACTS if f.answer == answer]
    return first + [f for f in FACTS if f not in first]


# Where tests/test_end_to_end.py places its three facts: the beginning, middle and end of the book
# (benchmarks/prose_grid.py --facts e2e repeats that design over many books).
END_TO_END_POSITIONS = (0.1, 0.5, 0.9)


def placed_facts(positions: Sequence[float]) -> list[Fact]:
    """The first len(positions) facts of `placement_order`, at those depths."""
    return [replace(f, position=p) for f, p in zip(placement_order(), positions, strict=False)]


# --- the filler: an invented town, in sentence patterns ------------------------------------------------

PEOPLE = [
    "old Maren Holt",
    "the cooper Ansel Fenwick",
    "Widow Pellow",
    "the ropemaker Idris Kane",
    "young Tobias Wren",
    "the net-mender Agatha Sloan",
    "Captain Elias Marr",
    "the carter Joss Penhallow",
    "Sister Honora",
    "the miller Conrad Bellweather",
    "the tailor Perrin Ashby",
    "Ruth Calloway",
    "the glazier Simeon Drake",
    "the ferryman's daughter Lise",
    "the surveyor Adrian Quill",
    "the fishwife Nance Trelawny",
]
PLACES = [
    "the north quay",
    "the salt flats",
    "Gull Lane",
    "the market square",
    "the chandlery",
    "the lower harbour",
    "the old customs house",
    "the dunes beyond the breakwater",
    "the ropewalk",
    "the tithe barn",
    "the bridge over the Fenn",
    "the cliff path",
    "the boatyard",
    "the fish market",
    "the almshouses",
    "the common behind the church",
]
SEASONS = [
    "that spring",
    "in the autumn of that year",
    "the following winter",
    "during the long summer",
    "in the weeks after the equinox",
    "before the herring came",
    "when the first frost settled",
    "in the wet months",
    "after the harvest fair",
    "in the dry spell that followed",
]
THINGS = [
    "a cart of slate",
    "three barrels of tar",
    "the parish ledger",
    "a bolt of grey wool",
    "a crate of lamp oil",
    "the new mooring chains",
    "a letter from the county",
    "twelve sacks of barley",
    "a broken capstan",
    "a chest of old charts",
    "the assize papers",
    "a load of seasoned oak",
]
FEELINGS = [
    "with some reluctance",
    "to general approval",
    "against the advice of the council",
    "without much fuss",
    "after a long argument",
    "to the surprise of nobody",
    "with the help of two neighbours",
    "in good humour",
]
TOPICS = [
    "the price of salt",
    "the state of the sea wall",
    "the rights to the foreshore",
    "the new tide tables",
    "the lease on the ropewalk",
    "the repair of the chapel roof",
    "the herring quota",
    "the toll on the bridge",
    "the dredging of the channel",
    "the school's new roof",
    "the drainage of the marsh",
    "the market charter",
]
WEATHER = [
    "A westerly wind kept the boats in harbour for most of a week.",
    "Fog lay over the estuary each morning and lifted only towards noon.",
    "The tides ran higher than anyone could remember, and the lower street flooded twice.",
    "It was a mild season, and the gorse flowered early on the headland.",
    "Rain fell steadily, and the roads to the inland villages turned to mud.",
    "A hard frost cracked the pump in the square, and water was carried from the spring for a month.",
    "The sea stayed calm for days on end, which the older fishermen distrusted.",
    "Storms came in from the south-west, one after another, and the breakwater lost several stones.",
]

PATTERNS = [
    "{season_c}, {person} brought {thing} down to {place} {feeling}.",
    "{person_c} spoke at length in the meeting hall about {topic}, and "
    "the matter was put off until the next quarter.",
    "Few people now remember that {place} was once the busiest corner of the town.",
    "{person_c} kept careful accounts, and from them we know that "
    "{thing} cost more {season} than in any year before.",
    "The council met at {place} to settle {topic}, and {person} took the minutes.",
    "{weather}",
    "{season_c}, a dispute over {topic} divided the town, and it was "
    "{person} who finally brought both sides together.",
    "Children from the almshouses were often seen at {place}, where "
    "{person} paid them a penny to carry messages.",
    "It is recorded that {person} walked from {place} to {place2} every morning, whatever the weather.",
    "{person_c} and {person2} quarrelled {season} over {thing}, "
    "though they were friends again within the month.",
    "The road between {place} and {place2} was widened {season}, {feeling}.",
    "Visitors from the county town found {place} smaller than they "
    "had been told, and {person} agreed that it was a quiet corner.",
    "{person_c} was known for a long memory, and could name every boat that had been lost off the point.",
    "The parish register notes a wedding at {place} {season}, and the whole street turned out for it.",
    "{season_c}, the council ordered {thing} for {place}, {feeling}.",
    "Those who worked at {place} rose before dawn, and {person} was usually the first among them.",
    "A new lamp was hung at {place}, and for a while people walked there in the evenings just to see it lit.",
    "{person_c} wrote to the county about {topic}, but no answer came until long after {season2}.",
    "Trade through {place} grew steadily, and by the end of the decade it paid for the new school.",
    "There was talk {season} of moving the market to {place}, but nothing came of it.",
]

CHAPTER_TITLES = [
    "The Founding of the Quay",
    "Salt and Silver",
    "The Years of the Sea Wall",
    "A Quarrel over the Foreshore",
    "The Ropewalk",
    "Winter on the Marsh",
    "The Customs House",
    "Bridges and Tolls",
    "The Herring Seasons",
    "Fire in Gull Lane",
    "The New Charter",
    "Schools and Almshouses",
    "Storm Years",
    "The Chapel Roof",
    "The Channel Dredged",
    "Fairs and Markets",
    "Letters from the County",
    "The Last of the Sailing Boats",
]


def _sentence(rng: random.Random) -> str:
    p1, p2 = rng.sample(PEOPLE, 2)
    pl1, pl2 = rng.sample(PLACES, 2)
    s1, s2 = rng.sample(SEASONS, 2)
    text = rng.choice(PATTERNS).format(
        person=p1,
        person2=p2,
        person_c=p1[0].upper() + p1[1:],
        place=pl1,
        place2=pl2,
        season=s1,
        season2=s2,
        season_c=s1[0].upper() + s1[1:],
        thing=rng.choice(THINGS),
        feeling=rng.choice(FEELINGS),
        topic=rng.choice(TOPICS),
        weather=rng.choice(WEATHER),
    )
    return text


def _paragraph(rng: random.Random) -> str:
    sentences: list[str] = []
    while len(sentences) < rng.randint(4, 7):
        s = _sentence(rng)
        if s not in sentences:
            sentences.append(s)
    return " ".join(sentences)


SOURCES = ("austen", "chronicle")
NOVEL = Path(__file__).resolve().parent / "data" / "pride_and_prejudice.txt.gz"


def compose(n_chars: int, facts: list[Fact], seed: int = 0, source: str = "austen") -> list[tuple[str, str]]:
    """Blocks of ("h", heading) / ("p", paragraph) adding up to about n_chars, with each fact as its own
    paragraph at its `position`."""
    if source == "austen":
        return _novel(n_chars, facts, seed)
    if source != "chronicle":
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    return _chronicle(n_chars, facts, seed)


@functools.cache
def novel_blocks() -> tuple[tuple[str, str], ...]:
    """The novel as ("h", "Chapter N") / ("p", paragraph) blocks; its lines are wrapped at ~70 characters.
    Read once per process: a benchmark composes a book per seed, and make_long_pdf retries on bad page breaks."""
    text = gzip.decompress(NOVEL.read_bytes()).decode("ascii")
    blocks = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para:
            blocks.append(("h" if re.fullmatch(r"Chapter \d+", para) else "p", para))
    return tuple(blocks)


def _novel(n_chars: int, facts: list[Fact], seed: int) -> list[tuple[str, str]]:
    book = novel_blocks()
    chapters = [i for i, (kind, _) in enumerate(book) if kind == "h"]
    start = chapters[random.Random(seed).randrange(len(chapters))] if seed else 0
    pending = sorted(facts, key=lambda f: f.position)
    blocks: list[tuple[str, str]] = []
    size, i = 0, start
    while size < n_chars:
        while pending and size >= pending[0].position * n_chars:
            blocks.append(("p", pending.pop(0).sentence))
            size += len(blocks[-1][1])
        blocks.append(book[i % len(book)])
        size += len(blocks[-1][1])
        i += 1
    blocks.extend(("p", fact.sentence) for fact in pending)  # positions at 1.0 land after the last paragraph
    return blocks


def _chronicle(n_chars: int, facts: list[Fact], seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    blocks: list[tuple[str, str]] = []
    pending = sorted(facts, key=lambda f: f.position)
    size, chapter, since_heading = 0, 0, 10**9
    while size < n_chars:
        if since_heading > rng.randint(12, 18):
            title = CHAPTER_TITLES[chapter % len(CHAPTER_TITLES)]
            blocks.append(("h", f"Chapter {chapter + 1}. {title}"))
            chapter += 1
            since_heading = 0
        while pending and size >= pending[0].position * n_chars:
            # Framed by ordinary sentences so the fact reads as part of the chronicle, not as a planted line.
            fact = pending.pop(0)
            blocks.append(("p", f"{_sentence(rng)} {fact.sentence} {_sentence(rng)}"))
            size += len(blocks[-1][1])
        text = _paragraph(rng)
        blocks.append(("p", text))
        size += len(text)
        since_heading += 1
    for fact in pending:  # positions at 1.0 land after the last paragraph
        blocks.append(("p", f"{_sentence(rng)} {fact.sentence}"))
    return blocks


TITLES = {"austen": "Pride and Prejudice, with a few facts added", "chronicle": "A Chronicle of Saltmarsh Harbour"}


def write_pdf(blocks: list[tuple[str, str]], path: Path, title: str) -> None:
    try:
        from fpdf import FPDF  # the app extra; imported here so that the engine never needs it
    except ImportError as exc:
        raise ImportError('Writing sample PDFs needs fpdf2: pip install "longheads[app]"') from exc

    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_author("longheads samples")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(20, 18, 20)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, title)
    pdf.ln(4)
    for kind, text in blocks:
        if kind == "h":
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 7, text)
            pdf.ln(1)
        else:
            pdf.set_font("Times", "", 11)
            pdf.multi_cell(0, 5.2, text)
            pdf.ln(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def locate_facts(path: Path, facts: list[Fact]) -> None:
    """Fill each fact's page from the PDF's own text layer (as longheads reads it)."""
    from longheads.pdf import read_pdf

    doc = read_pdf(path)
    flat = [_normalize(p.text) for p in doc.pages]
    for fact in facts:
        hits = [i for i, t in enumerate(flat) if _normalize(fact.sentence) in t]
        if len(hits) != 1:
            # A fact cut by a page break sits on two pages and would make "which page" ambiguous.
            raise RuntimeError(f"fact found on {len(hits)} pages instead of one: {fact.sentence!r}")
        fact.page = doc.pages[hits[0]].number


def make_long_pdf(
    path: str | Path,
    tokens: int = 100_000,
    n_facts: int = 3,
    positions: Sequence[float] | None = None,
    seed: int = 0,
    source: str = "austen",
    title: str | None = None,
) -> list[Fact]:
    """Write the PDF and `<path>.facts.json`; return the facts with their pages."""
    path = Path(path)
    if not 1 <= n_facts <= len(FACTS):
        raise ValueError(f"n_facts must be 1..{len(FACTS)}")
    if positions is None:
        # Spread from near the start to near the end; the very first and last chunks are always kept by
        # LongHeads, so a fact there would prove nothing about selection.
        positions = [0.08 + 0.84 * i / max(n_facts - 1, 1) for i in range(n_facts)] if n_facts > 1 else [0.5]
    facts = placed_facts(positions)
    for attempt in range(5):
        blocks = compose(int(tokens * CHARS_PER_TOKEN), facts, seed=seed + attempt, source=source)
        write_pdf(blocks, path, title or TITLES[source])
        try:
            locate_facts(path, facts)
            break
        except RuntimeError:
            if attempt == 4:
                raise
    meta = {
        "pdf": path.name,
        "target_tokens": tokens,
        "seed": seed,
        "source": source,
        "facts": [asdict(f) for f in facts],
    }
    path.with_suffix(".facts.json").write_text(json.dumps(meta, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="PDF to write; the facts go to the same name with .facts.json")
    ap.add_argument("--tokens", type=int, default=100_000, help="approximate length in tokens")
    ap.add_argument("--facts", type=int, default=3, help=f"how many facts to place (1..{len(FACTS)})")
    ap.add_argument(
        "--positions",
        type=str,
        default=None,
        help="comma-separated fractions where the facts go, e.g. 0.1,0.5,0.9",
    )
    ap.add_argument("--seed", type=int, default=0, help="picks the chapter the novel starts from (0: chapter 1)")
    ap.add_argument("--source", choices=SOURCES, default="austen", help="the prose the facts are placed in")
    args = ap.parse_args(argv)
    positions = [float(x) for x in args.positions.split(",")] if args.positions else None
    if positions is not None and len(positions) != args.facts:
        ap.error("--positions needs one fraction per fact")
    facts = make_long_pdf(args.out, args.tokens, args.facts, positions, args.seed, args.source)
    for f in facts:
        print(f"page {f.page:4d}  {f.sentence}")
    print(f"wrote {args.out} and {args.out.with_suffix('.facts.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
