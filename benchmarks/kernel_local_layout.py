"""A measured prototype for issue 5, not used by the library: the chunk-attention kernel with keys stored
rotated at their position inside their chunk, so that a slot's offset goes on the query (one angle for the
whole query tile) and key tiles go to the tensor cores untouched. Also times the elementwise glue of one
Llama-3-8B layer on a 4096-token piece (RMSNorm eager vs torch.compile, the MLP, the identity rotary, the
row sums). One H100 run: docs/results/kernel_local_layout_h100.log.

    python benchmarks/kernel_local_layout.py

On that run the current kernel takes 1.26 ms per piece (211 TFLOP/s; 1.28 ms inside a real prefill,
docs/results/profile_prefill_100k_h100_s3.log) and the prototype 0.90 ms at its best block shape (128 x 128,
8 warps, 2 stages), 1.41x faster, with outputs within 2e-3 of the current kernel's.
"""

import itertools
import sys
import time

import torch
import triton
import triton.language as tl
from kernel_sweep import piece, tiles_for, timeit  # a sibling script: the same piece, seeded alike

sys.path.insert(0, ".")
from longheads import kernels
from longheads.rope import apply_rope


@triton.jit
def _block(
    q1,
    q2,
    m_i,
    l_i,
    acc,
    k_head,
    v_head,
    k_tok,
    v_tok,
    key_ok,
    stride_kn,
    stride_vn,
    scale_log2,
    mask_q,
    HALF: tl.constexpr,
    D: tl.constexpr,
    PREC: tl.constexpr,
    CAUSAL: tl.constexpr,
    j,
    q_local,
):
    cols = tl.arange(0, HALF)
    dcols = tl.arange(0, D)
    kp = k_head + k_tok[:, None] * stride_kn
    k1 = tl.load(kp + cols[None, :], mask=key_ok[:, None], other=0.0)
    k2 = tl.load(kp + HALF + cols[None, :], mask=key_ok[:, None], other=0.0)
    s = tl.dot(q1, tl.trans(k1), input_precision=PREC) + tl.dot(q2, tl.trans(k2), input_precision=PREC)
    s = s * scale_log2
    if CAUSAL:
        s = tl.where((j[None, :] <= q_local[:, None]) & key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_head + v_tok[:, None] * stride_vn + dcols[None, :], mask=key_ok[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _local_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    cos_ptr,
    sin_ptr,
    sel_ptr,
    vsel_ptr,
    vown_ptr,
    tile_row_ptr,
    tile_len_ptr,
    tile_sel_ptr,
    tile_local_ptr,
    tile_own_k_ptr,
    stride_qh,
    stride_qn,
    stride_kh,
    stride_kn,
    stride_vh,
    stride_vn,
    stride_oh,
    stride_on,
    stride_sh,
    stride_sr,
    stride_vo,
    n_slots,
    groups,
    scale_log2,
    CHUNK: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACK: tl.constexpr,
    IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    HALF: tl.constexpr = D // 2
    PREC: tl.constexpr = "ieee" if IEEE else "tf32"
    QM: tl.constexpr = BLOCK_M // PACK
    rows = tl.arange(0, BLOCK_M)
    if PACK == 1:
        head = tl.program_id(1) + rows * 0
    else:
        head = tl.program_id(1) * groups + rows // QM
    kv = tl.program_id(1) if PACK > 1 else tl.program_id(1) // groups
    first_head = tl.program_id(1) * groups if PACK > 1 else tl.program_id(1)
    qi = rows % QM
    row0 = tl.load(tile_row_ptr + tile)
    n_rows = tl.load(tile_len_ptr + tile)
    sel_row = tl.load(tile_sel_ptr + tile)
    local0 = tl.load(tile_local_ptr + tile)
    own_k = tl.load(tile_own_k_ptr + tile).to(tl.int64)
    own_v = tl.load(vown_ptr + first_head * stride_vo + sel_row).to(tl.int64)
    row_ok = (qi < n_rows) & (head < (tl.program_id(1) + 1) * groups)
    cols = tl.arange(0, HALF)
    q_base = q_ptr + head[:, None].to(tl.int64) * stride_qh + (row0 + qi)[:, None] * stride_qn
    q1 = tl.load(q_base + cols[None, :], mask=row_ok[:, None], other=0.0)
    q2 = tl.load(q_base + HALF + cols[None, :], mask=row_ok[:, None], other=0.0)
    q_local = local0 + qi
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    k_head = k_ptr + kv.to(tl.int64) * stride_kh
    v_head = v_ptr + kv.to(tl.int64) * stride_vh
    sel_base = sel_ptr + first_head * stride_sh + sel_row * stride_sr
    vsel_base = vsel_ptr + first_head * stride_sh + sel_row * stride_sr
    dt = k_ptr.dtype.element_ty
    for slot in range(0, n_slots):
        # Keys sit rotated at their place inside their chunk; the slot's offset goes on the query, the same
        # angle for every query row.
        at = (n_slots - slot) * CHUNK
        c = tl.load(cos_ptr + at * HALF + cols)[None, :]
        s = tl.load(sin_ptr + at * HALF + cols)[None, :]
        a1 = q1.to(tl.float32)
        a2 = q2.to(tl.float32)
        r1 = (a1 * c - a2 * s).to(dt)
        r2 = (a2 * c + a1 * s).to(dt)
        kc = tl.load(sel_base + slot).to(tl.int64) * CHUNK
        vc = tl.load(vsel_base + slot).to(tl.int64) * CHUNK
        for j0 in range(0, CHUNK, BLOCK_N):
            j = j0 + offs_n
            m_i, l_i, acc = _block(
                r1,
                r2,
                m_i,
                l_i,
                acc,
                k_head,
                v_head,
                kc + j,
                vc + j,
                j < CHUNK,
                stride_kn,
                stride_vn,
                scale_log2,
                row_ok,
                HALF,
                D,
                PREC,
                False,
                j,
                q_local,
            )
    last_local = local0 + tl.minimum(n_rows, QM)
    r1 = q1.to(dt)
    r2 = q2.to(dt)
    for j0 in range(0, last_local, BLOCK_N):
        j = j0 + offs_n
        m_i, l_i, acc = _block(
            r1,
            r2,
            m_i,
            l_i,
            acc,
            k_head,
            v_head,
            own_k + j,
            own_v + j,
            j < last_local,
            stride_kn,
            stride_vn,
            scale_log2,
            row_ok,
            HALF,
            D,
            PREC,
            True,
            j,
            q_local,
        )
    acc = acc / l_i[:, None]
    dcols = tl.arange(0, D)
    o = out_ptr + head[:, None].to(tl.int64) * stride_oh + (row0 + qi)[:, None] * stride_on + dcols[None, :]
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def local_attention(
    q, keys, values, cos, sin, sel, vsel, vown, tiles, w, scaling, out, block_m, pack, warps, stages, block_n
):
    heads, _, d = q.shape
    kv_heads = keys.shape[0]
    groups = heads // kv_heads
    packed = kernels.heads_per_program(groups, pack)
    _local_kernel[(tiles.shape[1], kv_heads if packed > 1 else heads)](
        q,
        keys,
        values,
        out,
        cos,
        sin,
        sel,
        vsel,
        vown,
        tiles[0],
        tiles[1],
        tiles[2],
        tiles[3],
        tiles[4],
        q.stride(0),
        q.stride(1),
        keys.stride(0),
        keys.stride(1),
        values.stride(0),
        values.stride(1),
        out.stride(0),
        out.stride(1),
        sel.stride(0),
        sel.stride(1),
        vown.stride(0),
        sel.shape[2],
        groups,
        scaling * 1.4426950408889634,
        CHUNK=w,
        D=d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PACK=packed,
        IEEE=keys.dtype == torch.float32,
        num_warps=warps,
        num_stages=stages,
    )


def kernels_bench():
    p = piece()
    w, start, total = p.w, p.start, p.total
    qb = p.q.to(torch.bfloat16)
    # The layout under test: keys and queries rotated at their place inside their chunk.
    cos, sin = torch.cat([p.cos, p.cos], -1), torch.cat([p.sin, p.sin], -1)
    at = torch.arange(total, device=p.q.device) % w
    keys_loc = apply_rope(p.keys.float(), cos[at], sin[at]).to(torch.bfloat16)
    q_loc = apply_rope(p.q, cos[at[start:]], sin[at[start:]]).to(torch.bfloat16)
    out2 = torch.empty_like(p.out)
    t32 = tiles_for(p, 32)
    args = (p.q, p.keys, p.values, p.cos, p.sin, p.sel, p.sel, p.vown, t32, w, 0.088, p.out, 128, True)
    kernels.chunk_attention(*args)
    local_attention(q_loc, keys_loc, p.values, p.cos, p.sin, p.sel, p.sel, p.vown, t32, w, 0.088, out2, 128, True,
                    4, 2, 32)
    print("local vs current max diff", (p.out.float() - out2.float()).abs().max().item(), flush=True)
    base = timeit(lambda: kernels.chunk_attention(*args))
    print(f"current default: {base:.3f} ms {p.flops / base / 1e9:.0f} TFLOP/s", flush=True)
    res = []
    for block_m, block_n, warps, stages in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
        t = tiles_for(p, block_m // 4)
        try:
            ms = timeit(
                lambda t=t, bm=block_m, wp=warps, st=stages, bn=block_n: local_attention(
                    qb, p.keys, p.values, p.cos, p.sin, p.sel, p.sel, p.vown, t, w, 0.088, p.out, bm, True, wp, st, bn
                )
            )
        except Exception as exc:
            print(block_m, block_n, warps, stages, "failed", type(exc).__name__, flush=True)
            continue
        res.append((ms, block_m, block_n, warps, stages))
        print(
            f"local bm={block_m} bn={block_n} warps={warps} stages={stages}: {ms:.3f} ms "
            f"{p.flops / ms / 1e9:.0f} TFLOP/s",
            flush=True,
        )
    print("best local:", min(res), "vs current", base, flush=True)


def norm_bench():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    dev = "cuda"
    x = torch.randn(1, 4096, 4096, device=dev, dtype=torch.bfloat16)
    norm = LlamaRMSNorm(4096).to(dev, torch.bfloat16)
    eager = timeit(lambda: norm(x), 20)
    comp = torch.compile(norm.forward, dynamic=True)
    t0 = time.perf_counter()
    comp(x)
    torch.cuda.synchronize()
    ct = time.perf_counter() - t0
    c = timeit(lambda: comp(x), 20)
    ok = (comp(x) - norm(x)).abs().max().item()
    print(f"rmsnorm 4096x4096 eager {eager:.3f} ms compiled {c:.3f} ms (compile {ct:.1f}s, maxdiff {ok})", flush=True)
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336)
    mlp = LlamaMLP(cfg).to(dev, torch.bfloat16)
    e = timeit(lambda: mlp(x), 10)
    cm = torch.compile(mlp.forward, dynamic=True)
    cm(x)
    c2 = timeit(lambda: cm(x), 10)
    print(f"mlp eager {e:.3f} ms compiled {c2:.3f} ms", flush=True)
    q = torch.randn(1, 32, 4096, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, 8, 4096, 128, device=dev, dtype=torch.bfloat16)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ones = torch.ones(1, 4096, 128, device=dev, dtype=torch.bfloat16)
    r = timeit(lambda: apply_rotary_pos_emb(q, k, ones, ones * 0), 20)
    print(f"rotary (identity) q+k {r:.3f} ms", flush=True)
    qf = q[0].float()
    r2 = timeit(lambda: q[0].float(), 20)
    print(f"q.float() {r2:.3f} ms", flush=True)
    seg = torch.repeat_interleave(torch.arange(32, device=dev), 128)
    im = timeit(lambda: torch.zeros(32, 32, 128, device=dev).index_add_(1, seg, qf), 20)
    M = torch.zeros(32, 4096, device=dev)
    M[seg, torch.arange(4096, device=dev)] = 1 / 128
    mm = timeit(lambda: torch.matmul(M, qf), 20)
    print(f"row sums index_add {im:.3f} ms matmul {mm:.3f} ms", flush=True)


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    norm_bench()
    kernels_bench()
