"""Triton kernels of the GPU fast path: the cache's key store, chunk scores, attention over selected chunks.

All read the layer's cache in place ([kv_heads, tokens, head_dim] with any strides; keys rotated at their
place inside their chunk, see cache.LongHeadsLayer) and index key/value heads as query_head // groups, so
GQA never repeats the cache. The attention kernel applies the remapped positions itself: a selected chunk
in slot s sits at positions s*w.., the query's own chunk after the last slot, and since every key already
carries its offset inside its chunk, the remaining offset of a slot is one rotation of the query tile.
On Hopper the selected chunks' tiles arrive through tensor descriptors (the tensor memory accelerator).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _rope_halves(x1, x2, cos_ptr, sin_ptr, pos, HALF: tl.constexpr, direction: tl.constexpr):
    """Rotate rows given as two halves at positions `pos` [rows] (direction -1: back by that much); cos/sin
    tables are [P, HALF] (rotary tables repeat their first half, see rope.PositionTable.halves)."""
    cols = tl.arange(0, HALF)
    c = tl.load(cos_ptr + pos[:, None] * HALF + cols[None, :])
    s = tl.load(sin_ptr + pos[:, None] * HALF + cols[None, :]) * direction
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def _turn(q1, q2, cos_ptr, sin_ptr, at, HALF: tl.constexpr, dt: tl.constexpr):
    """The whole query tile turned on by `at` positions (one angle for every row), in the keys' dtype."""
    cols = tl.arange(0, HALF)
    c = tl.load(cos_ptr + at * HALF + cols)[None, :]
    s = tl.load(sin_ptr + at * HALF + cols)[None, :]
    return (q1 * c - q2 * s).to(dt), (q2 * c + q1 * s).to(dt)


