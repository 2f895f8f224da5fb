"""The LongHeads KV cache: a transformers `Cache` whose layers keep keys rotated at their place *inside their
chunk* (position % chunk_size), not at their place in the text.

While LongHeads is enabled the model's rotary embedding is the identity (patch.Unrotated), so `update`
receives keys without positions and gives each its offset inside its chunk. Wherever the attention function
lays a chunk out, its keys then differ from their laid-out positions by one offset shared by the whole
chunk, which goes on the query instead (one rotation per chunk, not one per key). With ``cpu_offload`` the
values live in pinned CPU memory and only the chunks a head selects travel to the GPU (a prompt's pieces stage
them, decoding steps read them in place). The keys stay on the
GPU unless ``offload_keys`` is set too: every query scores every chunk by its keys, so offloaded keys travel
whole to the GPU for each layer's attention call and leave again after it; each layer starts the next one's
copy on a side stream, so that it runs while this layer computes. That bounds GPU memory by a few layers' keys
instead of every layer's, and costs a host-to-device copy of them per layer and call.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from dataclasses import dataclass, replace

import numpy
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from . import fast
from .rope import PositionTable, apply_rope


@dataclass
class SequenceState:
    """What the layers of one sequence's cache share during a forward call: the call's selection rows (the same
    for every layer) and, with vote_scope="model", the question's ballots of every layer so far (per chunk) and
    how many were cast. It lives with the cache, so that the model itself holds no sequence's state."""

    rows: tuple | None = None  # (key, selection.Rows) of the forward call in progress
    tally: torch.Tensor | None = None
    voters: int = 0


@dataclass
class BeamLayerState:
    """One beam's selection state in one layer: what a LongHeadsLayer holds for its single sequence (the attention
    function's vote pooling reads these names on either)."""

    sequence: SequenceState
    votes: torch.Tensor | None = None
    vote_tokens: int = 0
    last_selection: torch.Tensor | None = None


def layer_of(keys: torch.Tensor) -> LongHeadsLayer | None:
    """The LongHeadsLayer whose `update` returned `keys`. transformers passes the attention function the keys
    the cache returned, not the cache: the keys carry their layer."""
    return getattr(keys, "longheads_layer", None)


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked CPU memory of exactly this size, mapped for the GPU. PyTorch's pinned allocator rounds every
    block up to a power of two (ATen's CachingHostAllocator), so a layer's 256 MiB of values at 128k would take
    512, and it pinned a 128k cache's values 4x slower than registering pageable memory does (9.6 s against
    2.5 s for 32 layers on an H100 host, docs/benchmarks.md). Where CUDA refuses the registration for a reason
    other than memory, PyTorch's allocator is used after all; out of memory is an error."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = numpy.empty(nbytes, dtype=numpy.uint8)
    address = buffer.ctypes.data
    error = torch.cuda.cudart().cudaHostRegister(address, nbytes, 0)
    if int(error) != 0:
        # The failed call stays CUDA's "last error" until something reads it, and PyTorch's next kernel launch
        # would: launch one here, so that it is read now and handled below.
        try:
            torch.ones(1, device="cuda")
        except RuntimeError:
            pass
        if int(error) == 2:  # cudaErrorMemoryAllocation
            raise RuntimeError(f"could not pin {nbytes / 2**30:.2f} GiB of CPU memory for the offloaded KV cache: "
                               f"{torch.cuda.cudart().cudaGetErrorString(error)}")
        # Registration refused for another reason (not every platform supports it): PyTorch's pinned blocks.
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    # The tensor keeps the array alive, so this runs when the last view of it is gone, before numpy frees it.
    weakref.finalize(buffer, _unregister, address)
    return torch.from_numpy(buffer).view(dtype).view(shape)


def _unregister(address: int) -> None:
    try:
        torch.cuda.synchronize()  # copies from or into it may still be in flight
        torch.cuda.cudart().cudaHostUnregister(address)
    except Exception:  # at interpreter exit CUDA may be gone already
        pass


_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


