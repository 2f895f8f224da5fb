"""The LongHeads attention function, registered in transformers' attention interface as "longheads".

Queries at positions below the attention length read the whole prefix (the model is unchanged there).
Beyond it, every query block of one chunk, and each of the last `tail_tokens` queries of a call on its
own, picks chunks per head (selection.py), and attends to them laid out contiguously from position 0,
followed by its own chunk, so every relative distance stays below the attention length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import fast
from .cache import BeamLayerState, LongHeadsLayer, SequenceState, layer_of
from .config import LongHeadsConfig
from .rope import PositionTable, apply_rope
from .selection import (
    CONSENSUS_WEIGHT,
    Rows,
    choose_chunks,
    head_sum,
    paper_representation,
    row_means,
    score_maxlogit,
    score_rows,
    selection_rows,
    top_indices,
)


@dataclass
class ModelState:
    """What `enable` attaches to a model as `model.longheads`."""

    config: LongHeadsConfig
    rotary: torch.nn.Module
    table: PositionTable
    num_heads: int  # this rank's, under tensor parallelism
    num_kv_heads: int
    ranks: int = 1  # tensor-parallel ranks the heads are sharded over
    # Only for calls without a LongHeadsCache, whose layers are rebuilt at every call: a LongHeadsCache holds
    # its own sequence's state, so that several caches (engines, questions) can share one model.
    uncached: SequenceState = field(default_factory=SequenceState)


@torch.compiler.disable  # selection branches on lengths and launches its own kernels: never inside a graph
def longheads_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs) -> tuple[torch.Tensor, None]:
    state: ModelState = module.longheads_state
    layer = layer_of(key)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if layer is not None and layer.beams is not None:  # LongHeadsCache.begin_beams: one token per beam
        return _attend_beams(layer, state, query, scaling).transpose(1, 2), None
    if query.shape[0] != 1:
        raise ValueError("LongHeads attention takes one sequence (batch size 1), or the beams of a LongHeadsCache "
                         "after begin_beams.")
    if layer is None:
        # A cache other than LongHeadsCache (or none): rebuild the layer state from the full key/value.
        layer = LongHeadsLayer(state.config.chunk_size, table=state.table,
                               use_kernels=state.config.backend != "reference")
        layer.sequence = state.uncached
        layer.update(key, value)
    if query.shape[2] > 1 and getattr(module, "layer_idx", 0) == 0:
        layer.sequence.tally, layer.sequence.voters = None, 0  # a new prompt (or piece): the tally starts afresh
    if layer.next_layer is not None:  # LongHeadsConfig.offload_keys: overlap the next layer's copy with this one
        layer.next_layer.prefetch_keys(query.device)
    out = _attend(layer, state, query[0], scaling)
    layer.drop_device_keys()  # offloaded keys leave the GPU with their layer (LongHeadsConfig.offload_keys)
    return out.transpose(0, 1)[None], None


def _attend(layer: LongHeadsLayer, state: ModelState, query: torch.Tensor, scaling: float) -> torch.Tensor:
    """query: [heads, n, d] without rotary positions (patch.Unrotated), the last n of the layer's tokens.
    -> [heads, n, d]."""
    cfg = state.config
    w, budget = cfg.chunk_size, cfg.attention_length
    heads, n, d = query.shape
    total = layer.length
    start = total - n
    device = query.device
    if cfg.selection == "paper":
        _update_representations(layer, state, query.float(), scaling)

    # Token-major storage, so that the [1, n, heads, d] the attention module wants is a free transpose.
    out = torch.empty(n, heads, d, dtype=query.dtype, device=device).transpose(0, 1)
    plain_end = min(total, budget)
    if start < plain_end:
        cos, sin = state.table.get(device)
        q_rot = apply_rope(query[:, : plain_end - start].float(), cos[start:plain_end], sin[start:plain_end])
        out[:, : plain_end - start] = _full_attention(layer, state, q_rot.to(query.dtype), start, scaling)
        if plain_end == total:
            layer.last_selection = _all_chunks(total - 1, cfg, heads, device)
    tail = cfg.tail_tokens if getattr(layer, "tail_enabled", True) else 0
    per_token_from = max(total - (tail if n > 1 else 1), plain_end)
    if n > 1:
        layer.votes = None  # a new prompt (or piece): the question's pooled scores start afresh
    first = max(start, plain_end)
    if first >= total:
        return out
    kernels = use_fast_path(cfg, device, d) and state.table.halves(device) is not None
    rows = _call_rows(layer.sequence, w, start, first, per_token_from, total)
    scores = row_scores(layer, state, query, start, rows, kernels)
    if kernels:
        fast.attend_rows(layer, state, query, start, rows, scores, scaling, out)
        return out
    groups = state.num_heads // state.num_kv_heads
    layer.wait_stores()  # the rows below gather offloaded keys or values on the host
    for r, (a, b) in enumerate(zip(rows.starts.tolist(), rows.ends.tolist(), strict=True)):
        current = a // w
        row = scores[:, r, :current]
        if r >= rows.n_blocks:
            row = _pool_votes(layer, row, cfg.ballot_size, cfg.vote_scope, state.ranks)
        chunks = choose_chunks(row, current, cfg, groups).to(device)
        q_row = query[:, a - start : b - start].float()
        out[:, a - start : b - start] = _chunk_attention(layer, state, q_row[None], a, chunks[None], scaling)[0]
    layer.last_selection = torch.cat([chunks, torch.full_like(chunks[:, :1], current)], dim=1)
    return out


def batches_beams(cfg: LongHeadsConfig, device: torch.device, head_dim: int) -> bool:
    """Whether beams decode in one forward call per step (`_attend_beams`, on the PyTorch path); on the Triton
    path they take turns, one call each."""
    return cfg.selection == "maxlogit" and not use_fast_path(cfg, device, head_dim)


def _attend_beams(layer: LongHeadsLayer, state: ModelState, query: torch.Tensor, scaling: float) -> torch.Tensor:
    """query [beams, heads, 1, d]: one token of each beam after the shared prompt -> [beams, heads, 1, d].

    Each beam selects as `_attend` selects for a sequence of its own, with its own votes; the chunks of the shared
    prompt are scored for every beam in one pass over their keys."""
    cfg = state.config
    w, budget = cfg.chunk_size, cfg.attention_length
    beams, heads, n, d = query.shape
    if n != 1:
        raise ValueError("beams take one token each per call")
    device = query.device
    total = layer.get_seq_length()
    pos = total - 1
    out = torch.empty_like(query)
    if total <= budget:  # every query reads the whole prefix, as in `_full_attention`
        cos, sin = state.table.get(device)
        q = apply_rope(query.float(), cos[pos : pos + 1], sin[pos : pos + 1]).to(query.dtype)
        starts = chunk_starts(total, w, device)
        mask = torch.ones(1, total, dtype=torch.bool, device=device)  # as `_full_attention`'s, for the same kernel
        for b, beam in enumerate(layer.beams):
            k, v = layer.beam_keys(b, 0, total)
            k = apply_rope(k.float(), cos[starts], sin[starts]).to(query.dtype)
            out[b] = F.scaled_dot_product_attention(q[b : b + 1], k[None], v[None], attn_mask=mask, scale=scaling,
                                                    enable_gqa=heads != k.shape[0])[0]
            beam.last_selection = _all_chunks(pos, cfg, heads, device)
        return out
    current = pos // w
    shared = min(current, layer.length // w)  # chunks held whole by the shared prompt
    queries = query[:, :, 0].transpose(0, 1).float()  # [heads, beams, d]: each row one token (row_means)
    scores = chunk_scores(layer, state, queries, shared, device)
    rotation = state.table.rotation(w, device)
    cos, sin = (t[:w] for t in state.table.get(device))
    groups = state.num_heads // state.num_kv_heads
    layer.wait_stores()
    pooled = []
    for b, beam in enumerate(layer.beams):
        row = scores[:, b]
        if current > shared:  # chunks that hold this beam's own tokens; turned back as `position_free_keys` does
            keys, _ = layer.beam_keys(b, shared * w, current * w)
            own = score_maxlogit(queries[:, b : b + 1], keys, current - shared, w, rotation, cos, sin, score_rows)
            row = torch.cat([row, own[:, 0]], -1)
        pooled.append(_pool_votes(beam, row, cfg.ballot_size, cfg.vote_scope, state.ranks))
    # Every beam's heads at once: each row selects alone, and a KV group's rows stay next to each other.
    chunks = choose_chunks(torch.cat(pooled), current, cfg, groups).to(device).view(beams, heads, -1)
    out = _chunk_attention(layer, state, query.float(), pos, chunks, scaling, beams=True)
    for beam, picked in zip(layer.beams, chunks, strict=True):
        beam.last_selection = torch.cat([picked, torch.full_like(picked[:, :1], current)], dim=1)
    return out.to(query.dtype)


def _call_rows(sequence: SequenceState, w: int, start: int, first: int, per_token_from: int, total: int) -> Rows:
    """The selection rows of this forward call: every layer of a call has the same, so the first layer
    makes them and the others reuse them (with their device copies)."""
    key = (start, first, per_token_from, total, w)
    if sequence.rows is None or sequence.rows[0] != key:
        sequence.rows = (key, selection_rows(first, per_token_from, total, w))
    return sequence.rows[1]


def row_scores(layer: LongHeadsLayer, state: ModelState, q_pre: torch.Tensor, start: int, rows: Rows,
               kernels: bool = False) -> torch.Tensor:
    """Chunk scores [heads, rows, chunks] (float32) of every selection row's mean query; columns at or past a
    row's own chunk are meaningless. One pass over the keys serves every row of the call (the Triton scorer
    with `kernels`)."""
    cfg = state.config
    queries = row_means(q_pre, rows, start)
    n_chunks = int(rows.starts[-1]) // cfg.chunk_size  # rows ascend: the last row's own chunk is the largest
    if cfg.selection == "paper":
        return torch.einsum("hrd,hcd->hrc", queries.to(layer.reps.dtype), layer.reps[:, :n_chunks]).float()
    return chunk_scores(layer, state, queries, n_chunks, q_pre.device, kernels)


def chunk_scores(layer: LongHeadsLayer, state: ModelState, queries: torch.Tensor, n_chunks: int,
                 device: torch.device, kernels: bool = False) -> torch.Tensor:
    """Best-key scores [heads, rows, n_chunks] of the layer's first n_chunks chunks for float32 queries
    [heads, rows, d] without positions, the layer's keys read for `device`."""
    keys = layer.keys_on(device)[0]
    w = state.config.chunk_size
    # Every key sits one chunk before the query: a fixed distance, so the score is RoPE-consistent.
    rotation = state.table.rotation(w, keys.device)
    if not kernels and keys.device.type == "cpu":
        # Keys turned back to no position once, as they arrive, instead of at every call (score_rows' own turn).
        free = layer.position_free_keys()
        return score_maxlogit(queries, free, n_chunks, w, rotation, None, None, score_rows)
    # The tables of positions inside a chunk: the kernel reads the half-width ones the table keeps.
    scorer, tables = (fast.chunk_maxlogit, state.table.halves) if kernels else (score_rows, state.table.get)
    cos, sin = (t[:w] for t in tables(keys.device))
    return score_maxlogit(queries.to(keys.device), keys, n_chunks, w, rotation, cos, sin, scorer)


