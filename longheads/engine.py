"""The engine object: a LongHeads-enabled model with its tokenizer, a document cache and a generation loop.

One obvious path from text to answer: render the prompt, tokenize, reuse the cached encoding of the
longest shared prefix (a prefix's encoding does not depend on what follows it), encode the rest in
pieces, then decode token by token (a few beams at once, `beams.py`), recording which chunks every head read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .beams import DEFAULT_BEAMS, BeamSearch
from .cache import LongHeadsCache, cache_argument
from .config import LongHeadsConfig
from .errors import ContextTooLongError, OutOfMemoryError
from .loading import load_model_and_tokenizer, resolve_device, resolve_dtype
from .patch import enable
from .trace import SelectionTrace

Prompt = str | list[dict]
Progress = Callable[[int, int], None]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def encode_pieces(model, cache: LongHeadsCache, ids: torch.Tensor, start: int = 0,
                  progress: Progress | None = None) -> torch.Tensor:
    """Run ids[:, start:] through the model into `cache` in pieces of LongHeadsConfig.prefill_piece tokens
    (activations stay bounded at any length); returns the last token's logits."""
    total = ids.shape[1]
    config = model.longheads.config
    piece = config.piece_tokens(ids.device)
    if progress:
        progress(start, total)
    logits = None
    with torch.inference_mode():
        pos = start
        while pos < total:
            end = min(pos + piece, total)
            if total - end < config.tail_tokens:
                end = total  # the question's last tokens pool their votes within one call
            cache.tail_enabled = end == total
            logits = model(input_ids=ids[:, pos:end], **cache_argument(model, cache), use_cache=True,
                           logits_to_keep=1).logits[0, -1]
            pos = end
            if progress:
                progress(pos, total)
    return logits


@dataclass
class Generation:
    """One answer: its text, its usage (prompt, completion and reused tokens, prefill and decode seconds) and
    the selection trace of what its heads read. Each call has its own, whichever thread asks next."""

    text: str = ""
    usage: dict = field(default_factory=dict)
    trace: SelectionTrace | None = None


