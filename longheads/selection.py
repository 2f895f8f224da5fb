"""Which chunks a head reads: chunk scoring and selection.

Every function here works on one layer and one block of queries that share a current chunk, so no tensor
is ever as large as tokens x chunks x heads.
"""

from __future__ import annotations

import torch

from .config import LongHeadsConfig
from .rope import apply_rope


def paper_representation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, scaling: float) -> torch.Tensor:
    """The paper's chunk representation for one chunk.

    q, k, v: [..., w, d] unrotated (k, v already expanded to query heads); cos/sin: [w, d] for
    chunk-local positions. Returns [..., d]. Non-causal attention inside the chunk, averaged over the chunk's
    tokens, gives a summary vector; that vector attends over the chunk's keys with the keys as values.
    """
    ql, kl = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    inner = torch.softmax((ql @ kl.transpose(-1, -2)) * scaling, dim=-1) @ v
    summary = inner.mean(dim=-2, keepdim=True)
    weights = torch.softmax((summary @ kl.transpose(-1, -2)) * scaling, dim=-1)
    return (weights @ kl).squeeze(-2)


def score_maxlogit(query: torch.Tensor, keys: torch.Tensor, n_chunks: int, chunk_size: int,
                   cos_d: torch.Tensor, sin_d: torch.Tensor) -> torch.Tensor:
    """Score = the best logit any key of the chunk gets, query and key one chunk apart.

    query: [heads, d] unrotated; keys: [kv_heads, >= n_chunks*w, d] unrotated; cos_d/sin_d: [d] for
    position `chunk_size`. Rotating only the query by a fixed distance makes the score RoPE-consistent
    (it is a real attention logit at that distance) without rotating every key.
    """
    heads, d = query.shape
    kv_heads = keys.shape[0]
    q = apply_rope(query.float(), cos_d, sin_d).to(keys.dtype).view(kv_heads, heads // kv_heads, d)
    # Products of two key-dtype numbers are exact in float32; summing in float32 keeps half-precision
    # rounding from tying (or swapping) chunks whose best logits differ in the third digit.
    logits = q.float() @ keys[:, : n_chunks * chunk_size].float().transpose(-1, -2)  # [kv_heads, groups, n*w]
    return logits.view(heads, n_chunks, chunk_size).amax(dim=-1)


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
    if config.granularity == "kv_group" and groups > 1:
        cand = cand.view(heads // groups, groups, -1).sum(dim=1).repeat_interleave(groups, dim=0)
    k = min(k, hi - lo)
    top = cand.topk(k, dim=-1).indices + lo
    chosen = torch.cat([fixed.expand(heads, -1), top], dim=-1)
    return chosen.sort(dim=-1).values
