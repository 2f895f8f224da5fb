"""Which chunks every layer and head read while an answer was generated."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cache import LongHeadsCache


def selection_step(cache: LongHeadsCache, num_heads: int, slots: int, beam: int | None = None) -> torch.Tensor:
    """int32 [layers, heads, slots]: the chunks the last query of the latest call read, per layer and head
    (-1 for a layer that has not attended yet); one step of `SelectionTrace.selections`. With `beam`, that
    beam's (LongHeadsCache.begin_beams)."""
    rows = []
    for layer in cache.layers:
        sel = layer.last_selection if beam is None else layer.beams[beam].last_selection
        if sel is None:
            sel = torch.full((num_heads, slots), -1, dtype=torch.long)
        rows.append(sel[:, :slots].to("cpu", torch.int32))
    return torch.stack(rows)


@dataclass
class SelectionTrace:
    """The chunks each (step, layer, head) attended to.

    ``selections[s, l, h]`` lists the chunk ids head ``h`` of layer ``l`` read at step ``s`` (step 0 is the
    last prompt token, step i the i-th generated token), -1 for an unused slot. The first chunks
    (attention sinks) and the chunks next to the query are always read; ``top_chunks`` leaves them out.
    """

    chunk_size: int
    num_layers: int
    num_heads: int
    prompt_text: str
    prompt_tokens: int
    chunk_token_spans: list[tuple[int, int]]
    chunk_char_spans: list[tuple[int, int]]
    selections: torch.Tensor  # int32 [steps, layers, heads, slots]
    sink_chunks: int = 1
    recent_chunks: int = 1
    always_kept: list[set[int]] = field(default_factory=list)  # per step: chunks every head reads by rule

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_token_spans)

    def chunk_counts(self) -> torch.Tensor:
        """[num_chunks]: how many (step, layer, head) triples read each chunk."""
        ids = self.selections.flatten().long()
        ids = ids[(ids >= 0) & (ids < self.num_chunks)]
        return torch.bincount(ids, minlength=self.num_chunks)

    def head_grid(self, chunk: int) -> torch.Tensor:
        """[layers, heads]: at how many steps each head read `chunk`."""
        return (self.selections == chunk).any(dim=-1).sum(dim=0)

    def reads_per_step(self) -> torch.Tensor:
        """[num_chunks] float64: how many (layer, head) pairs read each chunk, per step on average."""
        return self.chunk_counts().double() / max(len(self.selections), 1)

    def top_chunks(self, k: int = 5, baseline: SelectionTrace | None = None) -> list[int]:
        """The `k` most read chunks among those chosen by score (sink and local chunks excluded).

        Some chunks are read often whatever is asked (in long documents, the first few thousand tokens).
        `baseline`, the trace of another question about the same prompt prefix (a neutral one such as "What
        is this document about?"), takes them out: chunks are then ranked by how much more often per step
        this answer's heads read them than the baseline's did, and only chunks read more often count."""
        reads = self.reads_per_step()
        if baseline is not None:
            base = baseline.reads_per_step()[: len(reads)]
            reads[: len(base)] -= base
        for kept in self.always_kept:
            for c in kept:
                if c < len(reads):
                    reads[c] = -1
        order = torch.argsort(reads, descending=True, stable=True)
        return [int(c) for c in order[:k] if reads[c] > 0]

    def chunk_text(self, chunk: int) -> str:
        start, end = self.chunk_char_spans[chunk]
        return self.prompt_text[start:end]
