"""LongHeads settings: one dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .errors import ConfigError

SELECTION_METHODS = ("maxlogit", "paper")
VOTE_SCOPES = ("head", "layer", "model")
BACKENDS = ("auto", "triton", "reference")


@dataclass
class LongHeadsConfig:
    """How each attention head picks the chunks it reads.

    Every head reads at most ``attention_length`` tokens: ``sink_chunks`` first chunks, ``recent_chunks``
    complete chunks before the current one, the current (partial) chunk, and the best-scoring chunks
    for the rest; query heads that share keys (grouped-query attention) pick together. Selected chunks are
    laid out contiguously, so no head sees a relative distance beyond ``attention_length``, which must stay
    within the model's pretrained length.
    """

    chunk_size: int = 256
    # None: filled in by `enable` from the model (4096, capped at the pretrained length).
    attention_length: int | None = None
    sink_chunks: int = 1
    recent_chunks: int = 1
    # How chunks are scored against a query: "maxlogit" (best single-key match, RoPE-consistent)
    # or "paper" (the paper's attention-pooled chunk representation).
    selection: str = "maxlogit"
    # The last `tail_tokens` tokens of every forward call pick chunks token by token; earlier tokens
    # pick once per chunk-sized block. Questions sit at the end of a prompt, where selection matters.
    tail_tokens: int = 16
    # The question's tokens (and the answer's) pool their choices: each gives one vote to each of its
    # `votes_per_token` best chunks, and a chunk's votes so far decide, the current token's scores breaking
    # ties. None: as many votes as a head selects chunks.
    votes_per_token: int | None = 3
    # Whose pooled votes a head follows at question time: "head" (its own), "layer" (those of every head of
    # its layer, its own scores breaking ties, so that a layer's heads read the same chunks) or "model" (the
    # layer's plus the share of every earlier layer's). "model" finds facts in long prose more often the longer
    # the document (docs/design.md).
    vote_scope: str = "model"
    max_context: int = 131072
    # Keep the values of the KV cache in pinned CPU memory; only the chunks a head selects go to the GPU.
    cpu_offload: bool = False
    # With cpu_offload, the keys too: each layer's keys go to the GPU for its attention call and leave after it
    # (the next layer's copy starts while a layer runs), so the cache's GPU memory is about two layers' keys
    # instead of every layer's, at the cost of copying them at every step (docs/benchmarks.md measures both).
    # Outputs and selections do not depend on it.
    offload_keys: bool = False
    # "auto": the Triton kernels on a CUDA device (maxlogit selection), PyTorch otherwise; "triton": the
    # kernels or an error; "reference": always the plain PyTorch path the kernels are tested against.
    backend: str = "auto"
    # torch.compile each decoder layer around the LongHeads attention (which, like the cache update, stays
    # eager): fuses the model's own norms and MLP arithmetic. On one H100 it took a 100k-token
    # prefill of Llama-3-8B from 3.64-3.66 s to 2.92-2.99 s (docs/benchmarks.md); the first calls compile (seconds),
    # and the layers stay compiled after `disable`.
    compile_layers: bool = False
    # Tokens per forward call while a prompt is encoded, a multiple of chunk_size (so that no query block
    # is split between calls); None: about 16384 on a GPU, 4096 on the CPU or with cpu_offload. Larger
    # pieces run the model's matrix products faster (H100, Llama-3-8B, 100k tokens compiled: 2.94-2.99 s
    # with 16384 against 3.00-3.04 s with 4096); smaller ones hold less activation memory and report
    # progress more often. Selections and outputs do not depend on it.
    prefill_piece: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"LongHeadsConfig.{name}={getattr(self, name)!r} is invalid: {allowed}.")

        def optional_int(value, minimum: int) -> bool:
            return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= minimum)

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("selection", "cpu_offload", "offload_keys", "attention_length", "backend",
                          "votes_per_token", "vote_scope", "compile_layers", "prefill_piece"):
                continue
            need(isinstance(value, int) and not isinstance(value, bool), f.name, "it must be an integer")
        need(16 <= self.chunk_size <= 8192, "chunk_size", "allowed range is 16..8192")
        need(self.sink_chunks >= 0, "sink_chunks", "it must be >= 0")
        need(self.recent_chunks >= 0, "recent_chunks", "it must be >= 0")
        need(self.tail_tokens >= 0, "tail_tokens", "it must be >= 0")
        need(self.selection in SELECTION_METHODS, "selection", f"choose one of {SELECTION_METHODS}")
        need(self.vote_scope in VOTE_SCOPES, "vote_scope", f"choose one of {VOTE_SCOPES}")
        need(self.backend in BACKENDS, "backend", f"choose one of {BACKENDS}")
        need(optional_int(self.votes_per_token, 1), "votes_per_token", "it must be None or an integer >= 1")
        need(isinstance(self.cpu_offload, bool), "cpu_offload", "it must be True or False")
        need(isinstance(self.offload_keys, bool), "offload_keys", "it must be True or False")
        need(self.cpu_offload or not self.offload_keys, "offload_keys", "it needs cpu_offload=True")
        need(isinstance(self.compile_layers, bool), "compile_layers", "it must be True or False")
        need(self.prefill_piece is None or (optional_int(self.prefill_piece, self.chunk_size)
                                            and self.prefill_piece % self.chunk_size == 0),
             "prefill_piece", f"it must be None or a positive multiple of chunk_size ({self.chunk_size})")
        if self.attention_length is not None:
            self.check_attention_length(None)
        need(self.max_context >= self.chunk_size, "max_context", f"it must be at least chunk_size ({self.chunk_size})")

    @property
    def slots(self) -> int:
        """Chunks each head reads, the current partial chunk included."""
        return self.attention_length // self.chunk_size

    def piece_tokens(self, device: torch.device) -> int:
        """Tokens per forward call of the prefill on `device` (see prefill_piece)."""
        if self.prefill_piece is not None:
            return self.prefill_piece
        tokens = 16384 if device.type == "cuda" and not self.cpu_offload else 4096
        return max(self.chunk_size, tokens // self.chunk_size * self.chunk_size)

    @property
    def selected_chunks(self) -> int:
        """Chunks each head picks by score (beyond the always-kept ones)."""
        return self.slots - self.sink_chunks - self.recent_chunks - 1

    @property
    def ballot_size(self) -> int:
        """Chunks each question token votes for."""
        return min(self.votes_per_token or self.selected_chunks, self.selected_chunks)

    def check_attention_length(self, pretrained_length: int | None) -> None:
        n = self.attention_length
        if not isinstance(n, int) or isinstance(n, bool) or n % self.chunk_size:
            raise ConfigError(
                f"LongHeadsConfig.attention_length={n!r} is invalid: it must be a multiple of "
                f"chunk_size ({self.chunk_size})."
            )
        fixed = self.sink_chunks + self.recent_chunks + 1
        if n // self.chunk_size < fixed + 1:
            raise ConfigError(
                f"LongHeadsConfig.attention_length={n} is invalid: it must hold at least {fixed + 1} chunks of "
                f"{self.chunk_size} tokens (sink, recent and current chunks plus one selected chunk)."
            )
        if pretrained_length is not None and n > pretrained_length:
            raise ConfigError(
                f"LongHeadsConfig.attention_length={n} is invalid: it must not exceed the model's pretrained "
                f"length ({pretrained_length})."
            )

    def to_dict(self) -> dict:
        return asdict(self)
