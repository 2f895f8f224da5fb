"""Beam search over one cache: it must answer as beams decoded on caches of their own would.

Beams that take turns (the Triton path's search) must match those exactly. Beams decoded together (the PyTorch
path's) run one batched forward call per step, whose matrix products round differently from one sequence's in the
last bits; where no two chunks tie, they must select the same chunks and give the same logits to float32
rounding."""

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


@pytest.fixture
def in_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beams take turns on the cache, as on the Triton path, also where they could be decoded together."""
    monkeypatch.setattr(longheads.beams, "batches_beams", lambda *args: False)


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
def test_beams_answer_as_if_each_had_its_own_cache(tiny: LongHeadsModel, beams: int, stop: str | None,
                                                  in_turns: None) -> None:
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


def test_default_is_beams_beyond_the_attention_length_and_greedy_within(tiny: LongHeadsModel, in_turns: None) -> None:
    short = PROMPT[:200]
    assert tiny.count_tokens(short) < tiny.config.attention_length < tiny.count_tokens(PROMPT)
    for prompt, default in ((PROMPT, 4), (short, 1)):
        beams, greedy = (replayed_search(tiny, prompt, n, 8, stop=None)[1] for n in (4, 1))
        assert beams != greedy  # without a stop string the beams' answers differ from greedy decoding's here
        assert tiny.generate(prompt, max_new_tokens=8) == (beams if default == 4 else greedy)


@pytest.mark.parametrize("device,offload", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                            reason="needs a CUDA device")]),
    pytest.param("cuda", True, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs a CUDA device")]),
])
def test_beams_decoded_together_select_and_score_as_each_alone(device: str, offload: bool) -> None:
    """The cache's beams after one shared prompt (begin_beams, select_beams, end_beams) against each beam's tokens
    fed to a copy of the prompt's cache, on the PyTorch path. Distinct prompt tokens: in the first layer a key
    depends on its token alone, so a repeated token would tie two chunks exactly, and float32 rounding could break
    the tie either way."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512)).eval().to(device)
    config = longheads.LongHeadsConfig(chunk_size=16, attention_length=256, tail_tokens=8, backend="reference",
                                       cpu_offload=offload)
    longheads.enable(model, config)
    shape = (4, config.slots)
    ids = torch.randperm(2000, generator=torch.Generator().manual_seed(2))[:700][None].to(device)
    cache = longheads.LongHeadsCache(model)
    steps = [[11, 12, 13], [21, 22, 23], [31, 32, 33], [41, 42, 43]] * 5  # 20 steps: the beams cross a chunk
    parents = [[0, 0, 0], [2, 0, 1], [0, 0, 2], [1, 2, 2]] * 5

    def feed(cache, tokens: list[list[int]]) -> torch.Tensor:
        ids = torch.tensor(tokens, device=device)
        return model(input_ids=ids, **longheads.cache_argument(model, cache)).logits[:, -1]

    with torch.inference_mode():
        encode_pieces(model, cache, ids)
        prompt = copy.deepcopy(cache)
        cache.begin_beams(len(steps))
        paths = [[]]
        for tokens, rows in zip(steps, parents, strict=True):
            cache.select_beams(rows)
            paths = [paths[r] + [t] for r, t in zip(rows, tokens, strict=True)]
            logits = feed(cache, [[t] for t in tokens])
        for beam, path in enumerate(paths):
            alone = copy.deepcopy(prompt)
            for t in path:
                want = feed(alone, [[t]])[0]
            assert torch.equal(selection_step(cache, *shape, beam), selection_step(alone, *shape))
            torch.testing.assert_close(logits[beam], want, rtol=0, atol=1e-5)
        # One beam kept as the cache's single sequence: it goes on as the beam alone would.
        cache.end_beams(cache.beam_snapshot(1))
        alone = copy.deepcopy(prompt)
        for t in paths[1] + [7]:
            want = feed(alone, [[t]])[0]
        got = feed(cache, [[7]])[0]
        assert cache.get_seq_length() == alone.get_seq_length() == 700 + len(steps) + 1
        assert torch.equal(selection_step(cache, *shape), selection_step(alone, *shape))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_beams_decoded_together_leave_the_winner_in_the_cache(tiny: LongHeadsModel) -> None:
    assert longheads.beams.batches_beams(tiny.config, tiny.device, 16)  # the PyTorch path decodes them together
    first = tiny.answer(PROMPT, max_new_tokens=10, stop=[STOP], num_beams=3)
    # The cache holds the prompt and the winner's tokens (a stop string's last token included), one sequence again.
    held = first.usage["prompt_tokens"] + first.usage["completion_tokens"]
    assert len(tiny._encoded.ids) == tiny._encoded.cache.get_seq_length() == held
    assert all(layer.beams is None for layer in tiny._encoded.cache.layers)
    again = tiny.answer(PROMPT, max_new_tokens=10, stop=[STOP], num_beams=3)
    assert again.text == first.text and again.usage["cached_tokens"] > 0
    assert torch.equal(again.trace.selections, first.trace.selections)