@triton.jit
def _softmax_step(s, m_i, l_i):
    """Online softmax over one more tile of logits (base 2): new running max and sum, the factor that
    rescales what was accumulated, and the tile's weights."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), alpha, p


@triton.jit
def _attend_tile(q1, q2, m_i, l_i, acc, k_head, v_head, k_tok, v_tok, key_ok, stride_kn, stride_vn, scale_log2,
                 j, q_local, HALF: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, CAUSAL: tl.constexpr):
    """One key tile of the online softmax, loaded through pointers: the tile goes to the tensor cores as
    stored (in halves: on an H100 two products of half the head dimension ran faster here than one of the
    whole)."""
    cols = tl.arange(0, HALF)
    dcols = tl.arange(0, D)
    kp = k_head + k_tok[:, None] * stride_kn
    k1 = tl.load(kp + cols[None, :], mask=key_ok[:, None], other=0.0)
    k2 = tl.load(kp + HALF + cols[None, :], mask=key_ok[:, None], other=0.0)
    s = tl.dot(q1, tl.trans(k1), input_precision=PREC) + tl.dot(q2, tl.trans(k2), input_precision=PREC)
    s = s * scale_log2
    if CAUSAL:
        s = tl.where((j[None, :] <= q_local[:, None]) & key_ok[None, :], s, float("-inf"))
    m_i, l_i, alpha, p = _softmax_step(s, m_i, l_i)
    v = tl.load(v_head + v_tok[:, None] * stride_vn + dcols[None, :], mask=key_ok[:, None], other=0.0)
    return m_i, l_i, acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)


@triton.jit
def _attend_tile_tma(q1, q2, m_i, l_i, acc, k_desc, v_desc, k_row, v_row, scale_log2, HALF: tl.constexpr,
                     PREC: tl.constexpr):
    """The same for a whole tile of a selected chunk, loaded by the tensor memory accelerator."""
    k1 = k_desc.load([k_row, 0])
    k2 = k_desc.load([k_row, HALF])
    s = tl.dot(q1, tl.trans(k1), input_precision=PREC) + tl.dot(q2, tl.trans(k2), input_precision=PREC)
    m_i, l_i, alpha, p = _softmax_step(s * scale_log2, m_i, l_i)
    v = v_desc.load([v_row, 0])
    return m_i, l_i, acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)


@triton.jit
def _chunk_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cos_ptr, sin_ptr, sel_ptr, vsel_ptr, vown_ptr, k_desc, v_desc,
    tile_row_ptr, tile_len_ptr, tile_sel_ptr, tile_local_ptr, tile_own_k_ptr,
    stride_qh, stride_qn, stride_kh, stride_kn, stride_vh, stride_vn, stride_oh, stride_on,
    stride_sh, stride_sr, stride_vo, n_slots, groups, scale_log2, k_rows, v_rows,
    CHUNK: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr,
    IEEE: tl.constexpr, TMA: tl.constexpr,
):
    """One program: one query tile of one KV head's PACK query heads (rows = head-major, BLOCK_M // PACK
    queries each), when those heads share their chunks; with PACK == 1, one query head."""
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
    local0 = tl.load(tile_local_ptr + tile)  # position of the tile's first query inside its own chunk
    own_k = tl.load(tile_own_k_ptr + tile).to(tl.int64)  # token of the own chunk's first key
    own_v = tl.load(vown_ptr + first_head * stride_vo + sel_row).to(tl.int64)

    row_ok = (qi < n_rows) & (head < (tl.program_id(1) + 1) * groups)
    cols = tl.arange(0, HALF)
    q_base = q_ptr + head[:, None].to(tl.int64) * stride_qh + (row0 + qi)[:, None] * stride_qn
    q1 = tl.load(q_base + cols[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(q_base + HALF + cols[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    # Queries at their place inside their chunk, like the cached keys: the own chunk needs nothing more.
    q_local = local0 + qi
    q1, q2 = _rope_halves(q1, q2, cos_ptr, sin_ptr, tl.where(row_ok, q_local, 0), HALF, 1.0)
    dt = k_ptr.dtype.element_ty

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    k_head = k_ptr + kv.to(tl.int64) * stride_kh
    v_head = v_ptr + kv.to(tl.int64) * stride_vh
    sel_base = sel_ptr + first_head * stride_sh + sel_row * stride_sr
    vsel_base = vsel_ptr + first_head * stride_sh + sel_row * stride_sr
    if TMA:
        # One loop over every key tile of the selected chunks, so that Triton pipelines loads across chunks
        # (nested, its pipeline restarts every CHUNK // BLOCK_N tiles); the query tile is turned per tile.
        TILES: tl.constexpr = CHUNK // BLOCK_N
        for t in range(0, n_slots * TILES):
            slot = t // TILES
            r1, r2 = _turn(q1, q2, cos_ptr, sin_ptr, (n_slots - slot) * CHUNK, HALF, dt)
            j0 = (t % TILES) * BLOCK_N
            m_i, l_i, acc = _attend_tile_tma(r1, r2, m_i, l_i, acc, k_desc, v_desc,
                                             kv * k_rows + tl.load(sel_base + slot) * CHUNK + j0,
                                             kv * v_rows + tl.load(vsel_base + slot) * CHUNK + j0, scale_log2,
                                             HALF, PREC)
    else:
        for slot in range(0, n_slots):
            # A chunk in slot s sits (n_slots - s) chunks before the own chunk: one angle turns the whole
            # query tile to it, and its key tiles need no rotation.
            r1, r2 = _turn(q1, q2, cos_ptr, sin_ptr, (n_slots - slot) * CHUNK, HALF, dt)
            k0 = tl.load(sel_base + slot).to(tl.int64) * CHUNK
            v0 = tl.load(vsel_base + slot).to(tl.int64) * CHUNK
            for j0 in range(0, CHUNK, BLOCK_N):
                j = j0 + offs_n
                m_i, l_i, acc = _attend_tile(r1, r2, m_i, l_i, acc, k_head, v_head, k0 + j, v0 + j, j < CHUNK,
                                             stride_kn, stride_vn, scale_log2, j, q_local, HALF, D, PREC, False)
    last_local = local0 + tl.minimum(n_rows, QM)  # own-chunk keys the tile's last query sees
    r1 = q1.to(dt)
    r2 = q2.to(dt)
    for j0 in range(0, last_local, BLOCK_N):
        j = j0 + offs_n
        m_i, l_i, acc = _attend_tile(r1, r2, m_i, l_i, acc, k_head, v_head, own_k + j, own_v + j, j < last_local,
                                     stride_kn, stride_vn, scale_log2, j, q_local, HALF, D, PREC, True)

    acc = acc / l_i[:, None]
    dcols = tl.arange(0, D)
    o = out_ptr + head[:, None].to(tl.int64) * stride_oh + (row0 + qi)[:, None] * stride_on + dcols[None, :]
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def heads_per_program(groups: int, pack: bool) -> int:
    """Query heads one attention program serves: a KV group padded to a power of two when packed, else 1.
    A tile then holds block_m // heads_per_program queries."""
    return triton.next_power_of_2(groups) if pack and groups > 1 else 1


