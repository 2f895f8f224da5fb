"""Facts inside long prose: how often each selection design answers, and whether the heads read the fact.

    python benchmarks/prose_grid.py --tokens 17000 --books 8 --out prose.json \
        --variant default: --variant tail64:tail_tokens=64

Books come from longheads.sample_pdf (the end-to-end test's generator, text only, no PDF), in the prose
`--source` names (the novel, each book from a chapter its seed picks, or the chronicle): each holds
three facts at random depths and is asked about each through the chat template, the document first, as the
integrations ask. A fact counts as read when the chunk holding it is among the chunks the heads read most for
the first answer token (the page map's view). Variants are NAME:key=value,... over LongHeadsConfig fields.
`--facts e2e` puts tests/test_end_to_end.py's three facts at its depths (0.1, 0.5, 0.9) into every book
instead, so the end-to-end test's design can be repeated over many books.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

import torch
from passkey_grid import parse_variant  # noqa: E402  (a sibling script)

import longheads
from longheads.engine import LongHeadsModel
from longheads.sample_pdf import (
    CHARS_PER_TOKEN,
    END_TO_END_POSITIONS,
    FACTS,
    SOURCES,
    Fact,
    compose,
    placed_facts,
)


def make_book(tokens: int, seed: int, source: str, facts: str = "random") -> tuple[str, list[Fact]]:
    chosen = book_facts(seed) if facts == "random" else placed_facts(END_TO_END_POSITIONS)
    return compose_text(tokens, chosen, seed, source), chosen


def book_facts(seed: int) -> list[Fact]:
    rng = random.Random(seed)
    chosen = rng.sample(FACTS, 3)
    depths = sorted(rng.uniform(0.06, 0.94) for _ in chosen)
    return [replace(f, position=d) for f, d in zip(chosen, depths, strict=True)]


def compose_text(tokens: int, facts: list[Fact], seed: int, source: str) -> str:
    return "\n\n".join(text for _, text in compose(int(tokens * CHARS_PER_TOKEN), facts, seed=seed, source=source))


def ask(lh: LongHeadsModel, text: str, fact: Fact) -> dict:
    messages = longheads.document_messages(text, fact.question)
    t0 = time.perf_counter()
    generation = lh.answer(messages, max_new_tokens=24, stop=["\n"])
    answer, trace = generation.text, generation.trace
    where = trace.prompt_text.index(fact.sentence)
    chunk = next(i for i, (a, b) in enumerate(trace.chunk_char_spans) if a <= where < b)
    first = trace.selections[0]  # [layers, heads, slots]: what the first answer token read
    share = float((first == chunk).any(dim=-1).float().mean())
    return {"question": fact.question, "answer": answer, "correct": fact.answer.lower() in answer.lower(),
            "fact_chunk": chunk, "chunks": trace.num_chunks, "heads_reading_fact": round(share, 3),
            "fact_in_top3": chunk in trace.top_chunks(3), "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--tokens", type=int, default=17000)
    ap.add_argument("--books", type=int, default=8)
    ap.add_argument("--first-book", type=int, default=0, help="seed of the first book")
    ap.add_argument("--source", choices=SOURCES, default="austen")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--facts", choices=("random", "e2e"), default="random",
                    help="three facts at random depths, or the end-to-end test's three at 0.1, 0.5 and 0.9")
    ap.add_argument("--one-fact", action="store_true",
                    help="ask each fact in a book of its own: the same text with only that fact added")
    ap.add_argument("--out", default="prose_grid.json")
    args = ap.parse_args()
    if args.one_fact and args.facts == "e2e":
        ap.error("--one-fact asks each book's random facts one at a time; it does not combine with --facts e2e")

    base = longheads.load(args.model, device=args.device, dtype=args.dtype)
    seeds = range(args.first_book, args.first_book + args.books)
    if args.one_fact:
        books = [(compose_text(args.tokens, [fact], seed, args.source), [fact]) for seed in seeds
                 for fact in book_facts(seed)]
    else:
        books = [make_book(args.tokens, seed, args.source, args.facts) for seed in seeds]
    report = {"model": base.model_name, "tokens": args.tokens, "source": args.source, "first_book": args.first_book,
              "one_fact": args.one_fact, "facts": args.facts,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "variants": []}
    for spec in args.variant or ["default:"]:
        name, fields = parse_variant(spec)
        config = longheads.LongHeadsConfig(**fields)
        lh = LongHeadsModel(base.model, base.tokenizer, config, base.model_name)
        rows = []
        for text, facts in books:
            for fact in facts:
                rows.append(ask(lh, text, fact))
                r = rows[-1]
                print(f"{name} {'OK ' if r['correct'] else 'NO '} read={r['heads_reading_fact']:.2f} "
                      f"top3={r['fact_in_top3']} {r['question']!r} -> {r['answer']!r}", flush=True)
        correct = sum(r["correct"] for r in rows)
        top3 = sum(r["fact_in_top3"] for r in rows)
        print(f"== {name:20s} correct {correct}/{len(rows)}  fact chunk in top-3 {top3}/{len(rows)}", flush=True)
        report["variants"].append({"name": name, "config": config.to_dict(), "correct": correct,
                                   "fact_in_top3": top3, "total": len(rows), "rows": rows})
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
