"""Which chunks a head reads: chunk scoring and selection.

Every function here works on one layer and one block of queries that share a current chunk, so no tensor
is ever as large as tokens x chunks x heads.
"""

from __future__ import annotations

import torch

from .config import LongHeadsConfig
from .rope import apply_rope

# With vote_scope="layer", a layer's pooled rank votes are the share of its (head, question token) ballots
# each chunk got, scaled so that a difference in share outweighs a head's own scores (a softmax, < 1), which
# only break ties. The value is the one measured in docs/design.md.
CONSENSUS_WEIGHT = 16.0


def paper_representation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, scaling: float) -> torch.Tensor:
    """The paper's chunk representation for one chunk.

    q, k, v: [..., w, d], q unrotated, k rotated at chunk-local positions as the cache stores them (k, v
    already expanded to query heads); cos/sin: [w, d] for chunk-local positions. Returns [..., d].
    Non-causal attention inside the chunk, averaged over the chunk's tokens, gives a summary vector; that
    vector attends over the chunk's keys with the keys as values.
    """
    ql, kl = apply_rope(q, cos, sin), k
    inner = torch.softmax((ql @ kl.transpose(-1, -2)) * scaling, dim=-1) @ v
    summary = inner.mean(dim=-2, keepdim=True)
    weights = torch.softmax((summary @ kl.transpose(-1, -2)) * scaling, dim=-1)
    return (weights @ kl).squeeze(-2)


class Rows:
    """The selection rows of one forward call: chunk-aligned query blocks, then one row per tail token.

    Every layer of the call has the same rows, so the attention function makes them once per call and
    keeps here the device tensors derived from them: a layer then never waits on a copy from the host
    (a copy from pageable memory stalls until the GPU has drained its queue)."""

    def __init__(self, starts: torch.Tensor, ends: torch.Tensor, n_blocks: int):
        self.starts, self.ends, self.n_blocks = starts, ends, n_blocks
        self._made: dict = {}

    def on(self, device: torch.device, name: str, make) -> torch.Tensor:
        """`make()` (a CPU tensor) copied to `device`, made once per name and device."""
        key = (name, device)
        if key not in self._made:
            tensor = make()
            # Pinned, so that the copy is queued behind the GPU's work instead of waiting for it.
            pinned = device.type == "cuda"
            self._made[key] = (tensor.pin_memory() if pinned else tensor).to(device, non_blocking=pinned)
        return self._made[key]


def selection_rows(first: int, per_token_from: int, total: int, w: int) -> Rows:
    """The selection rows of one forward call, on the CPU: chunk-aligned query blocks over
    [first, per_token_from), then one row per token up to `total`."""
    per_token_from = max(per_token_from, first)  # a call shorter than the tail is all tail
    c0, c1 = first // w, -(-per_token_from // w)
    block = torch.arange(c0, c1)
    b_start = torch.clamp(block * w, min=first)
    b_end = torch.clamp((block + 1) * w, max=per_token_from)
    keep = b_start < b_end
    t_start = torch.arange(per_token_from, total)
    return Rows(torch.cat([b_start[keep], t_start]), torch.cat([b_end[keep], t_start + 1]), int(keep.sum()))


def row_means(q: torch.Tensor, rows: Rows, offset: int) -> torch.Tensor:
    """Mean query of every row, float32 [heads, rows, d]: q [heads, n, d] (the model's dtype) holds positions
    offset.., rows cover starts[0]..ends[-1]."""
    first = int(rows.starts[0]) - offset
    n = int(rows.ends[-1] - rows.starts[0])
    heads, _, d = q.shape
    # One matmul of a [rows, tokens] 0/1 matrix with the queries token-major (as the attention module
    # hands them over: a free view): a segment sum by index_add_ took ~0.14 ms per layer-piece on an H100,
    # a batched matmul per head 0.09 ms.
    member = rows.on(q.device, f"members {q.dtype}", lambda: _members(rows).to(q.dtype))
    sums = member @ q[:, first : first + n].transpose(0, 1).reshape(n, heads * d)
    lengths = rows.on(q.device, "lengths", lambda: (rows.ends - rows.starts).float())
    return (sums.float() / lengths[:, None]).view(-1, heads, d).transpose(0, 1)


def _members(rows: Rows) -> torch.Tensor:
    starts, ends = rows.starts - rows.starts[0], rows.ends - rows.starts[0]
    col = torch.arange(int(ends[-1]))
    return ((col >= starts[:, None]) & (col < ends[:, None])).float()


