"""Question time once a PDF is encoded: greedy decoding, 4 beams decoded together (the default on the PyTorch path)
and 4 beams taking turns on the cache (as on the Triton path), with each answer's text.

    python benchmarks/cpu_beams.py --pdf benchmarks/real_pdfs/R-data.pdf --device cpu --json out.json

The document is encoded once (with the first question); every answer after that reuses its encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import longheads
import longheads.beams
from longheads.pdf import read_pdf

QUESTIONS = ("What does the function read.csv return?", "Which package reads Excel spreadsheets?")
MODES = (("greedy", 1, True), ("4 beams together", 4, True), ("4 beams in turns", 4, False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdf", type=Path, default=Path(__file__).parent / "real_pdfs" / "R-data.pdf")
    ap.add_argument("--question", action="append", default=None, help="default: two questions about R-data.pdf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    doc = read_pdf(args.pdf)
    lh = longheads.load(device=args.device)
    prompts = [longheads.document_messages(doc.text, q) for q in args.question or QUESTIONS]
    t0 = time.perf_counter()
    tokens = lh.encode(prompts[0])
    encode_s = time.perf_counter() - t0
    together = longheads.beams.batches_beams
    rows = []
    for question, prompt in zip(args.question or QUESTIONS, prompts, strict=True):
        for mode, beams, batched in MODES:
            longheads.beams.batches_beams = together if batched else (lambda *a: False)
            g = lh.answer(prompt, max_new_tokens=args.max_new_tokens, num_beams=beams)
            u = g.usage
            seconds = round(u["prefill_seconds"] + u["decode_seconds"], 2)
            rows.append({"question": question, "mode": mode, "seconds": seconds,
                         "prefill_s": round(u["prefill_seconds"], 2), "decode_s": round(u["decode_seconds"], 2),
                         "answer_tokens": u["completion_tokens"], "cached_tokens": u["cached_tokens"],
                         "answer": g.text})
            print(f"{mode}: {rows[-1]['seconds']} s ({u['completion_tokens']} tokens) {g.text!r}", flush=True)
    longheads.beams.batches_beams = together
    commit = os.environ.get("LONGHEADS_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n{args.pdf.name}: {tokens:,} tokens, encoded in {encode_s:.1f} s · {args.device} · "
          f"{torch.get_num_threads()} threads · commit {commit}\n")
    print("| question | decoding | seconds | answer tokens |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['question']} | {r['mode']} | {r['seconds']} | {r['answer_tokens']} |")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "device": f"{args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "command": " ".join(["python", "benchmarks/cpu_beams.py", *sys.argv[1:]]), "pdf": args.pdf.name,
            "tokens": tokens,
            "encode_seconds": round(encode_s, 1), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
