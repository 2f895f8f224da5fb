"""Beam search over one LongHeads document cache.

The document's encoding is stored once. On the PyTorch path the beams decode together, one forward call per
step: each has a tail of its own in the cache for its tokens and the votes its question and they pooled
(`LongHeadsCache.begin_beams`), and each step says which beam every new one continues. On the Triton path the
beams take turns on the cache, each keeping copies of what its own tokens added (`LongHeadsCache.save_tail`),
put back before it is extended. With one beam nothing is copied, and the search is greedy decoding (or
sampling, with a temperature).

Why beams by default: with greedy decoding the model often starts an answer from the question's words and
never reaches the fact its heads read ("The day after the ferry ... leaves"), although it scores the right
answer higher. Four beams ranked by mean token log-probability answered more of the prose grids' questions at
every length, and as many passkeys (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import batches_beams
from .cache import LongHeadsCache, TailState, cache_argument
from .trace import selection_step

DEFAULT_BEAMS = 4


@dataclass(eq=False)
class Beam:
    tokens: list[int]
    score: float  # sum of the tokens' log-probabilities, the ending token (end of text or stop) included
    text: str
    steps: list[torch.Tensor]  # the selection trace: the last prompt token's, then one per token fed back
    logprobs: torch.Tensor | None = None  # of the next token, while the beam is live
    # Several beams only: where the cache keeps what this beam's tokens added. Taking turns: a copy of the cache
    # past the prompt; decoding together: the beam's row, and once it has finished, a copy of its base's row.
    state: TailState | int | tuple | None = None
    scored_tokens: int = 0  # tokens the score sums over
    base: Beam | None = None  # a finished beam: the live beam whose cache state it extends
    pending: int | None = None  # a beam finished by a stop string: its last token, not yet fed to the model

    @property
    def mean(self) -> float:
        return self.score / max(self.scored_tokens, 1)


class BeamSearch:
    """The beams of one answer, from the last prompt token's `logits`; `cache` holds the prompt's `start` tokens.

    `decode` turns token ids into text; `eos` are the ids that end an answer."""

    def __init__(self, model: torch.nn.Module, cache: LongHeadsCache, start: int, logits: torch.Tensor,
                 num_beams: int, stop: list[str], eos: set[int], decode: Callable[[list[int]], str],
                 max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None):
        self.model, self.cache, self.start, self.num_beams, self.stop = model, cache, start, num_beams, stop
        self.eos, self.decode = eos, decode
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        text_config = model.config.get_text_config(decoder=True)
        heads = text_config.num_attention_heads
        self._trace_shape = model.longheads.num_heads, model.longheads.config.slots  # this rank's heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        self.together = num_beams > 1 and batches_beams(model.longheads.config, model.device, head_dim)
        self.first = Beam([], 0.0, "", [self._selection_step()], _logprobs(logits))
        if self.together:
            cache.begin_beams(max_new_tokens)
            self.first.state = 0
        elif num_beams > 1:
            self.first.state = cache.save_tail(start)
        self.live = [self.first]
        self.done: list[Beam] = []
        self.loaded = self.first  # the beam whose state the cache holds
        self.emitted = 0  # characters of the answer already yielded
        # A stop string may begin at the end of the agreed text: that much is held back.
        self.hold = max((len(s) for s in stop), default=1) - 1

    def step(self) -> bool:
        """Extend the beams by one token; False once `num_beams` answers have finished (or none is left)."""
        candidates = [(beam.score + logprob, beam, token) for beam in self.live for token, logprob in self._next(beam)]
        candidates.sort(key=lambda c: -c[0])
        extended: list[Beam] = []
        parents: list[Beam] = []
        for score, parent, token in candidates:
            if len(extended) == self.num_beams:
                break
            n = len(parent.tokens) + 1
            if token in self.eos:
                self._finish(Beam(parent.tokens, score, parent.text, parent.steps, scored_tokens=n, base=parent))
                continue
            tokens = parent.tokens + [token]
            text = self.decode(tokens)
            cut = min((text.find(s) for s in self.stop if s in text), default=-1)
            if cut >= 0:
                self._finish(Beam(tokens, score, text[:cut], parent.steps, scored_tokens=n, base=parent,
                                  pending=token))
                continue
            extended.append(Beam(tokens, score, text, parent.steps, scored_tokens=n))
            parents.append(parent)
        self.live = extended
        if self.together:
            if extended:
                self.cache.select_beams([parent.state for parent in parents])
                logits = self._forward([beam.tokens[-1] for beam in extended])
                for row, beam in enumerate(extended):
                    beam.state, beam.logprobs = row, _logprobs(logits[row])
                    beam.steps = beam.steps + [self._selection_step(row)]
        else:
            for beam, parent in zip(extended, parents, strict=True):
                if parent is not self.loaded:
                    self.cache.restore_tail(parent.state)
                beam.logprobs = _logprobs(self._forward([beam.tokens[-1]])[0])
                beam.steps = beam.steps + [self._selection_step()]
                if self.num_beams > 1:
                    beam.state = self.cache.save_tail(self.start)
                self.loaded = beam
        return len(self.done) < self.num_beams and bool(self.live)

    def _finish(self, beam: Beam) -> None:
        if self.together:  # the base's row moves on with the next step: keep a copy of it
            beam.state = self.cache.beam_snapshot(beam.base.state)
        self.done.append(beam)

    def _next(self, beam: Beam) -> list[tuple[int, float]]:
        if self.temperature == 0:
            top = beam.logprobs.topk(self.num_beams)
            return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        probs = torch.softmax(beam.logprobs / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < self.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        token = int(torch.multinomial(probs, 1, generator=self.generator))
        return [(token, float(beam.logprobs[token]))]

    def agreed_text(self) -> str:
        """The new part of the text every beam, live or finished, starts with: whichever wins, the answer
        starts with it too."""
        beams = self.live + self.done
        shortest = min(len(b.tokens) for b in beams)
        n = 0
        while n < shortest and all(b.tokens[n] == beams[0].tokens[n] for b in beams):
            n += 1
        text = self.decode(beams[0].tokens[:n])
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):  # an unfinished UTF-8 character
            safe = min(safe, len(text) - 1)
        if safe <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : safe], safe
        return piece

    def best(self) -> Beam:
        """The answer: the finished beam with the best mean log-probability (the live ones count when fewer
        than `num_beams` finished within the token budget)."""
        pool = self.done + (self.live if len(self.done) < self.num_beams else [])
        return sorted(pool, key=lambda b: -b.mean)[0]

    def settle(self, best: Beam) -> None:
        """Leave the cache holding the prompt and `best`'s tokens, as if it alone had been decoded."""
        base = best.base or best
        if self.together:
            self.cache.end_beams(best.state if best.base else self.cache.beam_snapshot(best.state))
        elif base is not self.loaded:
            self.cache.restore_tail(base.state)
        self.loaded = base
        if best.pending is not None:
            self._forward([best.pending])
            best.steps = best.steps + [self._selection_step()]
            best.pending = None

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per beam (per sequence, when they take turns) to the cache; returns the next-token
        logits [len(tokens), vocab]."""
        ids = torch.tensor(tokens, device=self.model.device)[:, None]
        return self.model(input_ids=ids, **cache_argument(self.model, self.cache), use_cache=True).logits[:, -1]

    def _selection_step(self, beam: int | None = None) -> torch.Tensor:
        return selection_step(self.cache, *self._trace_shape, beam)


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)
