"""Where a LongHeads prefill spends its GPU time: torch.profiler's kernel table for one prefill.

    python benchmarks/profile_prefill.py --tokens 100k [--layers 32] [--compile] [--cpu-offload [--offload-keys]]

Random weights of the Llama-3-8B shape, bf16, after one warm-up prefill (Triton compiles its kernels).
"""

from __future__ import annotations

import argparse
import time

import torch
from gpu_vs_sdpa import llama3_8b  # a sibling script


def main() -> None:
    import longheads
    from longheads.cache import LongHeadsCache
    from longheads.engine import encode_pieces
    from longheads.passkey import parse_length

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--compile", action="store_true", help="LongHeadsConfig(compile_layers=True)")
    ap.add_argument("--cpu-offload", action="store_true", help="LongHeadsConfig(cpu_offload=True)")
    ap.add_argument("--offload-keys", action="store_true", help="offload_keys=True, with --cpu-offload")
    ap.add_argument("--sort", default="self_cuda_time_total", help="profiler column to sort by (self_cpu_time_total: "
                    "where the host waits)")
    args = ap.parse_args()
    n = parse_length(args.tokens)
    model = llama3_8b(args.layers)
    longheads.enable(model, longheads.LongHeadsConfig(max_context=n + 64, compile_layers=args.compile,
                                                      cpu_offload=args.cpu_offload, offload_keys=args.offload_keys))
    ids = torch.randint(0, 128000, (1, n), device="cuda")

    def prefill() -> float:
        cache = LongHeadsCache(model)
        cache.reserve(n + 8)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        encode_pieces(model, cache, ids)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    print("warm-up prefill s", round(prefill(), 3))
    print("prefill s", round(prefill(), 3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        prefill()
    print(prof.key_averages().table(sort_by=args.sort, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
