"""End to end on CPU with the embedded model: a generated PDF twice the model's trained length, with facts
at its beginning, middle and end, asked through both integrations in one prompt each, no retriever.

Checks that the answers hold the facts, that the heads' selection trace points at each fact's page, and
that later questions reuse the document's encoding (their times are printed: run with -s to see them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_longheads import ChatLongHeads
from llama_index.llms.longheads import LongHeads, WholeDocumentQueryEngine

import longheads
from longheads.pdf import PDFDocument, read_pdf
from longheads.sample_pdf import END_TO_END_POSITIONS, Fact, make_long_pdf

# The sample script's own prompt is what is tested, so it is imported from samples/.
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
sys.path.insert(0, str(SAMPLES))
from ask_pdf_langchain import PROMPT, SYSTEM  # noqa: E402

pytestmark = pytest.mark.slow

# SmolLM2-135M was trained on 8k tokens; the document must be well beyond that for the test to mean anything.
MIN_TOKENS = 16_384


NEUTRAL = longheads.NEUTRAL_QUESTION
# Facts placed beyond this fraction of the book are its end (the ferry, at 0.9): the two answer checks split here.
END = 0.75


class Book:
    def __init__(self, pdf: PDFDocument, facts: list[Fact], n_tokens: int) -> None:
        self.pdf, self.facts, self.n_tokens = pdf, facts, n_tokens
        self.times: dict[str, float] = {}
        self.baseline: Any = None  # trace of the neutral question: what the heads read whatever is asked
        # Misses by kind ("answer" or "page") and the fact's position, checked by the last three tests.
        self.misses: list[tuple[str, float, str]] = []
        self.checked = 0

    def check(self, kind: str, where: Callable[[float], bool]) -> None:
        assert self.checked == 2 * len(self.facts), "run with the two integration tests above"
        misses = [text for k, position, text in self.misses if k == kind and where(position)]
        assert not misses, "\n".join(misses)


@pytest.fixture(scope="module")
def book(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Book:
    path = tmp_path_factory.mktemp("e2e") / "book.pdf"
    facts = make_long_pdf(path, tokens=17_000, n_facts=3, positions=END_TO_END_POSITIONS)
    pdf = read_pdf(path)
    n_tokens = engine.count_tokens(pdf.text)
    assert n_tokens >= MIN_TOKENS, n_tokens
    print(f"\nbook: {pdf.num_pages} pages, {n_tokens:,} tokens; facts on pages {[f.page for f in facts]}")
    return Book(pdf, facts, n_tokens)


def _record(book: Book, fact: Fact, answer: str, engine: Any) -> None:
    """Note whether the answer holds the fact and the heads read the fact's page most."""
    trace = engine.last_trace
    assert trace.prompt_tokens > book.n_tokens and trace.num_chunks * trace.chunk_size >= trace.prompt_tokens
    hits = book.pdf.pages_for_trace(trace, k=3, baseline=book.baseline)
    ranked = [hit.page.number for hit in hits]
    # The most read chunk may run across a page break: it counts for every page it touches.
    first = [hit.page.number for hit in hits if hits[0].chunks[0] in hit.chunks] if hits else []
    print(f"   pages read more than for the neutral question: {ranked}, the first chunk's {first} "
          f"(fact on page {fact.page})")
    book.checked += 1
    if fact.answer.lower() not in answer.lower():
        book.misses.append(("answer", fact.position, f"asked {fact.question!r}, got {answer!r}"))
    if fact.page not in first:
        book.misses.append(("page", fact.position, f"heads read pages {ranked} most; the fact is on {fact.page}"))


def test_langchain_answers_from_beginning_middle_and_end(book: Book, engine: Any) -> None:
    chain = PROMPT | ChatLongHeads(engine=engine, max_tokens=20, stop=["\n"])
    # The first question encodes the whole document; its trace is the baseline of the page map.
    start = time.perf_counter()
    about = chain.invoke({"document": book.pdf.text, "question": NEUTRAL})
    book.times["first"] = time.perf_counter() - start
    book.baseline = engine.last_trace
    print(f"first question ({book.times['first']:.1f} s, whole document encoded): {about.content.strip()!r}")
    for i, fact in enumerate(book.facts):
        start = time.perf_counter()
        answer = chain.invoke({"document": book.pdf.text, "question": fact.question})
        seconds = time.perf_counter() - start
        cached = answer.usage_metadata["input_token_details"]["cache_read"]
        book.times[f"langchain q{i + 2}"] = seconds
        print(f"langchain q{i + 2} ({seconds:.1f} s, {cached:,} cached): {answer.content.strip()!r}")
        assert answer.usage_metadata["input_tokens"] > book.n_tokens
        # Same document, new question: only the question is encoded again.
        assert cached > book.n_tokens * 0.9
        assert answer.content.strip()
        _record(book, fact, answer.content, engine)
    first, second = book.times["first"], book.times["langchain q2"]
    print(f"first question {first:.1f} s, second {second:.1f} s")
    assert second < first / 2


def test_llamaindex_answers_from_beginning_middle_and_end(book: Book, engine: Any) -> None:
    llm = LongHeads(engine=engine, max_new_tokens=20, stop=["\n"])
    query_engine = WholeDocumentQueryEngine(
        llm, book.pdf.text, pdf=book.pdf, baseline=book.baseline, system_prompt=SYSTEM
    )
    for i, fact in enumerate(reversed(book.facts)):
        start = time.perf_counter()
        response = query_engine.query(fact.question)
        seconds = time.perf_counter() - start
        usage = response.metadata["usage"]
        book.times[f"llamaindex q{i + 1}"] = seconds
        cached = usage["cached_tokens"]
        print(f"llamaindex q{i + 1} ({seconds:.1f} s, {cached:,} cached): {response.response.strip()!r}")
        if i or book.baseline is not None:
            # After the LangChain test, which laid the document out the same way, even the first reuses it.
            assert cached > book.n_tokens * 0.9
        assert response.response.strip() and response.source_nodes
        _record(book, fact, response.response, engine)


def test_beginning_and_middle_facts_answered(book: Book) -> None:
    book.check("answer", lambda position: position <= END)


def test_heads_read_every_facts_page(book: Book) -> None:
    book.check("page", lambda position: True)


def test_end_fact_answered(book: Book) -> None:
    book.check("answer", lambda position: position > END)