def use_fast_path(cfg: LongHeadsConfig, device: torch.device, head_dim: int) -> bool:
    if cfg.backend == "reference" or cfg.selection != "maxlogit" or not fast.supports(cfg.chunk_size, head_dim):
        return False
    if fast.available(device):
        return True
    if cfg.backend == "triton":
        raise RuntimeError("LongHeadsConfig.backend='triton' needs a CUDA device and the triton package, 3.4 or newer "
                           "(pip install 'longheads[gpu]'); use backend='auto' to fall back to PyTorch.")
    return False


def _kv_index(state: ModelState, device: torch.device) -> torch.Tensor:
    return torch.arange(state.num_heads, device=device) // (state.num_heads // state.num_kv_heads)


def _full_attention(layer: LongHeadsLayer, state: ModelState, q_rot: torch.Tensor, start: int,
                    scaling: float) -> torch.Tensor:
    """Ordinary causal attention for queries at positions start.. (all below the attention length)."""
    heads, m, _ = q_rot.shape
    end = start + m
    cos, sin = state.table.get(q_rot.device)
    # Offloaded keys: the call's GPU copy, which its selection rows (if any) read as well.
    k = layer.keys_on(q_rot.device)[0, :, :end]
    v = layer.values[0, :, :end]
    if v.device != q_rot.device:  # offloaded: queued behind the stores still in flight (LongHeadsLayer._store)
        v = fast.heads_to(v, q_rot.device)
    # Cached keys carry their offset inside their chunk; the chunk's own start completes their position.
    starts = chunk_starts(end, state.config.chunk_size, q_rot.device)
    k = apply_rope(k.float(), cos[starts], sin[starts]).to(q_rot.dtype)
    groups = heads // k.shape[0]
    if start == 0:
        # No explicit mask, so SDPA can take its fused causal kernels (the math path would materialise
        # heads x tokens x tokens weights).
        return F.scaled_dot_product_attention(
            q_rot[None], k[None], v[None], is_causal=True, scale=scaling, enable_gqa=groups > 1
        )[0]
    mask = torch.arange(end, device=q_rot.device)[None] <= torch.arange(start, end, device=q_rot.device)[:, None]
    return F.scaled_dot_product_attention(
        q_rot[None], k[None], v[None], attn_mask=mask, scale=scaling, enable_gqa=groups > 1
    )[0]