class AnswerStream(Iterator[str]):
    """The pieces of one answer, as `LongHeadsModel.stream` decides them. Once the stream has ended (or has been
    closed after its first piece), `generation` holds the whole answer with its usage and trace."""

    def __init__(self, pieces: Iterator[str], generation: Generation):
        self._pieces = pieces
        self.generation = generation

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating; the engine is free again and `generation` holds what was decided so far."""
        self._pieces.close()


@dataclass
class _Encoded:
    cache: LongHeadsCache
    ids: list[int]  # tokens whose keys and values the cache holds


class LongHeadsModel:
    """A loaded model with LongHeads enabled. Thread-safe: one generation runs at a time."""

    def __init__(self, model, tokenizer, config: LongHeadsConfig, model_name: str):
        self.model = enable(model, config)
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.device = next(model.parameters()).device
        # The latest answer's trace and usage, in whichever thread it ran: `Generation` is each call's own.
        self.last_trace: SelectionTrace | None = None
        self.last_usage: dict = {}
        self._lock = threading.RLock()
        self._encoded: _Encoded | None = None
        text_config = model.config.get_text_config(decoder=True)
        self.num_layers = text_config.num_hidden_layers
        self.num_heads = self.model.longheads.num_heads  # this rank's, under tensor parallelism
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._eos = {t for t in eos + [tokenizer.eos_token_id] if t is not None}

    @property
    def max_context(self) -> int:
        return self.config.max_context

    # --- text ----------------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    # --- encoding ------------------------------------------------------------------------------------------
    def encode(self, prompt: Prompt, progress: Progress | None = None) -> int:
        """Encode `prompt` into the document cache so that later prompts sharing its prefix start fast."""
        with self._lock:
            ids, _ = self._tokenize(self.render(prompt))
            self._check_length(len(ids))
            self._prefill(ids, progress)
            return len(ids)

    def _check_length(self, n_prompt: int) -> None:
        if n_prompt == 0:
            raise ValueError("The prompt is empty.")
        if n_prompt >= self.max_context:
            raise ContextTooLongError(n_prompt, self.max_context)

    def _prefill(self, ids: list[int], progress: Progress | None, room: int = 0) -> tuple[torch.Tensor, int]:
        """Make the cache hold `ids` (and room for `room` more tokens), reusing the longest cached prefix;
        returns (last logits, reused)."""
        w = self.config.chunk_size
        old = self._encoded
        shared = 0
        if old is not None:
            # The last prompt token always runs again, because its logits start the answer, and so do the
            # last `tail_tokens`: they pool their votes within one call, and a reused token's vote is gone.
            limit = min(len(old.ids), len(ids) - max(1, self.config.tail_tokens))
            while shared < limit and old.ids[shared] == ids[shared]:
                shared += 1
        # Whole chunks only: a chunk's summary needs all its tokens from one pass.
        reused = shared - shared % w
        total = len(ids)
        # Another document reuses the old cache's storage where it is large enough (no new allocation, which
        # for offloaded caches means pinning gigabytes again); otherwise the old cache goes first, so that the
        # two are never held at once.
        if old is not None and (reused > 0 or old.cache.capacity() >= total + room):
            cache = old.cache
            cache.crop(reused)
        else:
            cache, reused = None, 0
        self._encoded = old = None  # until the cache is consistent again
        try:
            if cache is None:
                cache = LongHeadsCache(self.model)
            cache.reserve(total + room)
            logits = encode_pieces(self.model, cache, torch.tensor([ids], device=self.device), reused, progress)
        except Exception as exc:
            if _is_oom(exc):
                del cache  # the traceback would keep it (and its memory) alive
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise self._out_of_memory(exc, f"encoding {total:,} tokens") from exc
            raise
        self._encoded = _Encoded(cache, list(ids))
        return logits, reused

    def _out_of_memory(self, exc: BaseException, doing: str) -> OutOfMemoryError:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not self.config.cpu_offload:
            advice = "Enable cpu_offload (and offload_keys), use a smaller max_context, or a smaller model."
        elif not self.config.offload_keys:
            advice = "Enable offload_keys too, free CPU memory, or use a smaller max_context or model."
        else:
            advice = "Free CPU memory, or use a smaller max_context or a smaller model."
        return OutOfMemoryError(f"Out of memory while {doing} on {self.device} ({cause}). {advice}")

    # --- generation ---------------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, max_new_tokens: int = 256, stop: list[str] | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 num_beams: int | None = None) -> str:
        return self.answer(prompt, max_new_tokens, stop, temperature, top_p, seed, num_beams).text

    def answer(self, prompt: Prompt, max_new_tokens: int = 256, stop: list[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               num_beams: int | None = None) -> Generation:
        """`generate`, with the answer's usage and selection trace."""
        stream = self.stream(prompt, max_new_tokens, stop, temperature, top_p, seed, num_beams)
        for _ in stream:
            pass
        return stream.generation

    def stream(self, prompt: Prompt, max_new_tokens: int = 256, stop: list[str] | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               num_beams: int | None = None) -> AnswerStream:
        """Yield the answer in text pieces. Closing the generator stops generation.

        With temperature 0 the answer is the best of `num_beams` beams by mean token log-probability, and pieces
        are yielded as soon as every beam agrees on them. By default that is DEFAULT_BEAMS beams for a prompt
        longer than the attention length, and one (greedy decoding) for a prompt the model reads whole, where
        beams measured no better (docs/design.md). With a temperature, tokens are sampled. The stream's
        `generation` holds the answer, its usage and its trace once it has ended."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
        if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams={num_beams!r} must be an integer >= 1")
        if num_beams is not None and num_beams > 1 and temperature > 0:
            raise ValueError(f"num_beams={num_beams} needs temperature=0: beam search does not sample")
        stop = [s for s in (stop or []) if s]
        text = self.render(prompt)
        ids, offsets = self._tokenize(text)
        self._check_length(len(ids))
        if num_beams is None:
            num_beams = DEFAULT_BEAMS if temperature == 0 and len(ids) > self.config.attention_length else 1
        generation = Generation()
        pieces = self._stream(text, ids, offsets, max_new_tokens, stop, temperature, top_p, seed, num_beams,
                              generation)
        return AnswerStream(pieces, generation)

    def _stream(self, text, ids, offsets, max_new_tokens, stop, temperature, top_p, seed, num_beams,
                generation: Generation) -> Iterator[str]:
        with self._lock:
            generator = torch.Generator(device=self.device)
            if seed is not None:
                generator.manual_seed(seed)
            t0 = time.perf_counter()
            budget = min(max_new_tokens, self.max_context - len(ids))
            logits, reused = self._prefill(ids, None, budget)
            t1 = time.perf_counter()
            search = BeamSearch(self.model, self._encoded.cache, len(ids), logits, num_beams, stop, self._eos,
                                self._decode, budget, temperature, top_p, generator)
            best = search.first
            try:
                with torch.inference_mode():
                    for _ in range(budget):
                        if not search.step():
                            break
                        piece = search.agreed_text()
                        if piece:
                            yield piece
                    best = search.best()
                    search.settle(best)
                    self._encoded.ids[len(ids) :] = best.tokens
                if len(best.text) > search.emitted:
                    yield best.text[search.emitted :]
            except Exception as exc:
                # Some layers may have stored a token and others not: drop the cache (and the frame's reference,
                # which the traceback would keep alive).
                self._encoded = search = None
                if _is_oom(exc):
                    raise self._out_of_memory(exc, f"generating after {len(ids):,} prompt tokens") from exc
                raise
            finally:
                t2 = time.perf_counter()
                if search is not None and best is search.first:
                    # Closed while decoding: the beam ahead so far, with the text that was yielded of it.
                    best = search.best()
                    generation.text = best.text[: search.emitted]
                else:
                    generation.text = best.text
                generation.usage = {
                    "prompt_tokens": len(ids),
                    "completion_tokens": len(best.tokens),
                    "cached_tokens": reused,
                    "prefill_seconds": t1 - t0,
                    "decode_seconds": t2 - t1,
                }
                generation.trace = self._make_trace(text, ids, offsets, len(best.tokens), best.steps)
                self.last_usage, self.last_trace = generation.usage, generation.trace

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # --- trace ---------------------------------------------------------------------------------------------
    def _make_trace(self, text, ids, offsets, n_generated, steps) -> SelectionTrace:
        w = self.config.chunk_size
        total = len(ids) + n_generated
        token_spans = [(s, min(s + w, total)) for s in range(0, total, w)]
        char_spans = []
        for start, end in token_spans:
            if start >= len(ids):
                char_spans.append((len(text), len(text)))
            else:
                char_spans.append((offsets[start][0], offsets[min(end, len(ids)) - 1][1]))
        kept = []
        for step in range(len(steps)):
            current = (len(ids) - 1 + step) // w
            always = set(range(self.config.sink_chunks))
            always.update(range(max(0, current - self.config.recent_chunks), current + 1))
            kept.append(always)
        return SelectionTrace(
            chunk_size=w, num_layers=self.num_layers, num_heads=self.num_heads, prompt_text=text,
            prompt_tokens=len(ids), chunk_token_spans=token_spans, chunk_char_spans=char_spans,
            selections=torch.stack(steps), sink_chunks=self.config.sink_chunks,
            recent_chunks=self.config.recent_chunks, always_kept=kept,
        )

    def reset(self) -> None:
        """Forget the cached document encoding (frees its memory)."""
        with self._lock:
            self._encoded = None


def load(model: str | None = None, *, config: LongHeadsConfig | None = None, device: str | None = None,
         dtype: str | torch.dtype | None = None, device_map: str | dict | None = None,
         offload_folder: str | None = None) -> LongHeadsModel:
    """Load a model by hub id, local path or GGUF file (default: the embedded SmolLM2-135M-Instruct).

    `device_map` ("auto", or module names to devices) spreads a model that outgrows one GPU over several (and the
    CPU or disk, `offload_folder`) through transformers and accelerate; each cache layer then lives on its
    layer's device."""
    config = config or LongHeadsConfig()
    device = resolve_device(device)
    lm, tokenizer, name = load_model_and_tokenizer(model, device, resolve_dtype(dtype, device), device_map,
                                                   offload_folder)
    return LongHeadsModel(lm, tokenizer, config, name)


_SHARED: dict[tuple, LongHeadsModel] = {}
_SHARED_LOCK = threading.Lock()


def load_shared(model: str | None = None, *, config: LongHeadsConfig | None = None, device: str | None = None,
                dtype: str | torch.dtype | None = None) -> LongHeadsModel:
    """`load`, but one engine per (model, config, device, dtype) in the process: integrations built from a model
    name share it (and its document cache) instead of loading the weights again."""
    key = (model, device, str(dtype), repr(config))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = load(model, config=config, device=device, dtype=dtype)
        return _SHARED[key]
