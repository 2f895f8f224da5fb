"""Beam search takes turns on one cache: it must answer exactly as beams decoded on caches of their own."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import longheads
from longheads.beams import BeamSearch
from longheads.engine import LongHeadsModel, encode_pieces
from longheads.trace import selection_step

STOP = "e"  # a common letter: some beams end on it, others at the token budget
PROMPT = " ".join(f"line {i}: the {i % 7}th of {i % 5} keys" for i in range(60))  # ~700 tokens: beyond 256


@pytest.fixture(scope="module")
def tiny(engine) -> LongHeadsModel:
    """A random Llama small enough to replay every beam from the prompt, with the embedded model's tokenizer;
    the prompt is longer than its attention length, so selection and the question's votes are at work."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(engine.tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = engine.tokenizer.eos_token_id
    cfg = longheads.LongHeadsConfig(chunk_size=16, attention_length=256, tail_tokens=8)
    return LongHeadsModel(model, engine.tokenizer, cfg, "tiny")


def replayed_search(lh: LongHeadsModel, prompt: str, beams: int, max_new_tokens: int,
                    stop: str | None = STOP) -> tuple[list[int], str, torch.Tensor]:
    """The search as specified, with every candidate's log-probabilities computed afresh: a copy of the
    prompt's cache (with the question's tally as the prompt left it), then the beam's tokens.
    Returns the winner's tokens, text and selections (the trace's)."""
    ids = torch.tensor([lh._tokenize(prompt)[0]])
    cache = longheads.LongHeadsCache(lh.model)
    with torch.inference_mode():
        logits = encode_pieces(lh.model, cache, ids)
    shape = (lh.num_heads, lh.config.slots)
    first_step = selection_step(cache, *shape)

    def replay(tokens: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mine = copy.deepcopy(cache)
        out, steps = logits, [first_step]
        with torch.inference_mode():
            for t in tokens:
                step = torch.tensor([[t]])
                out = lh.model(input_ids=step, **longheads.cache_argument(lh.model, mine), use_cache=True).logits[0, -1]
                steps.append(selection_step(mine, *shape))
        return torch.log_softmax(out.float(), -1), steps

    def next_logprobs(tokens: list[int]) -> torch.Tensor:
        return replay(tokens)[0]

    live, done = [([], 0.0)], []
    for _ in range(max_new_tokens):
        candidates = []
        for tokens, score in live:
            top = next_logprobs(tokens).topk(beams)
            pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
            candidates += [(score + v, tokens + [i]) for v, i in pairs]
        candidates.sort(key=lambda c: -c[0])
        live = []
        for score, tokens in candidates:
            if len(live) == beams:
                break
            text = lh.tokenizer.decode(tokens, skip_special_tokens=True)
            if tokens[-1] in lh._eos or (stop and stop in text):
                done.append((score / len(tokens), tokens, text.split(stop)[0] if stop else text))
            else:
                live.append((tokens, score))
        if len(done) >= beams or not live:
            break
    pool = done + ([(s / len(t), t, lh.tokenizer.decode(t, skip_special_tokens=True)) for t, s in live]
                   if len(done) < beams else [])
    _, tokens, text = sorted(pool, key=lambda d: -d[0])[0]
    tokens = [t for t in tokens if t not in lh._eos]
    return tokens, text, torch.stack(replay(tokens)[1])


@pytest.mark.parametrize(("beams", "stop"), [(1, STOP), (3, STOP), (3, None)])
def test_beams_answer_as_if_each_had_its_own_cache(tiny: LongHeadsModel, beams: int, stop: str | None) -> None:
    want_tokens, want, selections = replayed_search(tiny, PROMPT, beams, max_new_tokens=10, stop=stop)
    stops = [stop] if stop else None
    got = tiny.generate(PROMPT, max_new_tokens=10, stop=stops, num_beams=beams)
    assert got == want
    assert tiny.last_usage["completion_tokens"] == len(want_tokens)
    # The trace is the winner's: one step for the last prompt token, then one per token it generated.
    assert torch.equal(tiny.last_trace.selections, selections) and len(selections) == len(want_tokens) + 1
    # The cache now holds the prompt and the winner's tokens: the next question reuses the prompt.
    assert tiny._encoded.ids[-len(want_tokens):] == want_tokens
    again = tiny.generate(PROMPT, max_new_tokens=10, stop=stops, num_beams=beams)
    assert again == want and tiny.last_usage["cached_tokens"] > 0
    assert torch.equal(tiny.last_trace.selections, selections)  # the question's tail voted again, whole


def test_streamed_pieces_are_what_every_beam_agreed_on(tiny: LongHeadsModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every piece the search agrees on, with the texts of all its beams (live and finished) at that moment: the
    # stream yields the piece right away, before any beam moves on.
    agreed: list[tuple[str, list[str]]] = []
    agreed_text = BeamSearch.agreed_text

    def recording(search: BeamSearch) -> str:
        piece = agreed_text(search)
        if piece:
            agreed.append((piece, [beam.text for beam in search.live + search.done]))
        return piece

    monkeypatch.setattr(BeamSearch, "agreed_text", recording)
    pieces = list(tiny.stream(PROMPT, max_new_tokens=12, num_beams=4))
    # The pieces agreed on while the beams ran come first, in order; only the winner's rest may follow them.
    assert pieces[: len(agreed)] == [piece for piece, _ in agreed] and len(pieces) - len(agreed) in (0, 1)
    for i, (_, beams) in enumerate(agreed):
        so_far = "".join(pieces[: i + 1])
        assert all(text.startswith(so_far) for text in beams), (so_far, beams)
    # Some pieces came while the beams still disagreed on what follows them: the stream did not wait for the end.
    assert len(agreed) >= 2 and any(len(set(beams)) > 1 for _, beams in agreed)
    monkeypatch.undo()
    assert "".join(pieces) == tiny.generate(PROMPT, max_new_tokens=12, num_beams=4)
    assert all(pieces)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_beams": 0}, "num_beams=0 must be an integer >= 1"),
    ({"num_beams": 2, "temperature": 0.7}, "num_beams=2 needs temperature=0"),
])
def test_bad_beam_settings_are_refused(tiny: LongHeadsModel, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.generate(PROMPT, max_new_tokens=4, **kwargs)


def test_default_is_beams_beyond_the_attention_length_and_greedy_within(tiny: LongHeadsModel) -> None:
    short = PROMPT[:200]
    assert tiny.count_tokens(short) < tiny.config.attention_length < tiny.count_tokens(PROMPT)
    for prompt, default in ((PROMPT, 4), (short, 1)):
        beams, greedy = (replayed_search(tiny, prompt, n, 8, stop=None)[1] for n in (4, 1))
        assert beams != greedy  # without a stop string the beams' answers differ from greedy decoding's here
        assert tiny.generate(prompt, max_new_tokens=8) == (beams if default == 4 else greedy)
