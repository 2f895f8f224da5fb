"""Ask questions about a whole PDF with LlamaIndex: the whole document in one LLM call, no retriever.

    python samples/ask_pdf_llamaindex.py apps/longheads_app/samples/eddystone.pdf "Who designed the fourth lighthouse?"

`WholeDocumentQueryEngine` sends the document and the question in one chat call; the LLM's context window is
the engine's real maximum context, so nothing is split. The answer's source nodes are the pages the model's
heads read most while answering.
"""

from __future__ import annotations

import argparse
import time

from llama_index.llms.longheads import LongHeads, WholeDocumentQueryEngine

import longheads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pdf")
    ap.add_argument("questions", nargs="+")
    ap.add_argument("--password", default=None)
    ap.add_argument("--model", default=None, help="model id, path or GGUF (default: embedded SmolLM2-135M)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    llm = LongHeads(engine=longheads.load(args.model, device=args.device), max_new_tokens=args.max_tokens)
    query_engine = WholeDocumentQueryEngine.from_pdf(llm, args.pdf, password=args.password)
    meta = llm.metadata
    print(f"{args.pdf}: model {meta.model_name}, context window {meta.context_window:,} tokens")

    # A neutral first question encodes the whole document once; its trace becomes the baseline, so the
    # source pages of later answers are those each question made the heads read more than usual.
    start = time.perf_counter()
    about = query_engine.query(longheads.NEUTRAL_QUESTION)
    query_engine.baseline = about.metadata["trace"]
    print(f"\nQ: {longheads.NEUTRAL_QUESTION}\nA: {about.response.strip()}")
    print(f"   ({time.perf_counter() - start:.1f} s, document encoded)")

    for question in args.questions:
        start = time.perf_counter()
        response = query_engine.query(question)
        seconds = time.perf_counter() - start
        usage = response.metadata["usage"]
        pages = ", ".join(f"p. {n.node.metadata['page_label']}" for n in response.source_nodes)
        print(f"\nQ: {question}\nA: {response.response.strip()}")
        print(
            f"   read most: {pages or 'no page stands out'} | {seconds:.1f} s, "
            f"{usage.get('cached_tokens', 0):,} of {usage['prompt_tokens']:,} prompt tokens reused from cache"
        )


if __name__ == "__main__":
    main()
