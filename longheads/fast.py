"""The GPU fast path for queries beyond the attention length.

Both paths share the selection rows of a forward call (one per chunk-sized block of queries, one per tail
token) and their chunk scores (one pass over the keys for all rows; here a Triton kernel). The reference
(attention.py) then selects and attends row by row in Python; here selection is a handful of batched tensor
ops (the question's votes are a cumulative sum over its tokens) and one kernel attends each row's query
tiles to its chunks in place. The arithmetic is the reference's, so both pick the same chunks up to float
ties.
"""

from __future__ import annotations

import torch

from .selection import CONSENSUS_WEIGHT, Rows, head_sum, top_indices


def supports(chunk_size: int, head_dim: int) -> bool:
    """Shapes the kernels handle: power-of-two chunk (>= 16) and head dimension (>= 32)."""
    return all(n >= lo and n & (n - 1) == 0 for n, lo in ((chunk_size, 16), (head_dim, 32)))


def available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from . import kernels  # noqa: F401
    except ImportError:  # triton missing: the reference path still works
        return False
    return True


def chunk_maxlogit(queries: torch.Tensor, keys: torch.Tensor, n_chunks: int, chunk_size: int, cos: torch.Tensor,
                   sin: torch.Tensor) -> torch.Tensor:
    """`selection.score_rows` as one Triton kernel (keys read once per chunk); cos/sin [w, d/2], the first
    rows of `rope.PositionTable.halves`."""
    from . import kernels

    return kernels.chunk_maxlogit(queries, keys, n_chunks, chunk_size, cos, sin)


def _pool(layer, scores: torch.Tensor, n_blocks: int, k: int, current: torch.Tensor, last_current: int,
          scope: str, ranks: int = 1) -> torch.Tensor:
    """The reference's `_pool_votes` for all tail rows (rows n_blocks..) at once: votes accumulate over the
    tail in order, as a cumulative sum."""
    idx = slice(n_blocks, None)
    raw = scores[:, idx]  # [heads, m, C]; columns at or beyond a row's current chunk are -inf
    heads, m, n_chunks = raw.shape
    previous = layer.votes
    done = 0 if previous is None else layer.vote_tokens
    layer.vote_tokens = done + m
    valid = torch.arange(n_chunks, device=raw.device) < current[idx][:, None]
    base = torch.zeros(heads, n_chunks, device=raw.device, dtype=raw.dtype)
    if previous is not None:
        base[:, : previous.shape[1]] = previous[:, :n_chunks]
    top = top_indices(raw, min(k, n_chunks))
    own = torch.zeros_like(raw).scatter_(2, top, 1.0)
    ballots = own.cumsum(1) + base[:, None]
    last = ballots[:, -1]
    heads *= ranks  # every rank's, under tensor parallelism (selection.head_sum)
    if scope != "head":
        tokens = torch.arange(done + 1, done + m + 1, device=raw.device, dtype=raw.dtype)
        ballots = head_sum(ballots, ranks) / heads / tokens[:, None]
    if scope == "model":
        sequence = layer.sequence
        tally = head_sum(own, ranks)[0].cumsum(0)  # [m, C]: this layer's ballots up to each row
        if sequence.tally is not None:
            tally[:, : sequence.tally.shape[0]] += sequence.tally[:n_chunks].to(tally.device)  # see _pool_votes
        voters = sequence.voters + heads * torch.arange(1, m + 1, device=raw.device, dtype=raw.dtype)
        sequence.tally, sequence.voters = tally[-1], sequence.voters + heads * m
        ballots = ballots + tally / voters[:, None]
    if scope != "head":
        ballots = ballots * CONSENSUS_WEIGHT
    layer.votes = last[:, :last_current]
    out = scores.clone()
    out[:, idx] = torch.where(valid, ballots + torch.softmax(raw, dim=-1), float("-inf"))
    return out