def _pool_votes(layer: LongHeadsLayer | BeamLayerState, scores: torch.Tensor, k: int, scope: str,
                ranks: int = 1) -> torch.Tensor:
    """Pool chunk scores over the question's tokens (and the answer's): each gives one vote to each of its k best
    chunks, so a chunk that any of them matched well stays selected for the tokens that follow; with scope
    "layer", over the layer's heads too, and with "model" over every layer's so far as well (see
    LongHeadsConfig.vote_scope)."""
    previous = layer.votes
    layer.vote_tokens = 1 if previous is None else layer.vote_tokens + 1
    own = torch.zeros_like(scores).scatter_(1, top_indices(scores, min(k, scores.shape[1])), 1.0)
    ballot = own.clone()
    if previous is not None:
        ballot[:, : previous.shape[1]] += previous
    layer.votes = ballot
    heads = scores.shape[0] * ranks  # every rank's, under tensor parallelism (selection.head_sum)
    if scope != "head":
        ballot = head_sum(ballot, ranks) / heads / layer.vote_tokens
    if scope == "model":
        sequence = layer.sequence
        # Earlier rows may have had more chunks (a question that crosses a chunk boundary): keep them all.
        # The tally moves with the layers (a model spread over several devices by device_map).
        prev = sequence.tally.to(own.device) if sequence.tally is not None else own.new_zeros(0)
        tally = own.new_zeros(max(len(prev), own.shape[1]))
        tally[: len(prev)] += prev
        tally[: own.shape[1]] += head_sum(own, ranks)[0]
        sequence.tally, sequence.voters = tally, sequence.voters + heads
        ballot = ballot + tally[: own.shape[1]] / sequence.voters
    if scope != "head":
        ballot = ballot * CONSENSUS_WEIGHT
    # Votes decide; the current token's own scores (squashed to (0, 1)) only break ties.
    return ballot + torch.softmax(scores, dim=-1)