def _row_descriptor(t: torch.Tensor, block: list[int]) -> tuple[TensorDescriptor, int] | None:
    """A tensor descriptor over a [kv_heads, tokens, d] cache seen as rows of d (head h's token i at row
    h * rows_per_head + i) and rows_per_head; None when its layout does not allow one."""
    heads, tokens, d = t.shape
    if (t.stride(2) != 1 or t.stride(0) % t.stride(1) or (t.stride(1) * t.element_size()) % 16
            or t.data_ptr() % 16):
        return None
    per_head = t.stride(0) // t.stride(1)
    return TensorDescriptor(t, [(heads - 1) * per_head + tokens, d], [t.stride(1), 1], block), per_head


def tensor_memory_accelerator(device: torch.device) -> bool:
    """Whether tiles may be loaded through tensor descriptors: Hopper or newer, or Triton's CPU interpreter
    (so that tests without a GPU run the path an H100 takes)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return os.environ.get("TRITON_INTERPRET") == "1"


def chunk_attention(q_pre: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, sel: torch.Tensor, vsel: torch.Tensor, vown: torch.Tensor,
                    tiles: torch.Tensor, chunk_size: int, scaling: float, out: torch.Tensor, block_m: int,
                    pack: bool, num_warps: int | None = None, num_stages: int = 2,
                    block_n: int | None = None, tma: bool | None = None) -> torch.Tensor:
    """Attention of query tiles over their selected chunks, then their own chunk (causal).

    q_pre [heads, n, d] without rotary positions; keys [kv_heads, tokens, d] as the cache stores them (rotated
    at their place inside their chunk), values [kv_heads, tokens, d], both read in place; cos/sin
    [positions, d/2] float32; sel/vsel [heads, rows, slots] int32 chunk ids of keys and of values (they
    differ when values come from an offload staging buffer); vown [heads, rows] int32 token of each row's own
    chunk's first value; tiles [5, n_tiles] int32: first query row, queries, selection row, position of the
    first query in its chunk, the own chunk's first key token. pack: the heads of a KV group share their
    selections, so one program serves them all and reads each key tile once (tiles then hold at most
    block_m // next_pow2(groups) queries). tma: load the selected chunks' tiles through tensor descriptors
    (None: where `tensor_memory_accelerator` says so and the cache's layout allows).
    """
    heads, _, d = q_pre.shape
    kv_heads = keys.shape[0]
    groups = heads // kv_heads
    n_tiles = tiles.shape[1]
    ieee = keys.dtype == torch.float32
    packed = heads_per_program(groups, pack)
    # Defaults from an H100 sweep (benchmarks/kernel_sweep.py): 128 x 128 tiles and 8 warps for
    # half-precision blocks (0.75 ms a 4096-query piece of Llama-3-8B with tensor descriptors, 0.90-0.93
    # through pointers); float32 and single-token rows need smaller tiles.
    big = block_m >= 128 and not ieee
    block_n = block_n or min(chunk_size, 128 if big else 32)
    descriptors = None
    if tma or (tma is None and tensor_memory_accelerator(keys.device)):
        k, v = _row_descriptor(keys, [block_n, d // 2]), _row_descriptor(values, [block_n, d])
        if k and v:
            descriptors = k, v
        elif tma:
            raise ValueError("chunk_attention(tma=True) needs caches whose rows are 16-byte aligned")
    (k_desc, k_rows), (v_desc, v_rows) = descriptors or ((keys, 0), (values, 0))
    _chunk_attention_kernel[(n_tiles, kv_heads if packed > 1 else heads)](
        q_pre, keys, values, out, cos, sin, sel, vsel, vown, k_desc, v_desc,
        tiles[0], tiles[1], tiles[2], tiles[3], tiles[4],
        q_pre.stride(0), q_pre.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        out.stride(0), out.stride(1), sel.stride(0), sel.stride(1), vown.stride(0), sel.shape[2], groups,
        scaling * 1.4426950408889634, k_rows, v_rows,
        CHUNK=chunk_size, D=d, BLOCK_M=block_m, BLOCK_N=block_n, PACK=packed, IEEE=ieee, TMA=descriptors is not None,
        num_warps=num_warps or (8 if big else 4), num_stages=num_stages,
    )
    return out


@triton.jit
def _chunk_maxlogit_kernel(
    q_ptr, k_ptr, out_ptr, cos_ptr, sin_ptr, stride_qk, stride_qm, stride_kh, stride_kn, stride_ok, stride_om,
    m_rows, CHUNK: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    chunk = tl.program_id(0)
    kv = tl.program_id(1)
    mblk = tl.program_id(2)
    HALF: tl.constexpr = D // 2
    PREC: tl.constexpr = "ieee" if IEEE else "tf32"
    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HALF)
    q_base = q_ptr + kv * stride_qk + rows[:, None] * stride_qm
    q1 = tl.load(q_base + cols[None, :], mask=rows[:, None] < m_rows, other=0.0)
    q2 = tl.load(q_base + HALF + cols[None, :], mask=rows[:, None] < m_rows, other=0.0)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for j0 in range(0, CHUNK, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        kp = k_ptr + kv * stride_kh + (chunk.to(tl.int64) * CHUNK + j)[:, None] * stride_kn
        k1 = tl.load(kp + cols[None, :]).to(tl.float32)
        k2 = tl.load(kp + HALF + cols[None, :]).to(tl.float32)
        # Back from the key's place inside its chunk to no position at all (the query carries the distance).
        k1, k2 = _rope_halves(k1, k2, cos_ptr, sin_ptr, j, HALF, -1.0)
        s = tl.dot(q1, tl.trans(k1.to(q1.dtype)), input_precision=PREC)
        s += tl.dot(q2, tl.trans(k2.to(q2.dtype)), input_precision=PREC)
        best = tl.maximum(best, tl.max(s, 1))
    tl.store(out_ptr + kv * stride_ok + rows * stride_om + chunk, best, mask=rows < m_rows)


def chunk_maxlogit(queries: torch.Tensor, keys: torch.Tensor, n_chunks: int, chunk_size: int, cos: torch.Tensor,
                   sin: torch.Tensor, block_n: int = 32, num_warps: int = 4, num_stages: int = 1) -> torch.Tensor:
    """Best logit of each query against each chunk's keys, keys read once per chunk.

    queries [kv_heads, m, d] (already rotated to the scoring distance, in the keys' dtype); keys
    [kv_heads, tokens, d] as cached (rotated inside their chunk: undone here by cos/sin [chunk_size, d/2]).
    Returns float32 [kv_heads, m, n_chunks].
    """
    kv_heads, m, d = queries.shape
    out = torch.empty(kv_heads, m, n_chunks, device=queries.device, dtype=torch.float32)
    if n_chunks == 0 or m == 0:
        return out
    ieee = keys.dtype == torch.float32
    block_m = max(16, min(64 if ieee else 128, triton.next_power_of_2(m)))
    grid = (n_chunks, kv_heads, triton.cdiv(m, block_m))
    _chunk_maxlogit_kernel[grid](
        queries, keys, out, cos, sin, queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1),
        out.stride(0), out.stride(1), m,
        # Defaults from an H100 sweep (benchmarks/kernel_sweep.py): 0.10 ms for 128 queries against 384
        # chunks (keys read at 2 TB/s); deeper pipelines were slower.
        CHUNK=chunk_size, D=d, BLOCK_M=block_m, BLOCK_N=min(chunk_size, block_n), IEEE=ieee,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


@triton.jit
def _gather_chunks_kernel(src_ptr, dst_ptr, order_ptr, length, stride_sh, stride_sn, stride_dh, stride_dn, stride_oh,
                          CHUNK: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    slot = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    chunk = tl.load(order_ptr + head * stride_oh + slot).to(tl.int64)
    cols = tl.arange(0, D)[None, :]
    for j0 in range(0, CHUNK, BLOCK):
        tok = j0 + tl.arange(0, BLOCK)
        src_tok = chunk * CHUNK + tok
        x = tl.load(src_ptr + head * stride_sh + src_tok[:, None] * stride_sn + cols, mask=(src_tok < length)[:, None],
                    other=0.0)
        tl.store(dst_ptr + head * stride_dh + (slot * CHUNK + tok)[:, None].to(tl.int64) * stride_dn + cols, x)


def gather_chunks(src: torch.Tensor, order: torch.Tensor, chunk_size: int, device: torch.device) -> torch.Tensor:
    """out[h, i*w:(i+1)*w] = chunk order[h, i] of src[h] for a cache src [kv_heads, tokens, d], on `device`.

    src may be in pinned CPU memory: the GPU then reads it in place over the bus (CUDA maps pinned memory into
    its address space), only the chunks asked for, queued behind the stores into it and with no work on the
    host. Tokens past the end of src read as zeros. order [kv_heads, width] int on `device`."""
    kv_heads, length, d = src.shape
    width = order.shape[1]
    out = torch.empty(kv_heads, width * chunk_size, d, dtype=src.dtype, device=device)
    if width:
        _gather_chunks_kernel[(width, kv_heads)](
            src, out, order, length, src.stride(0), src.stride(1), out.stride(0), out.stride(1), order.stride(0),
            CHUNK=chunk_size, D=d, BLOCK=min(chunk_size, 64), num_warps=4,
        )
    return out


@triton.jit
def _store_keys_kernel(src_ptr, dst_ptr, cos_ptr, sin_ptr, start, n, stride_sh, stride_sn, stride_dh, stride_dn,
                       CHUNK: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr):
    tok = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    head = tl.program_id(1).to(tl.int64)
    ok = (tok < n)[:, None]
    cols = tl.arange(0, HALF)[None, :]
    src = src_ptr + head * stride_sh + tok[:, None].to(tl.int64) * stride_sn + cols
    x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
    x1, x2 = _rope_halves(x1, x2, cos_ptr, sin_ptr, (start + tok) % CHUNK, HALF, 1.0)
    dst = dst_ptr + head * stride_dh + (start + tok)[:, None].to(tl.int64) * stride_dn + cols
    tl.store(dst, x1.to(dst_ptr.dtype.element_ty), mask=ok)
    tl.store(dst + HALF, x2.to(dst_ptr.dtype.element_ty), mask=ok)


def store_keys(keys: torch.Tensor, cache: torch.Tensor, start: int, chunk_size: int, cos: torch.Tensor,
               sin: torch.Tensor) -> None:
    """cache[:, start:start+n] = keys [kv_heads, n, d] rotated at their place inside their chunk, in one pass
    (the cache's layout, see cache.LongHeadsLayer); cos/sin [chunk_size, d/2] float32."""
    kv_heads, n, d = keys.shape
    block = 64
    _store_keys_kernel[(triton.cdiv(n, block), kv_heads)](
        keys, cache, cos, sin, start, n, keys.stride(0), keys.stride(1), cache.stride(0), cache.stride(1),
        CHUNK=chunk_size, HALF=d // 2, BLOCK=block, num_warps=4,
    )