def _choose(scores: torch.Tensor, rows: Rows, cfg, groups: int) -> torch.Tensor:
    """`selection.choose_chunks` for many rows: scores [heads, R, C] -> chunk ids [heads, R, slots-1]."""
    heads, n_rows, n_chunks = scores.shape
    device = scores.device
    # The masks and the always-kept chunks depend on the rows only: made once per call, for every layer.
    candidate, fixed = (_layout(rows, cfg, n_chunks, device, name) for name in ("candidate", "fixed"))
    cand = torch.where(candidate, scores, float("-inf"))
    if groups > 1:
        cand = cand.view(heads // groups, groups, n_rows, n_chunks).sum(1).repeat_interleave(groups, 0)
    top = top_indices(cand, cfg.selected_chunks)
    return torch.cat([fixed.expand(heads, -1, -1), top], -1).sort(-1).values


def _layout(rows: Rows, cfg, n_chunks: int, device: torch.device, name: str) -> torch.Tensor:
    """One of `_row_layout`'s tensors on `device`, made once per forward call."""
    return rows.on(device, f"{name} {n_chunks}", lambda: _row_layout(rows, cfg, n_chunks)[name])


def _row_layout(rows: Rows, cfg, n_chunks: int) -> dict[str, torch.Tensor]:
    """On the CPU: which chunks each row may select (after the sink, before the recent ones) and the ids of
    the chunks it always reads."""
    current = rows.starts // cfg.chunk_size
    hi = (current - cfg.recent_chunks)[:, None]
    col = torch.arange(n_chunks)
    fixed = torch.cat([torch.arange(cfg.sink_chunks).expand(len(current), -1), hi + torch.arange(cfg.recent_chunks)], 1)
    return {"candidate": (col >= cfg.sink_chunks) & (col < hi), "fixed": fixed,
            "valid": col < current[:, None]}


def _tiles(row_start: torch.Tensor, row_end: torch.Tensor, rows: torch.Tensor, start: int, w: int,
           block_m: int) -> torch.Tensor:
    """Split rows into query tiles of at most block_m queries: [5, tiles] (see kernels.chunk_attention).
    Built on the CPU, where the row bounds are."""
    lengths = row_end - row_start
    per_row = -(-lengths // block_m)
    row_of = torch.repeat_interleave(rows, per_row[rows])
    first_tile = torch.cumsum(per_row[rows], 0) - per_row[rows]
    t = torch.arange(len(row_of)) - torch.repeat_interleave(first_tile, per_row[rows])
    q0 = row_start[row_of] + t * block_m
    n = torch.minimum(lengths[row_of] - t * block_m, torch.full_like(q0, block_m))
    own = (row_start[row_of] // w) * w
    return torch.stack([q0 - start, n, row_of, q0 - own, own]).to(torch.int32).contiguous()


def attend_rows(layer, state, q_pre: torch.Tensor, start: int, rows: Rows, scores: torch.Tensor, scaling: float,
                out: torch.Tensor) -> None:
    """Select chunks for every row at once and fill `out` for the rows' queries with one kernel launch per
    kind of row (blocks, tail tokens). q_pre [heads, n, d] (any float dtype) without rotary positions, positions
    start..; scores [heads, rows, chunks] from `attention.row_scores`."""
    from . import kernels

    cfg = state.config
    w, device = cfg.chunk_size, q_pre.device
    heads = q_pre.shape[0]
    groups = state.num_heads // state.num_kv_heads
    n_rows, n_chunks, n_blocks = scores.shape[1], scores.shape[2], rows.n_blocks
    current = rows.on(device, "current", lambda: rows.starts // w)
    if n_blocks < n_rows:  # the question's tokens pool their votes
        valid = _layout(rows, cfg, n_chunks, device, "valid")
        scores = _pool(layer, torch.where(valid, scores, float("-inf")), n_blocks, cfg.ballot_size, current,
                       n_chunks, cfg.vote_scope, state.ranks)
    sel = _choose(scores, rows, cfg, groups).to(torch.int32).contiguous()
    layer.last_selection = torch.cat([sel[:, -1].long(), current[-1].expand(heads, 1)], 1)

    keys = layer.keys_on(device)[0]
    vown = rows.on(device, f"vown {heads}",
                   lambda: (rows.starts // w * w).to(torch.int32).expand(heads, -1).contiguous())
    values, vsel = layer.values[0], sel
    if values.device != device and n_blocks:
        values, vsel, vown = _stage_values(layer, sel, vown, current, w, groups, device)
    # Otherwise offloaded values stay where they are: token rows alone (decoding) read their few chunks from
    # pinned memory in place, over the bus, without a staging copy or a wait for the host.
    tma = None if values.device == device else False
    half_cos, half_sin = state.table.halves(device)
    pack = groups > 1  # heads that share keys read the same chunks: one program serves the group
    for kind, which, block_m in (("blocks", torch.arange(n_blocks), 128 if keys.dtype != torch.float32 else 64),
                                 ("tail", torch.arange(n_blocks, n_rows), 16)):
        if len(which) == 0:
            continue
        queries_per_tile = block_m // kernels.heads_per_program(groups, pack)
        tiles = rows.on(device, f"{kind} tiles {queries_per_tile}",
                        lambda which=which, q=queries_per_tile: _tiles(rows.starts, rows.ends, which, start, w, q))
        kernels.chunk_attention(q_pre, keys, values, half_cos, half_sin, sel, vsel, vown, tiles, w, scaling, out,
                                block_m, pack, tma=tma)


def copy_heads(src: torch.Tensor, dst: torch.Tensor, start: int = 0) -> None:
    """dst[h, start:] = src[h, start:] for every KV head of a cache slice [kv_heads, tokens, d], between pinned
    memory and the GPU without blocking. One copy per head: each is contiguous in the cache's buffer, while the
    slice of all heads is not, and a strided copy would go through pageable memory (a host copy, then a
    blocking one)."""
    for h in range(src.shape[0]):
        dst[h, start:].copy_(src[h, start:], non_blocking=True)


def heads_to(src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of the cache slice src [kv_heads, tokens, d] on `device`, made by `copy_heads`."""
    out = torch.empty(src.shape, dtype=src.dtype, device=device)
    copy_heads(src, out)
    return out


def _stage_values(layer, sel: torch.Tensor, vown: torch.Tensor, current: torch.Tensor, w: int,
                  groups: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring the layer's offloaded values to the GPU: each KV head's selected and own chunks (gathered by the GPU
    from pinned memory), or the whole layer when that is most of it (pinned copies are faster than a large
    gather). Returns the staged values [kv_heads, tokens, d] and the chunk ids (vsel) and own-chunk tokens (vown)
    to read them by; for the whole layer, `sel` and `vown` as given."""
    from . import kernels

    values = layer.values[0]
    kv_heads, length, _ = values.shape
    heads, n_rows, _ = sel.shape
    n_chunks = -(-length // w)
    kv_of = torch.arange(heads, device=device) // groups
    need = torch.zeros(kv_heads, n_chunks, dtype=torch.bool, device=device)
    need[kv_of[:, None, None].expand_as(sel), sel.long()] = True
    need[kv_of[:, None].expand(-1, n_rows), current[None].expand(heads, -1)] = True
    width = int(need.sum(1).max())
    if 2 * width >= n_chunks:
        return heads_to(values, device), sel, vown
    # Per KV head, its needed chunks first (in order), then padding.
    order = torch.sort((~need).to(torch.int8), dim=1, stable=True).indices[:, :width]
    lut = torch.zeros(kv_heads, n_chunks, dtype=torch.long, device=device)
    lut.scatter_(1, order, torch.arange(width, device=device).expand(kv_heads, -1))
    staged = kernels.gather_chunks(values, order, w, device)  # [kv_heads, width*w, d]
    vsel = lut[kv_of[:, None, None], sel.long()].to(torch.int32)
    vown = (lut[kv_of[:, None], current[None].expand(heads, -1)] * w).to(torch.int32)
    return staged, vsel.contiguous(), vown.contiguous()
