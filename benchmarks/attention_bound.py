"""How far the chunk-attention kernel is from what Triton reaches on the same work without LongHeads' own
parts, on kernel_sweep.py's prefill piece (4096 queries of Llama-3-8B heads at 102400 tokens, bf16):

- the library kernel with key/value tiles through tensor descriptors (Hopper) and through pointers;
- a stripped kernel over the same tiles (128 rows = 4 heads x 32 queries of one KV head) and the same
  selected chunks through tensor descriptors, 16 whole chunks per query and no causal own chunk, with and
  without turning the query tile to each chunk's slot (the rotation the in-chunk key layout needs).

    python benchmarks/attention_bound.py
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from kernel_sweep import piece, tiles_for, timeit  # a sibling script
from triton.tools.tensor_descriptor import TensorDescriptor

from longheads import kernels
from longheads.kernels import _softmax_step, _turn  # the library kernel's own softmax step and slot rotation


@triton.jit
def _stripped_kernel(q_ptr, out_ptr, sel_ptr, cos_ptr, sin_ptr, k_desc, v_desc, k_rows, n_slots, scale_log2,
                     stride_qh, stride_qn, stride_sh, stride_sr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, ROTATE: tl.constexpr):
    kv = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    QM: tl.constexpr = BLOCK_M // 4
    TILES: tl.constexpr = CHUNK // BLOCK_N
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HALF)
    head = kv * 4 + rows // QM
    query = tl.program_id(0) * QM + rows % QM
    q_at = q_ptr + head[:, None] * stride_qh + query[:, None] * stride_qn + cols[None, :]
    q1 = tl.load(q_at).to(tl.float32)
    q2 = tl.load(q_at + HALF).to(tl.float32)
    sel = sel_ptr + kv * 4 * stride_sh + (tl.program_id(0) * QM // CHUNK) * stride_sr
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    dt = q_ptr.dtype.element_ty
    for t in range(0, n_slots * TILES):
        row = kv * k_rows + tl.load(sel + t // TILES) * CHUNK + (t % TILES) * BLOCK_N
        if ROTATE:
            r1, r2 = _turn(q1, q2, cos_ptr, sin_ptr, (n_slots - t // TILES) * CHUNK, HALF, dt)
        else:
            r1, r2 = q1.to(dt), q2.to(dt)
        logits = tl.dot(r1, tl.trans(k_desc.load([row, 0]))) + tl.dot(r2, tl.trans(k_desc.load([row, HALF])))
        m_i, l_i, alpha, p = _softmax_step(logits * scale_log2, m_i, l_i)
        acc = acc * alpha[:, None] + tl.dot(p.to(dt), v_desc.load([row, 0]))
    out = out_ptr + head[:, None] * stride_qh + query[:, None] * stride_qn + tl.arange(0, D)[None, :]
    tl.store(out, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty))


def main() -> None:
    p = piece()
    kv_heads, tokens, d = p.keys.shape
    tiles = tiles_for(p, 32)
    library_flops = p.flops  # 15 selected chunks and half the own chunk per query
    for tma in (True, False):
        args = (p.q, p.keys, p.values, p.cos, p.sin, p.sel, p.sel, p.vown, tiles, p.w, 0.088, p.out, 128, True,
                None, 2, None, tma)
        ms = timeit(lambda args=args: kernels.chunk_attention(*args))
        print(f"library kernel, tma={tma}: {ms:.3f} ms, {library_flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    # The stripped kernel reads 16 whole chunks per query: the piece's 15 and, in place of the own chunk,
    # the one before it again.
    sel = torch.cat([p.sel, p.sel[..., -1:]], -1).contiguous()
    k_desc = TensorDescriptor.from_tensor(p.keys.view(-1, d), [128, d // 2])
    v_desc = TensorDescriptor.from_tensor(p.values.view(-1, d), [128, d])
    flops = 4 * p.heads * p.n * 16 * p.w * d
    for rotate in (False, True):
        def run(rotate=rotate):
            _stripped_kernel[(p.n // 32, kv_heads)](
                p.q, p.out, sel, p.cos, p.sin, k_desc, v_desc, tokens, 16, 0.088 * 1.4426950408889634,
                p.q.stride(0), p.q.stride(1), sel.stride(0), sel.stride(1), D=d, BLOCK_M=128, BLOCK_N=128,
                CHUNK=p.w, ROTATE=rotate, num_warps=8, num_stages=2)
        ms = timeit(run)
        print(f"stripped kernel, query turned per slot={rotate}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s",
              flush=True)


if __name__ == "__main__":
    main()
