"""Repeated 100k-token prefills of the random-weight Llama-3-8B shape in one process: eager or with
`compile_layers`, and how long the CPU takes to queue the work (when that is close to the wall time, the
GPU is the bottleneck or waits on launches).

    python benchmarks/prefill_repeat.py eager|compile [--tokens 100k] [--runs 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from gpu_vs_sdpa import llama3_8b  # a sibling script

import longheads
from longheads.cache import LongHeadsCache
from longheads.engine import encode_pieces
from longheads.passkey import parse_length


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["eager", "compile"])
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    n = parse_length(args.tokens)
    model = llama3_8b(32)
    longheads.enable(model, longheads.LongHeadsConfig(max_context=n + 64, compile_layers=args.mode == "compile"))
    ids = torch.randint(0, 128000, (1, n), device="cuda")

    def prefill() -> tuple[float, float]:
        cache = LongHeadsCache(model)
        cache.reserve(n + 8)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        encode_pieces(model, cache, ids)
        queued = time.perf_counter() - t0
        torch.cuda.synchronize()
        return round(queued, 3), round(time.perf_counter() - t0, 3)

    print(args.mode, "warm-up (queued s, wall s):", prefill(), flush=True)
    print(args.mode, "runs (queued s, wall s):", [prefill() for _ in range(args.runs)], flush=True)


if __name__ == "__main__":
    main()
