"""End to end on CPU with the embedded model: a generated PDF twice the model's trained length, with facts
at its beginning, middle and end, asked through both integrations in one prompt each, no retriever.

Checks that the answers hold the facts, that the heads' selection trace points at each fact's page, and
that later questions reuse the document's encoding. Every question is asked once, by the `book` fixture, on
an engine of this module's own; each test checks one part of what came back, so any of them runs alone, in
any order. The encoding times are printed: run with -s to see them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from llama_index.llms.longheads import LongHeads, WholeDocumentQueryEngine

import longheads
from langchain_longheads import ChatLongHeads
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


@dataclass
class Answer:
    via: str  # "langchain" or "llamaindex"
    fact: Fact
    text: str
    prompt_tokens: int  # as the integration reports them
    cached: int  # prompt tokens whose encoding came from the engine's document cache
    traced_tokens: int  # prompt tokens of the engine's selection trace of this answer
    ranked: list[int]  # pages the heads read more than for the neutral question, most first
    first: list[int]  # the pages the most read chunk touches
    sources: int = 0  # source nodes of a LlamaIndex response


class Book:
    def __init__(self, pdf: PDFDocument, facts: list[Fact], n_tokens: int) -> None:
        self.pdf, self.facts, self.n_tokens = pdf, facts, n_tokens
        self.baseline: Any = None  # trace of the neutral question: what the heads read whatever is asked
        self.neutral_cached = -1  # cached prompt tokens of the neutral question, the first one asked
        self.answers: list[Answer] = []

    def answered(self, via: str) -> list[Answer]:
        return [a for a in self.answers if a.via == via]

    def check(self, kind: str, where: Callable[[float], bool]) -> None:
        """No miss of `kind` ("answer": the answer lacks the fact; "page": the heads read other pages most)
        among the facts whose position `where` accepts."""
        misses = []
        for a in self.answers:
            if not where(a.fact.position):
                continue
            if kind == "answer" and a.fact.answer.lower() not in a.text.lower():
                misses.append(f"{a.via}: asked {a.fact.question!r}, got {a.text!r}")
            if kind == "page" and a.fact.page not in a.first:
                misses.append(f"{a.via}: heads read pages {a.ranked} most; the fact is on {a.fact.page}")
        assert not misses, "\n".join(misses)


@pytest.fixture(scope="module")
def engine() -> Any:
    """This module's own engine, loaded afresh: its document cache starts empty whatever other tests asked."""
    return longheads.load(device="cpu")


@pytest.fixture(scope="module")
def book(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Book:
    """The book, asked the neutral question and every fact through LangChain, then every fact through LlamaIndex."""
    path = tmp_path_factory.mktemp("e2e") / "book.pdf"
    facts = make_long_pdf(path, tokens=17_000, n_facts=3, positions=END_TO_END_POSITIONS)
    pdf = read_pdf(path)
    n_tokens = engine.count_tokens(pdf.text)
    assert n_tokens >= MIN_TOKENS, n_tokens
    print(f"\nbook: {pdf.num_pages} pages, {n_tokens:,} tokens; facts on pages {[f.page for f in facts]}")
    book = Book(pdf, facts, n_tokens)
    ask_through_langchain(book, engine)
    ask_through_llamaindex(book, engine)
    return book


def ask_through_langchain(book: Book, engine: Any) -> None:
    chain = PROMPT | ChatLongHeads(engine=engine, max_tokens=20, stop=["\n"])
    # The first question encodes the whole document; its trace is the baseline of the page map.
    about = chain.invoke({"document": book.pdf.text, "question": NEUTRAL})
    book.baseline = engine.last_trace
    book.neutral_cached = about.usage_metadata["input_token_details"]["cache_read"]
    seconds = about.response_metadata["prefill_seconds"]
    print(f"first question ({seconds:.1f} s encoding the whole document): {about.content.strip()!r}")
    for fact in book.facts:
        answer = chain.invoke({"document": book.pdf.text, "question": fact.question})
        usage = answer.usage_metadata
        book.answers.append(record(book, engine, "langchain", fact, answer.content, usage["input_tokens"],
                                   usage["input_token_details"]["cache_read"]))


def ask_through_llamaindex(book: Book, engine: Any) -> None:
    llm = LongHeads(engine=engine, max_new_tokens=20, stop=["\n"])
    query_engine = WholeDocumentQueryEngine(
        llm, book.pdf.text, pdf=book.pdf, baseline=book.baseline, system_prompt=SYSTEM
    )
    for fact in reversed(book.facts):
        response = query_engine.query(fact.question)
        usage = response.metadata["usage"]
        book.answers.append(record(book, engine, "llamaindex", fact, response.response, usage["prompt_tokens"],
                                   usage["cached_tokens"], sources=len(response.source_nodes)))


def record(book: Book, engine: Any, via: str, fact: Fact, text: str, prompt_tokens: int, cached: int,
           sources: int = 0) -> Answer:
    """The answer, with the pages the heads read most for it, from the engine's trace of it."""
    trace = engine.last_trace
    hits = book.pdf.pages_for_trace(trace, k=3, baseline=book.baseline)
    ranked = [hit.page.number for hit in hits]
    # The most read chunk may run across a page break: it counts for every page it touches.
    first = [hit.page.number for hit in hits if hits[0].chunks[0] in hit.chunks] if hits else []
    print(f"{via} ({engine.last_usage['prefill_seconds']:.1f} s encoding, {cached:,} cached): {text.strip()!r}\n"
          f"   pages read more than for the neutral question: {ranked}, the first chunk's {first} "
          f"(fact on page {fact.page})")
    return Answer(via, fact, text, prompt_tokens, cached, trace.prompt_tokens, ranked, first, sources)


def test_langchain_answers_from_beginning_middle_and_end(book: Book) -> None:
    # The neutral question, the first asked, encoded the whole document...
    assert book.neutral_cached == 0
    answers = book.answered("langchain")
    assert len(answers) == len(book.facts)
    for a in answers:
        assert a.prompt_tokens > book.n_tokens and a.traced_tokens > book.n_tokens
        # ...and every question after it reused that encoding: only the question was encoded again.
        assert a.cached > book.n_tokens * 0.9
        assert a.text.strip()


def test_llamaindex_answers_from_beginning_middle_and_end(book: Book) -> None:
    answers = book.answered("llamaindex")
    assert len(answers) == len(book.facts)
    for a in answers:
        assert a.prompt_tokens > book.n_tokens and a.traced_tokens > book.n_tokens
        # The query engine lays the document out as the LangChain prompt did: even its first question reuses it.
        assert a.cached > book.n_tokens * 0.9
        assert a.text.strip() and a.sources


def test_beginning_and_middle_facts_answered(book: Book) -> None:
    book.check("answer", lambda position: position <= END)


def test_heads_read_every_facts_page(book: Book) -> None:
    book.check("page", lambda position: True)


def test_end_fact_answered(book: Book) -> None:
    book.check("answer", lambda position: position > END)
