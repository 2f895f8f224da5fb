"""Block shapes of the fast path's kernels on one prefill piece of a 102400-token context (Llama-3-8B heads:
32 query / 8 KV heads of 128, bf16): the chunk-attention kernel (4096 queries, 15 selected chunks of 256
tokens + the own chunk) and the chunk-scoring kernel (the piece's 16 block rows x 4 heads of a KV group
against every earlier chunk).

    python benchmarks/kernel_sweep.py [--what attention,maxlogit] [--tma on,off] [--block-m 64,128,256] [--warps 4,8,16]
"""

from __future__ import annotations

import argparse
import itertools
from types import SimpleNamespace

import torch

from longheads import fast, kernels


def piece(dev: str = "cuda") -> SimpleNamespace:
    """One prefill piece's data, seeded: the last 4096 queries of a 102400-token context, each row of 256
    queries with 14 random earlier chunks plus the one before its own."""
    torch.manual_seed(0)
    heads, kv_heads, d, w, n, total = 32, 8, 128, 256, 4096, 102400
    keys = torch.randn(kv_heads, total, d, device=dev, dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    q = torch.randn(heads, n, d, device=dev, dtype=torch.bfloat16)  # the model's queries, as the prefill passes them
    out = torch.empty(heads, n, d, device=dev, dtype=torch.bfloat16)
    start = total - n
    rows = n // w
    current = torch.arange(start // w, total // w, device=dev)
    sel = torch.stack([torch.randperm(int(c) - 1, device=dev)[:14].sort().values for c in current])  # [rows, 14]
    sel = torch.cat([sel, (current - 1)[:, None]], 1)
    sel = sel[None].expand(heads, -1, -1).to(torch.int32).contiguous()
    vown = (current * w).to(torch.int32)[None].expand(heads, -1).contiguous()
    pos = torch.arange(8192, device=dev)[:, None] * torch.rand(d // 2, device=dev)[None]
    return SimpleNamespace(heads=heads, d=d, w=w, n=n, total=total, start=start, rows=rows, keys=keys,
                           values=values, q=q, out=out, sel=sel, vown=vown, cos=pos.cos().contiguous(),
                           sin=pos.sin().contiguous(),
                           row_start=torch.arange(start, total, w), flops=4 * heads * n * (15 * w + w / 2) * d)


def tiles_for(p: SimpleNamespace, per_tile: int) -> torch.Tensor:
    return fast._tiles(p.row_start, p.row_start + p.w, torch.arange(p.rows), p.start, p.w, per_tile).to(p.q.device)


def timeit(fn, reps: int = 10) -> float:
    """Milliseconds per call of `fn`, after one untimed call (Triton compiles on the first)."""
    fn()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(reps):
        fn()
    t1.record()
    torch.cuda.synchronize()
    return t0.elapsed_time(t1) / reps


def sweep_maxlogit(p: SimpleNamespace) -> None:
    kv_heads, n_chunks = p.keys.shape[0], p.start // p.w
    queries = torch.randn(kv_heads, 4 * p.rows, p.d, device=p.keys.device, dtype=p.keys.dtype)
    half = p.d // 2
    cos, sin = p.cos[: p.w, :half].contiguous(), p.sin[: p.w, :half].contiguous()
    results = []
    for block_n, warps, stages in itertools.product((32, 64, 128), (4, 8), (1, 2, 3, 4)):
        try:
            ms = timeit(lambda b=block_n, wp=warps, st=stages: kernels.chunk_maxlogit(
                queries, p.keys, n_chunks, p.w, cos, sin, block_n=b, num_warps=wp, num_stages=st))
        except Exception as exc:
            print("maxlogit", block_n, warps, stages, "failed:", type(exc).__name__)
            continue
        results.append((ms, block_n, warps, stages))
        gbs = n_chunks * p.w * kv_heads * p.d * p.keys.element_size() / ms / 1e6
        print(f"maxlogit block_n={block_n} warps={warps} stages={stages}: {ms:.3f} ms, keys read at {gbs:.0f} GB/s",
              flush=True)
    print("best maxlogit:", min(results), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="attention,maxlogit")
    ap.add_argument("--tma", default="on,off", help="attention: tensor-descriptor loads on, off or both")
    ap.add_argument("--block-m", default="64,128,256")
    ap.add_argument("--block-n", default="32,64,128")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument("--stages", default="2,3")
    args = ap.parse_args()
    what = args.what.split(",")

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]
    p = piece()
    if "maxlogit" in what:
        sweep_maxlogit(p)
    if "attention" not in what:
        return
    results = []
    # tma: key/value tiles of the selected chunks through tensor descriptors (Hopper) or through pointers
    for tma, block_m, block_n, warps, stages in itertools.product(
            [x == "on" for x in args.tma.split(",")], ints(args.block_m), ints(args.block_n), ints(args.warps),
            ints(args.stages)):
        tiles = tiles_for(p, block_m // 4)  # the 4 query heads of a KV group share a tile
        try:
            call = (p.q, p.keys, p.values, p.cos, p.sin, p.sel, p.sel, p.vown, tiles, p.w, 0.088, p.out, block_m,
                    True, warps, stages, block_n, tma)
            ms = timeit(lambda call=call: kernels.chunk_attention(*call))
        except Exception as exc:  # a shape Triton cannot fit (shared memory) is simply skipped
            print(tma, block_m, block_n, warps, stages, "failed:", type(exc).__name__)
            continue
        results.append((ms, tma, block_m, block_n, warps, stages))
        print(f"tma={tma} block_m={block_m} block_n={block_n} warps={warps} stages={stages}: {ms:.3f} ms, "
              f"{p.flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    print("best:", min(results))


if __name__ == "__main__":
    main()