def score_rows(queries: torch.Tensor, keys: torch.Tensor, n_chunks: int, chunk_size: int,
               cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
               max_elements: int = 1 << 25) -> torch.Tensor:
    """Best logit of each query against each chunk's keys: queries [kv_heads, m, d] (rotated to the scoring
    distance, in the keys' dtype), keys [kv_heads, >= n_chunks*w, d] -> float32 [kv_heads, m, n_chunks].
    With cos/sin [w, d], keys are as the cache stores them (rotated inside their chunk) and are first turned
    back to no position, then rounded to their dtype again (what the Triton kernel does in registers).

    All queries of a call share each pass over the keys, in slices that bound the logits' memory.
    Products of two key-dtype numbers are exact in float32, and summing in float32 keeps half-precision
    rounding from tying (or swapping) chunks whose best logits differ in the third digit.
    (`kernels.chunk_maxlogit` is the same function on the GPU.)
    """
    kv_heads, m, _ = queries.shape
    out = torch.empty(kv_heads, m, n_chunks, device=queries.device)
    step = max(1, max_elements // max(1, kv_heads * m * chunk_size))
    q = queries.float()
    for c0 in range(0, n_chunks, step):
        c1 = min(n_chunks, c0 + step)
        k = keys[:, c0 * chunk_size : c1 * chunk_size].float()
        if cos is not None:
            k = k.view(kv_heads, c1 - c0, chunk_size, -1)
            k = apply_rope(k, cos, -sin).to(keys.dtype).float().flatten(1, 2)
        logits = q @ k.transpose(-1, -2)
        out[:, :, c0:c1] = logits.view(kv_heads, m, c1 - c0, chunk_size).amax(dim=-1)
    return out


def score_maxlogit(query: torch.Tensor, keys: torch.Tensor, n_chunks: int, chunk_size: int,
                   rotation: torch.Tensor, cos_local: torch.Tensor, sin_local: torch.Tensor,
                   scorer=score_rows) -> torch.Tensor:
    """Score = the best logit any key of the chunk gets, query and key a fixed distance apart.

    query: [heads, rows, d] (or [heads, d]) unrotated; keys: [kv_heads, >= n_chunks*w, d] as cached;
    rotation: [d, d] to the scoring distance (rope.rotation_matrix); cos_local/sin_local: the tables of
    positions inside a chunk as `scorer` reads them ([w, d]; [w, d/2] for the Triton scorer).
    Rotating only the query by a fixed distance (and the keys back to no position) makes the score
    RoPE-consistent: it is a real attention logit at that distance.
    Returns float32 [heads, rows, n_chunks] (or [heads, n_chunks]).
    """
    single = query.dim() == 2
    q = query[:, None] if single else query
    heads, rows, d = q.shape
    kv_heads = keys.shape[0]
    q = (q.float() @ rotation).to(keys.dtype).reshape(kv_heads, heads // kv_heads * rows, d)
    scores = scorer(q, keys, n_chunks, chunk_size, cos_local, sin_local).view(heads, rows, n_chunks)
    return scores[:, 0] if single else scores


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores along the last dimension; among equal scores, the later chunk first.

    Equal scores are common in the first layer, where a key depends on its token alone: every chunk holding
    the token that matches a query best gets the same best logit (docs/design.md). `topk`
    breaks such ties its own way on each device and tensor shape; a stable sort makes the choice part of the
    method, and prefers the text nearer the query. It settles exact ties only: the two paths' scores can
    differ in the last bits, so a tie in one can still be a near-tie, split the other way, in the other."""
    n = scores.shape[-1]
    order = scores.flip(-1).sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return n - 1 - order


def choose_chunks(scores: torch.Tensor, current: int, config: LongHeadsConfig, groups: int) -> torch.Tensor:
    """Chunk ids [heads, slots-1] in ascending order for queries whose current chunk is `current`.

    scores: [heads, current] for complete chunks 0..current-1. The first `sink_chunks` and the last
    `recent_chunks` complete chunks are always kept; the best of the rest fill the remaining slots.
    """
    heads = scores.shape[0]
    sink, recent, k = config.sink_chunks, config.recent_chunks, config.selected_chunks
    lo, hi = sink, current - recent  # candidates: [lo, hi)
    device = scores.device
    fixed = torch.cat([torch.arange(sink, device=device), torch.arange(hi, current, device=device)])
    cand = scores[:, lo:hi]
    if groups > 1:  # heads that share keys choose together: their scores add up
        cand = cand.view(heads // groups, groups, -1).sum(dim=1).repeat_interleave(groups, dim=0)
    k = min(k, hi - lo)
    top = top_indices(cand, k) + lo
    chosen = torch.cat([fixed.expand(heads, -1), top], dim=-1)
    return chosen.sort(dim=-1).values


def head_sum(values: torch.Tensor, ranks: int) -> torch.Tensor:
    """values summed over a layer's heads (dim 0, kept), those of every tensor-parallel rank included (one
    all-reduce). Votes are counts, so the sum is exact in any order: every rank pools what one process would."""
    total = values.sum(0, keepdim=True)
    if ranks > 1:
        torch.distributed.all_reduce(total)
    return total