def _chunk_attention(layer: LongHeadsLayer, state: ModelState, q_pre: torch.Tensor, pos: int,
                     chunks: torch.Tensor, scaling: float, beams: bool = False) -> torch.Tensor:
    """Attention of queries q_pre [B, heads, m, d] (positions pos..pos+m-1, all in one chunk) over the
    selected chunks [B, heads, S] laid out at 0..S*w-1, followed by their own chunk up to the last query.
    B is 1, or with `beams` the cache's beams, whose tokens past the shared prompt are each beam's own
    (LongHeadsCache.begin_beams)."""
    w = state.config.chunk_size
    n_seq, heads, m, _ = q_pre.shape
    device, dtype = q_pre.device, layer.keys.dtype
    n_sel = chunks.shape[2]
    chunk_start = (pos // w) * w
    own = pos + m - chunk_start  # tokens of the current chunk visible to the last query
    storage = layer.keys.device
    groups = state.num_heads // state.num_kv_heads
    if groups > 1:
        # Heads of a group read the same chunks: gather each KV head once and let SDPA share it (GQA).
        kv, rows = torch.arange(state.num_kv_heads, device=storage), chunks[:, ::groups]
    else:
        kv, rows = _kv_index(state, storage), chunks
    tokens = torch.cat([
        (rows.to(storage)[..., None] * w + torch.arange(w, device=storage)).flatten(2),
        torch.arange(chunk_start, chunk_start + own, device=storage).expand(n_seq, len(kv), -1),
    ], 2)  # [B, kv rows, S*w + own]: one gather for the selected chunks and the query's own chunk
    kv_of = kv[None, :, None].expand_as(tokens)
    prompt = tokens.clamp(max=layer.length - 1)
    k = layer.keys[0][kv_of, prompt].to(device)
    values = layer.values[0]
    v = values[kv_of.to(values.device), prompt.to(values.device)].to(device)
    if beams and chunk_start + own > layer.length:  # each beam's own tokens, from its tail
        past = (tokens >= layer.length).to(device)
        beam_of = torch.arange(n_seq, device=device)[:, None, None].expand_as(past)[past]
        k[past], v[past] = layer.tail_entries(beam_of, kv_of.to(device)[past], tokens.to(device)[past])
    cos, sin = state.table.get(device)
    span = n_sel * w + own
    slot_starts = chunk_starts(span, w, device)  # keys already carry their offset inside the chunk
    k = apply_rope(k.float(), cos[slot_starts], sin[slot_starts]).to(dtype)
    q_at = n_sel * w + (pos - chunk_start)
    q = apply_rope(q_pre, cos[q_at : q_at + m], sin[q_at : q_at + m]).to(dtype)
    key_pos = torch.arange(span, device=device)
    mask = key_pos[None] <= torch.arange(q_at, q_at + m, device=device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=len(kv) != heads)


def chunk_starts(n: int, w: int, device: torch.device) -> torch.Tensor:
    """For positions 0..n-1, the first position of their chunk."""
    return torch.arange(n, device=device) // w * w


def _all_chunks(last_pos: int, cfg: LongHeadsConfig, heads: int, device: torch.device) -> torch.Tensor:
    """Trace entry for a query that reads everything: every chunk up to its own, padded with -1."""
    ids = torch.full((heads, cfg.slots), -1, dtype=torch.long, device=device)
    n = last_pos // cfg.chunk_size + 1
    ids[:, :n] = torch.arange(n, device=device)
    return ids


def _update_representations(layer: LongHeadsLayer, state: ModelState, q_pre: torch.Tensor, scaling: float) -> None:
    """Compute the paper's representation of every chunk this call completed."""
    w = state.config.chunk_size
    pending = q_pre if layer.pending_queries is None else torch.cat([layer.pending_queries.to(q_pre), q_pre], 1)
    done = (layer.length // w) - (0 if layer.reps is None else layer.reps.shape[1])
    if done > 0:
        if pending.shape[1] < done * w:
            raise ValueError(
                'selection="paper" needs every chunk\'s queries: pass a LongHeadsCache(model) to every call'
            )
        cos, sin = state.table.get(q_pre.device)
        layer.wait_stores()
        kv = _kv_index(state, layer.keys.device)
        span = slice((layer.length // w - done) * w, (layer.length // w) * w)
        heads, d = pending.shape[0], pending.shape[-1]
        k = layer.keys[0][kv, span].to(q_pre.device).float().view(heads, done, w, d)
        v = layer.values[0][kv.to(layer.values.device), span].to(q_pre.device).float().view(heads, done, w, d)
        q = pending[:, : done * w].view(heads, done, w, d)
        reps = paper_representation(q, k, v, cos[:w], sin[:w], scaling).to(layer.keys.dtype)  # k: rotated in-chunk
        layer.reps = reps if layer.reps is None else torch.cat([layer.reps, reps], 1)
        pending = pending[:, done * w :]
    layer.pending_queries = pending