class LongHeadsLayer(CacheLayerMixin):
    is_compileable = False
    is_croppable = True
    is_sliding = False

    def __init__(self, chunk_size: int, offload: bool = False, table: PositionTable | None = None,
                 use_kernels: bool = True, offload_keys: bool = False):
        super().__init__()
        if offload_keys and not offload:
            raise ValueError("LongHeadsLayer: offload_keys needs offload (values are offloaded first)")
        self.chunk_size = chunk_size
        self.offload_to_cpu = offload
        self.offload_keys = offload_keys
        self.table = table  # the model's rotary tables, for the keys' offsets inside their chunks
        self.use_kernels = use_kernels  # store keys with the Triton kernel on a GPU (LongHeadsConfig.backend)
        self.length = 0
        self.reserved = 0  # capacity to allocate at once (LongHeadsCache.reserve), so growth never doubles
        self._k: torch.Tensor | None = None  # [1, kv_heads, capacity, head_dim], rotated inside their chunk
        self._v: torch.Tensor | None = None
        self._device_keys: torch.Tensor | None = None  # offloaded keys' copy for the running attention call
        # Offloaded keys on their way to the GPU (a copy and the event that ends it), started while the layer
        # before this one runs; `next_layer` is that layer's pointer to this one (set by LongHeadsCache).
        self._prefetched: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.next_layer: LongHeadsLayer | None = None
        # Per-chunk state for the "paper" selection: representations of complete chunks, and the
        # (unrotated) queries of the chunk being filled, which its representation needs.
        self.reps: torch.Tensor | None = None  # [heads, chunks, head_dim]
        self.pending_queries: torch.Tensor | None = None  # [heads, tokens, head_dim]
        self.tail_enabled = True
        self.sequence = SequenceState()  # shared by every layer of a LongHeadsCache
        # Chunk ids [heads, slots] the last query of the latest call read (for the selection trace).
        self.last_selection: torch.Tensor | None = None
        # The question's pooled chunk votes so far and how many tokens cast them (attention's `_pool_votes`).
        self.votes: torch.Tensor | None = None
        self.vote_tokens = 0
        # CPU scoring only: the keys turned back to no position (`position_free_keys`), and how many are valid.
        self._free: torch.Tensor | None = None
        self._free_length = 0
        # Beams decoded together after a shared prompt (LongHeadsCache.begin_beams): the layer's storage holds the
        # prompt, and each beam's own tokens go to a tail of its own, [beams, kv_heads, room, d], with their state.
        self.beams: list[BeamLayerState] | None = None
        self._tail_k: torch.Tensor | None = None
        self._tail_v: torch.Tensor | None = None
        self.tail_length = 0

    # --- storage -------------------------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype = key_states.dtype
        self.device = key_states.device
        self.value_device = torch.device("cpu") if self.offload_to_cpu else key_states.device
        self._k = self._alloc(key_states, self.reserved, torch.device("cpu") if self.offload_keys else self.device)
        self._v = self._alloc(value_states, self.reserved, self.value_device)
        self.is_initialized = True

    @staticmethod
    def _alloc(like: torch.Tensor, capacity: int, device: torch.device) -> torch.Tensor:
        b, h, _, d = like.shape
        if device.type == "cpu" and torch.cuda.is_available():
            return pinned_empty((b, h, capacity, d), like.dtype)
        return torch.empty(b, h, capacity, d, dtype=like.dtype, device=device)

    def _grow(self, needed: int) -> None:
        capacity = self._k.shape[2]
        if needed <= capacity:
            return
        # Geometric growth keeps appends amortised O(1), unlike torch.cat of the whole cache at every step;
        # a factor of 1.25 rather than 2 because at 100k+ tokens the spare room is gigabytes.
        new_capacity = self.reserved if needed <= self.reserved else max(needed, capacity + capacity // 4, 1024)
        self.wait_stores()  # the copies below read offloaded storage on the host
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = self._alloc(old, new_capacity, old.device)
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self.length]

    @keys.setter
    def keys(self, value) -> None:  # the base class assigns None in __init__
        if value is not None:
            raise AttributeError("LongHeadsLayer.keys is read-only; use update()")

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self.length]

    @values.setter
    def values(self, value) -> None:
        if value is not None:
            raise AttributeError("LongHeadsLayer.values is read-only; use update()")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.beams is not None:
            return self._update_tails(key_states, value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        self._grow(self.length + n)
        self._store_keys(key_states[0])
        self._store(value_states[0], self._v[0])
        self.length += n
        keys = self.keys
        keys.longheads_layer = self  # see `layer_of`
        return keys, self.values

    def _update_tails(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Append one token per beam to the beams' tails: keys [beams, kv_heads, n, d] without positions."""
        if key_states.shape[0] != len(self.beams):
            raise ValueError(f"{key_states.shape[0]} sequences for {len(self.beams)} beams")
        n, t = key_states.shape[2], self.tail_length
        if t + n > self._tail_k.shape[2]:
            raise ValueError(f"the beams' tails hold {self._tail_k.shape[2]} tokens (LongHeadsCache.begin_beams)")
        cos, sin = self.table.get(self._tail_k.device)
        # Rotated at their place inside their chunk, as `_rotate_into` stores the prompt's keys on this path.
        local = torch.arange(self.length + t, self.length + t + n, device=self._tail_k.device) % self.chunk_size
        keys = key_states.to(self._tail_k.device).float()
        self._tail_k[:, :, t : t + n] = apply_rope(keys, cos[local], sin[local])
        self._tail_v[:, :, t : t + n] = value_states.to(self._tail_v.device)
        self.tail_length += n
        key_states.longheads_layer = self  # see `layer_of`
        return key_states, value_states

    def beam_keys(self, beam: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [kv_heads, end - start, d] of tokens start..end-1 of one beam, on the layer's device: the
        shared prompt's, then its tail's."""
        self.wait_stores()
        prompt = self.length
        parts = [(self.keys[0, :, start : min(end, prompt)], self.values[0, :, start : min(end, prompt)])]
        if end > prompt:
            a = max(start, prompt) - prompt
            parts.append((self._tail_k[beam, :, a : end - prompt], self._tail_v[beam, :, a : end - prompt]))
        return (torch.cat([k.to(self.device) for k, _ in parts], 1),
                torch.cat([v.to(self.device) for _, v in parts], 1))

    def tail_entries(self, beams: torch.Tensor, kv_heads: torch.Tensor, tokens: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [n, d] of the tail tokens (positions past the prompt) tokens[i] of beams[i], KV head
        kv_heads[i]."""
        at = tokens - self.length
        return self._tail_k[beams, kv_heads, at], self._tail_v[beams, kv_heads, at]

    def begin_beams(self, room: int, sequence: SequenceState) -> None:
        self.wait_stores()
        _, kv, _, d = self._k.shape
        self._tail_k = torch.empty(1, kv, room, d, dtype=self._k.dtype, device=self.device)
        self._tail_v = torch.empty(1, kv, room, d, dtype=self._v.dtype, device=self.device)
        self.tail_length = 0
        self.beams = [BeamLayerState(sequence, self.votes, self.vote_tokens, self.last_selection)]

    def select_beams(self, parents: torch.Tensor, sequences: list[SequenceState]) -> None:
        """Beam i continues beam parents[i]: its tail and state (replaced, never changed in place, by later calls,
        so several children may share a parent's)."""
        self._tail_k = self._tail_k.index_select(0, parents.to(self._tail_k.device))
        self._tail_v = self._tail_v.index_select(0, parents.to(self._tail_v.device))
        self.beams = [replace(self.beams[p], sequence=seq) for p, seq in zip(parents.tolist(), sequences, strict=True)]

    def beam_snapshot(self, beam: int) -> tuple:
        t = self.tail_length
        return self._tail_k[beam, :, :t].clone(), self._tail_v[beam, :, :t].clone(), replace(self.beams[beam])

    def end_beams(self, snapshot: tuple) -> None:
        """Hold the prompt and one beam's tokens (a `beam_snapshot`) as a single sequence again."""
        keys, values, beam = snapshot
        n = keys.shape[1]
        self._grow(self.length + n)
        self.wait_stores()
        self._k[0, :, self.length : self.length + n] = keys.to(self._k.device)
        self._v[0, :, self.length : self.length + n] = values.to(self._v.device)
        self.length += n
        self._device_keys = self._prefetched = None
        self.votes, self.vote_tokens, self.last_selection = beam.votes, beam.vote_tokens, beam.last_selection
        self.beams = self._tail_k = self._tail_v = None
        self.tail_length = 0

    def keys_on(self, device: torch.device) -> torch.Tensor:
        """The keys [1, kv_heads, tokens, d] on `device`. Offloaded keys are copied there once per attention
        call (see `drop_device_keys`), the part that `prefetch_keys` brought already from that copy."""
        keys = self.keys
        if keys.device == device:
            return keys
        if self._device_keys is None or self._device_keys.shape[2] != self.length:
            copy = torch.empty(keys.shape, dtype=keys.dtype, device=device)
            done = 0
            if self._prefetched is not None:
                early, arrived = self._prefetched
                self._prefetched = None
                stream = torch.cuda.current_stream(device)
                stream.wait_event(arrived)
                early.record_stream(stream)  # used here, though allocated on the copy stream
                done = early.shape[1]
                copy[0, :, :done].copy_(early)
            fast.copy_heads(keys[0], copy[0], done)
            self._device_keys = copy
        return self._device_keys

    def position_free_keys(self) -> torch.Tensor:
        """The keys [kv_heads, tokens, d] turned back to no position and rounded to their dtype, as
        `selection.score_rows` turns them before it scores. On the CPU every call scored every cached key,
        and turning 33k keys back took most of a decoding step (about 3 s of a 30-layer model's forward on
        2 cores), so they are turned once, as they arrive, at the cost of a second copy of the keys."""
        keys = self.keys[0]
        if self._free is None or self._free.shape[1] < keys.shape[1]:
            grown = keys.new_empty(keys.shape[0], self._k.shape[2], keys.shape[2])
            if self._free is not None:
                grown[:, : self._free_length] = self._free[:, : self._free_length]
            self._free = grown
        start, w = self._free_length, self.chunk_size
        if start < self.length:
            cos, sin = self.table.get(keys.device)
            local = torch.arange(start, self.length, device=keys.device) % w
            self._free[:, start : self.length] = apply_rope(keys[:, start:].float(), cos[local], -sin[local])
            self._free_length = self.length
        return self._free[:, : self.length]

    def prefetch_keys(self, device: torch.device) -> None:
        """Start copying the offloaded keys stored so far to `device` on a side stream, so that the copy runs
        while the layers before this one compute (only the keys stored after it are copied in `keys_on`)."""
        if not self.offload_keys or self.length == 0 or self._prefetched is not None or device.type != "cuda":
            return
        stream = _copy_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))  # after the keys' own stores (`_store`)
        with torch.cuda.stream(stream):
            early = fast.heads_to(self.keys[0], device)
            arrived = torch.cuda.Event()
            arrived.record(stream)
        self._prefetched = early, arrived

    def drop_device_keys(self) -> None:
        """Free the GPU copy of offloaded keys (the attention call that needed it has been issued)."""
        self._device_keys = None

    def _store_keys(self, keys: torch.Tensor) -> None:
        if self.table is None:
            raise ValueError("LongHeadsLayer needs the model's rotary tables to store keys: use LongHeadsCache(model)")
        start, n, d = self.length, keys.shape[1], keys.shape[2]
        if self._k.device == keys.device:
            self._rotate_into(keys, self._k[0], start)
            return
        # Offloaded keys: rotate them where they were computed (with the same kernel as in place), then copy.
        offset = start % self.chunk_size  # a staging buffer that starts at the same place inside a chunk
        staged = keys.new_empty(keys.shape[0], offset + n, d)
        self._rotate_into(keys, staged, offset)
        self._store(staged[:, offset:], self._k[0])

    def _store(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """dst[:, length:length+n] = src [kv_heads, n, d]. Into pinned memory the copies do not block: readers
        on the GPU are queued behind them, and readers on the host call `wait_stores` first."""
        window = dst[:, self.length : self.length + src.shape[1]]
        if dst.device == src.device:
            window.copy_(src)
        else:
            fast.copy_heads(src, window)

    def wait_stores(self) -> None:
        """Wait until the stores into pinned memory have landed, before the host reads the cache."""
        if self.offload_to_cpu and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _rotate_into(self, keys: torch.Tensor, dst: torch.Tensor, start: int) -> None:
        """Write keys [kv_heads, n, d] to dst[:, start:start+n], each rotated to its offset inside its chunk."""
        n, d = keys.shape[1], keys.shape[2]
        use_kernel = self.use_kernels and fast.supports(self.chunk_size, d) and fast.available(dst.device)
        halves = self.table.halves(dst.device) if use_kernel else None
        if halves is not None:
            from . import kernels

            kernels.store_keys(keys, dst, start, self.chunk_size, halves[0][: self.chunk_size],
                               halves[1][: self.chunk_size])
            return
        cos, sin = self.table.get(dst.device)
        local = torch.arange(start, start + n, device=dst.device) % self.chunk_size
        dst[:, start : start + n].copy_(apply_rope(keys.float(), cos[local], sin[local]))

    def get_seq_length(self) -> int:
        return self.length + self.tail_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` tokens (a negative value removes that many from the end)."""
        keep = self.length + max_length if max_length < 0 else min(max_length, self.length)
        if keep % self.chunk_size and self.pending_queries is not None and keep < self.length:
            # The representation of a half-kept chunk needs queries we no longer have.
            raise ValueError(f"LongHeadsLayer.crop({max_length}) must keep a multiple of chunk_size")
        self.length = keep
        # Beams left undecided (a stream closed while they ran) are dropped with the tokens past `keep`.
        self.beams = self._tail_k = self._tail_v = None
        self.tail_length = 0
        self._free_length = min(self._free_length, keep)
        self._device_keys = self._prefetched = None  # copies of keys that may no longer be these
        if self.reps is not None:
            self.reps = self.reps[:, : keep // self.chunk_size]
        if self.pending_queries is not None:
            self.pending_queries = self.pending_queries[:, :0]

    def reset(self) -> None:
        self.beams = self._tail_k = self._tail_v = None
        self.tail_length = 0
        self.length = 0
        self._free_length = 0
        self._device_keys = self._prefetched = None
        self.reps = None
        self.pending_queries = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("LongHeadsCache reorders beams with select_beams (LongHeadsModel's own search), "
                                  "not through transformers' generate")

    def save_tail(self, start: int) -> tuple:
        """Copies of the tokens from `start` on and the question's pooled votes (see `LongHeadsCache.save_tail`)."""
        self.wait_stores()  # the slices below read offloaded storage on the host
        return (self._k[:, :, start : self.length].clone(), self._v[:, :, start : self.length].clone(),
                self.votes, self.vote_tokens, self.last_selection,
                self.reps, self.pending_queries)

    def restore_tail(self, start: int, saved: tuple) -> None:
        keys, values, self.votes, self.vote_tokens, self.last_selection, self.reps, self.pending_queries = saved
        self.wait_stores()
        n = keys.shape[2]
        self._grow(start + n)
        self._k[:, :, start : start + n] = keys
        self._v[:, :, start : start + n] = values
        self.length = start + n
        self._free_length = min(self._free_length, start)
        self._device_keys = self._prefetched = None  # copies of keys that may no longer be these

    def offload(self):  # storage placement is fixed at construction
        pass

    def prefetch(self):
        pass

    def nbytes(self) -> int:
        return 0 if self._k is None else 2 * self.length * self._k[0, :, 0].numel() * self._k.element_size()


@dataclass
class TailState:
    """A `LongHeadsCache` past its first `start` tokens: one beam of a beam search (LongHeadsModel.stream)."""

    start: int
    layers: list[tuple]
    tally: torch.Tensor | None
    voters: int


@functools.cache
def _cache_keyword(model_class: type) -> str:
    # transformers renamed `past_key_values` to `cache` (5.25) and will drop the old name: pass the one this
    # release's forward declares, so that neither old nor new releases warn.
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_argument(model: torch.nn.Module, cache: Cache | None) -> dict[str, Cache | None]:
    """The cache as the keyword argument the installed transformers' `forward` and `generate` take:
    `model(input_ids=ids, **cache_argument(model, cache))`."""
    return {_cache_keyword(type(model)): cache}


class LongHeadsCache(Cache):
    """One `LongHeadsLayer` per decoder layer. Pass it to a LongHeads-enabled model's `forward` or `generate`
    with `cache_argument(model, cache)`."""

    def __init__(self, model: torch.nn.Module):
        state = getattr(model, "longheads", None)
        if state is None:
            raise ValueError("LongHeadsCache needs a model prepared with longheads.enable(model)")
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        cfg = state.config
        layers = [
            LongHeadsLayer(cfg.chunk_size, cfg.cpu_offload, state.table,
                           use_kernels=cfg.backend != "reference", offload_keys=cfg.offload_keys)
            for _ in range(n_layers)
        ]
        super().__init__(layers=layers)
        self.sequence = SequenceState()
        self.beam_sequences: list[SequenceState] | None = None  # one per beam, after begin_beams
        for layer in layers:
            layer.sequence = self.sequence
        if cfg.offload_keys:  # each layer starts the next one's keys on their way to the GPU
            for layer, following in zip(layers, layers[1:], strict=False):
                layer.next_layer = following

    @property
    def tail_enabled(self) -> bool:
        return self.layers[0].tail_enabled

    @tail_enabled.setter
    def tail_enabled(self, value: bool) -> None:
        # Off while the engine encodes the first pieces of a long prompt: only its true end (the
        # question) needs token-by-token selection, so a prompt encoded in pieces matches one pass.
        for layer in self.layers:
            layer.tail_enabled = value

    @torch.compiler.disable
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        # Outside any compiled graph (LongHeadsConfig.compile_layers): the store branches on lengths.
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def crop(self, max_length: int) -> None:
        self.beam_sequences = None
        for layer in self.layers:
            layer.crop(max_length)

    def save_tail(self, start: int) -> TailState:
        """What this cache holds past the first `start` tokens (a beam's own tokens, when `start` is the prompt's
        length), with the votes its question and those tokens pooled. The state and attributes it copies
        from are replaced, never changed in place, by later calls, so references to them are enough."""
        return TailState(start, [layer.save_tail(start) for layer in self.layers], self.sequence.tally,
                         self.sequence.voters)

    def restore_tail(self, saved: TailState) -> None:
        """Make the cache hold what it held when `saved` was taken (its first `saved.start` tokens must be the same)."""
        for layer, part in zip(self.layers, saved.layers, strict=True):
            layer.restore_tail(saved.start, part)
        self.sequence.tally, self.sequence.voters = saved.tally, saved.voters

    def begin_beams(self, room: int) -> None:
        """Decode several beams after the prompt this cache holds, in one forward call per step: the prompt is
        stored once and each beam's tokens (at most `room`) in a tail of its own. One beam to start with; each
        step's `select_beams` says which beam every new one continues."""
        self.beam_sequences = [replace(self.sequence)]
        for layer in self.layers:
            layer.begin_beams(room, self.beam_sequences[0])

    def select_beams(self, parents: list[int]) -> None:
        self.beam_sequences = [replace(self.beam_sequences[p]) for p in parents]
        index = torch.tensor(parents, dtype=torch.long)
        for layer in self.layers:
            layer.select_beams(index, self.beam_sequences)

    def beam_snapshot(self, beam: int) -> tuple:
        """One beam's tokens and state, for `end_beams` after later steps have moved the beams on."""
        return [layer.beam_snapshot(beam) for layer in self.layers], replace(self.beam_sequences[beam])

    def end_beams(self, snapshot: tuple) -> None:
        """Hold the prompt and the snapshot's beam as one sequence, as if it alone had been decoded."""
        layers, sequence = snapshot
        for layer, part in zip(self.layers, layers, strict=True):
            layer.end_beams(part)
        self.sequence.tally, self.sequence.voters = sequence.tally, sequence.voters
        self.beam_sequences = None

    def capacity(self) -> int:
        """Tokens every layer has storage for (0 before the first update)."""
        return min((layer._k.shape[2] if layer.is_initialized else 0) for layer in self.layers)

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` tokens in one allocation per layer (growth by doubling would briefly hold
        old and new storage, and up to twice the memory needed, which matters at 100k+ tokens)."""
        for layer in self.layers:
            layer.reserved = max(layer.reserved, tokens)
            if layer.is_initialized:
                layer._grow(tokens)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
