"""Ask questions about a whole PDF with LangChain: a plain LCEL chain (prompt | model), no retriever.

    python samples/ask_pdf_langchain.py apps/longheads_app/samples/eddystone.pdf "How old was the keeper Henry Hall?"
    python samples/make_long_pdf.py out/long.pdf && \\
        python samples/ask_pdf_langchain.py out/long.pdf "Where is the key to the old observatory hidden?"

The whole text goes into every prompt. It comes before the question, so the second question about the
same PDF reuses the engine's encoding of it and starts in a fraction of the time.
"""

from __future__ import annotations

import argparse
import time

from langchain_core.prompts import ChatPromptTemplate

import longheads
from langchain_longheads import ChatLongHeads
from longheads.pdf import read_pdf

NEUTRAL = longheads.NEUTRAL_QUESTION
SYSTEM = "You are a helpful assistant. Answer questions using only the document you are given."
# The document comes before the question: every question about it then shares the encoded prefix.
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", SYSTEM),
        ("human", "<document>\n{document}\n</document>\n\nQuestion: {question}"),
    ]
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pdf")
    ap.add_argument("questions", nargs="+")
    ap.add_argument("--password", default=None)
    ap.add_argument("--model", default=None, help="model id, path or GGUF (default: embedded SmolLM2-135M)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    doc = read_pdf(args.pdf, password=args.password)
    engine = longheads.load(args.model, device=args.device)
    chain = PROMPT | ChatLongHeads(engine=engine, max_tokens=args.max_tokens)
    n_tokens = engine.count_tokens(doc.text)
    doc.check_fits(n_tokens, engine.max_context, reserve=args.max_tokens + 64)
    print(f"{doc.name}: {doc.num_pages} pages, {n_tokens:,} tokens, model {engine.model_name}")

    # A neutral first question encodes the whole document once; its trace shows which pages the heads read
    # whatever is asked, so the pages listed below are those each question made them read more.
    start = time.perf_counter()
    about = chain.invoke({"document": doc.text, "question": NEUTRAL})
    baseline = engine.last_trace
    print(f"\nQ: {NEUTRAL}\nA: {about.content.strip()}\n   ({time.perf_counter() - start:.1f} s, document encoded)")

    for question in args.questions:
        start = time.perf_counter()
        answer = chain.invoke({"document": doc.text, "question": question})
        seconds = time.perf_counter() - start
        hits = doc.pages_for_trace(engine.last_trace, k=3, baseline=baseline)
        pages = ", ".join(f"p. {hit.page.label}" for hit in hits)
        cached = answer.usage_metadata["input_token_details"]["cache_read"]
        print(f"\nQ: {question}\nA: {answer.content.strip()}")
        pages = pages or "no page stands out"
        print(f"   read most: {pages} | {seconds:.1f} s, {cached:,} prompt tokens reused from cache")


if __name__ == "__main__":
    main()
