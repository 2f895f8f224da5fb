"""Block shapes of the chunk-attention kernel: time of one prefill piece (4096 queries, 15 selected chunks of
256 tokens + the own chunk, Llama-3-8B heads: 32 query / 8 KV heads of 128, bf16) for each setting.

    python benchmarks/kernel_sweep.py
"""

from __future__ import annotations

import itertools

import torch

from longheads import fast, kernels


def main() -> None:
    torch.manual_seed(0)
    heads, kv_heads, d, w, n, total = 32, 8, 128, 256, 4096, 102400
    dev = "cuda"
    keys = torch.randn(kv_heads, total, d, device=dev, dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    q = torch.randn(heads, n, d, device=dev)
    out = torch.empty(heads, n, d, device=dev, dtype=torch.bfloat16)
    start = total - n
    rows = n // w
    current = torch.arange(start // w, total // w, device=dev)
    sel = torch.stack([torch.randperm(int(c) - 1, device=dev)[:14].sort().values for c in current])  # [rows, 14]
    sel = torch.cat([sel, (current - 1)[:, None]], 1)
    sel = sel[None].expand(heads, -1, -1).to(torch.int32).contiguous()
    vown = (current * w).to(torch.int32)[None].expand(heads, -1).contiguous()
    pos = torch.arange(8192, device=dev)[:, None] * torch.rand(d // 2, device=dev)[None]
    cos, sin = pos.cos(), pos.sin()
    row_start = torch.arange(start, total, w)
    flops = 4 * heads * n * (15 * w + w / 2) * d
    results = []
    for pack, block_m, block_n, warps, stages in itertools.product(
            (True, False), (64, 128), (32, 64, 128), (4, 8), (2, 3)):
        per_tile = block_m // 4 if pack else block_m
        tiles = fast._tiles(row_start, row_start + w, torch.arange(rows), start, w, per_tile).to(dev)
        try:
            args = (q, keys, values, cos, sin, sel, sel, vown, tiles, w, 0.088, out, block_m, pack, warps, stages,
                    block_n)

            def run(args=args):
                kernels.chunk_attention(*args)

            run()
            torch.cuda.synchronize()
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(10):
                run()
            t1.record()
            torch.cuda.synchronize()
            ms = t0.elapsed_time(t1) / 10
        except Exception as exc:  # a shape Triton cannot fit (shared memory) is simply skipped
            print(pack, block_m, block_n, warps, stages, "failed:", type(exc).__name__)
            continue
        results.append((ms, pack, block_m, block_n, warps, stages))
        print(f"pack={pack} block_m={block_m} block_n={block_n} warps={warps} stages={stages}: {ms:.3f} ms, "
              f"{flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    print("best:", min(results))


if __name__ == "__main__":
    main()
