"""The engine's public behaviour: configuration errors, unsupported models, limits, document cache, trace."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import longheads
from longheads.engine import LongHeadsModel, encode_pieces
from longheads.trace import selection_step


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"chunk_size": 8}, "chunk_size"),
        ({"chunk_size": "256"}, "chunk_size"),
        ({"attention_length": 1000}, "attention_length"),
        ({"attention_length": 512}, "attention_length"),
        ({"selection": "random"}, "selection"),
        ({"vote_scope": "loud"}, "vote_scope"),
        ({"votes_per_token": 0}, "votes_per_token"),
        ({"votes_per_token": True}, "votes_per_token"),
        ({"sink_chunks": -1}, "sink_chunks"),
        ({"max_context": 10}, "max_context"),
        ({"cpu_offload": "yes"}, "cpu_offload"),
        ({"offload_keys": True}, "offload_keys"),  # without cpu_offload
        ({"cpu_offload": True, "offload_keys": 1}, "offload_keys"),
        ({"compile_layers": 1}, "compile_layers"),
        ({"prefill_piece": 1000}, "prefill_piece"),  # not a multiple of the chunk size (256)
        ({"prefill_piece": 0}, "prefill_piece"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(longheads.ConfigError, match=rf"LongHeadsConfig\.{field}=.*invalid"):
        longheads.LongHeadsConfig(**kwargs)


def test_attention_length_beyond_pretrained_length_is_refused(engine):
    config = longheads.LongHeadsConfig(attention_length=16384)
    with pytest.raises(longheads.ConfigError, match="pretrained length \\(8192\\)"):
        longheads.enable(engine.model.__class__(engine.model.config), config)


def test_model_without_rope_is_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(longheads.UnsupportedModelError, match="no rotary position embedding"):
        longheads.enable(gpt2)


def test_bad_model_name_gives_a_load_error():
    with pytest.raises(longheads.ModelLoadError, match="Could not load model"):
        longheads.load("/nonexistent/model/path")


def test_prompt_longer_than_max_context_is_refused(engine):
    small = LongHeadsModel(engine.model, engine.tokenizer, longheads.LongHeadsConfig(max_context=512),
                           engine.model_name)
    try:
        with pytest.raises(longheads.ContextTooLongError, match=r"is 1,\d{3} tokens long.*maximum context is 512"):
            small.generate("word " * 1200)
    finally:
        longheads.enable(engine.model, engine.config)


def test_caches_on_one_model_keep_their_own_question_state():
    """Each LongHeadsCache holds its sequence's question-time votes: two prompts beyond the attention length,
    encoded one after the other and then decoded in turns, give the logits and selections each gives alone."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256)).eval()
    longheads.enable(model, longheads.LongHeadsConfig(chunk_size=16, attention_length=128, tail_tokens=4))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 64, (1, n), generator=gen) for n in (500, 421)]
    answers = [torch.randint(0, 64, (6,), generator=gen).tolist() for _ in prompts]

    def step(cache, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(input_ids=torch.tensor([[token]]), **longheads.cache_argument(model, cache), use_cache=True)
        return out.logits[0, -1], selection_step(cache, 4, 8)

    with torch.inference_mode():
        alone = []
        for ids, tokens in zip(prompts, answers, strict=True):
            cache = longheads.LongHeadsCache(model)
            encode_pieces(model, cache, ids)
            alone.append([step(cache, t) for t in tokens])
        caches = [longheads.LongHeadsCache(model) for _ in prompts]
        for cache, ids in zip(caches, prompts, strict=True):
            encode_pieces(model, cache, ids)
        turns = [[], []]
        for i in range(6):
            for k in (0, 1):
                turns[k].append(step(caches[k], answers[k][i]))
    for want, got in zip(alone, turns, strict=True):
        for (logits, sel), (logits2, sel2) in zip(want, got, strict=True):
            assert torch.equal(sel, sel2) and torch.equal(logits, logits2)


def test_generate_stream_stop_and_usage(engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = engine.generate(messages, max_new_tokens=40)
    pieces = list(engine.stream(messages, max_new_tokens=40))
    assert "".join(pieces) == full and len(pieces) > 1
    assert "Paris" in full
    # A multi-token stop string cuts the answer right before its first occurrence.
    stop = full[full.index("Paris") :][:4]
    stopped = engine.generate(messages, max_new_tokens=40, stop=[stop])
    assert stopped == full[: full.index(stop)]
    usage = engine.last_usage
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 40


# About 4,260 tokens with the chat template: just beyond the attention length (4096), so LongHeads selects. The
# document cache and trace tests share it, so that the trace test reuses the encoding the cache test leaves.
BELLS = " ".join(f"Line {i}: the harbour bell rang {i % 7} times that evening." for i in range(270))


def test_document_cache_reuses_the_prefix_and_gives_the_same_answer(engine):
    document = BELLS
    q1 = longheads.document_messages(document, "How many times did the bell ring on line 3?")
    q2 = longheads.document_messages(document, "What rang in the harbour?")
    other = " ".join(f"Note {i}: the ferry carried {i % 5} carts across the sound." for i in range(290))
    engine.reset()
    engine.generate(longheads.document_messages(other, "What did the ferry carry?"), max_new_tokens=4)
    storage = engine._encoded.cache
    n = engine.encode(q1)
    assert n > 4096  # beyond the attention length: LongHeads selection is active
    # Another, shorter document: encoded from scratch into the storage the first one left.
    assert engine._encoded.cache is storage
    # Greedy: what is reused is the prompt's encoding, whatever decodes after it (tests/test_beams.py for beams).
    first = engine.generate(q2, max_new_tokens=12, num_beams=1)
    assert engine.last_usage["cached_tokens"] >= n - 300
    engine.reset()
    fresh = engine.generate(q2, max_new_tokens=12, num_beams=1)
    assert engine.last_usage["cached_tokens"] == 0
    assert first == fresh


def test_each_answer_carries_its_own_text_usage_and_trace(engine):
    """`answer` and a stream's `generation` belong to their call: a later call leaves them as they were."""
    q1 = longheads.document_messages(BELLS, "How many times did the bell ring on line 3?")
    q2 = longheads.document_messages(BELLS, "What rang in the harbour?")
    first = engine.answer(q1, max_new_tokens=6)
    assert first.text == engine.generate(q1, max_new_tokens=6)
    stream = engine.stream(q2, max_new_tokens=6)
    assert stream.generation.trace is None  # nothing decided yet
    pieces = list(stream)
    second = stream.generation
    assert second.text == "".join(pieces)
    assert second.trace.prompt_text == engine.render(q2) and first.trace.prompt_text == engine.render(q1)
    assert first.usage["completion_tokens"] == len(first.trace.selections) - 1 > 0
    assert second.usage["cached_tokens"] > 0 and second.usage["prompt_tokens"] == second.trace.prompt_tokens
    # Closed after its first piece: the generation holds what was decided, and the engine is free again.
    stopped = engine.stream(q1, max_new_tokens=6, num_beams=1)
    piece = next(stopped)
    stopped.close()
    assert stopped.generation.text.startswith(piece) and len(stopped.generation.trace.selections) >= 1
    assert engine._lock.acquire(blocking=False)
    engine._lock.release()


def test_trace_describes_chunks_and_selections(engine):
    engine.generate(longheads.document_messages(BELLS, "How often did the bell ring on line 10?"), max_new_tokens=5)
    trace = engine.last_trace
    cfg = engine.config
    assert trace.prompt_tokens > cfg.attention_length
    assert trace.selections.shape[1:] == (engine.num_layers, engine.num_heads, cfg.slots)
    assert trace.selections.shape[0] == engine.last_usage["completion_tokens"] + 1
    assert trace.num_chunks == -(-(trace.prompt_tokens + engine.last_usage["completion_tokens"]) // cfg.chunk_size)
    counts = trace.chunk_counts()
    assert counts.shape == (trace.num_chunks,) and counts[0] == trace.selections[:, :, :, 0].numel()
    assert trace.head_grid(0).shape == (engine.num_layers, engine.num_heads)
    top = trace.top_chunks(5)
    assert top and all(0 < c < trace.num_chunks for c in top)
    start, end = trace.chunk_char_spans[top[0]]
    assert 0 <= start < end <= len(trace.prompt_text) and "Line" in trace.chunk_text(top[0])
    assert torch.all(trace.selections < trace.num_chunks)


def test_out_of_memory_while_encoding_is_a_clear_error_and_the_engine_stays_usable(engine, monkeypatch):
    messages = longheads.document_messages("The lighthouse keeper keeps three cats.", "How many cats?")
    before = engine.generate(messages, max_new_tokens=6)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.model, "forward", out_of_memory)
    engine.reset()
    with pytest.raises(longheads.OutOfMemoryError, match=r"while encoding [\d,]+ tokens on cpu \(CUDA out of memory\. "
                       r"Tried to allocate 2\.00 GiB\)\. Enable cpu_offload"):
        engine.generate(messages, max_new_tokens=6)
    monkeypatch.undo()
    assert engine.generate(messages, max_new_tokens=6) == before  # nothing half-encoded was kept

    forward = engine.model.forward
    monkeypatch.setattr(engine.model, "forward", lambda input_ids, **kwargs: (
        out_of_memory() if input_ids.shape[1] == 1 else forward(input_ids=input_ids, **kwargs)))
    with pytest.raises(longheads.OutOfMemoryError, match=r"while generating after [\d,]+ prompt tokens on cpu"):
        engine.generate(messages, max_new_tokens=6)
    monkeypatch.undo()
    assert engine.generate(messages, max_new_tokens=6) == before


def _trace(rows: list[list[list[int]]]) -> longheads.SelectionTrace:
    """A trace of 12 chunks whose single layer's heads read the given chunks at each step."""
    return longheads.SelectionTrace(
        chunk_size=4, num_layers=1, num_heads=len(rows[0]), prompt_text="x" * 48, prompt_tokens=48,
        chunk_token_spans=[(4 * i, 4 * i + 4) for i in range(12)],
        chunk_char_spans=[(4 * i, 4 * i + 4) for i in range(12)],
        selections=torch.tensor(rows, dtype=torch.int32)[:, None], always_kept=[{0, 11}] * len(rows),
    )


def test_top_chunks_leave_out_what_a_neutral_question_reads_too():
    # Chunk 3 is read by three heads whatever is asked; this answer also read chunk 7 with two heads.
    answer = _trace([[[0, 3, 7], [0, 3, 7], [0, 3, 11], [0, 5, 11]]] * 2)
    neutral = _trace([[[0, 3, 11], [0, 3, 11], [0, 3, 11], [0, 9, 11]]] * 4)
    assert answer.top_chunks(3) == [3, 7, 5]
    assert answer.top_chunks(3, baseline=neutral) == [7, 5]  # 3: no more than usual; 9: read less
    assert answer.top_chunks(1, baseline=neutral) == [7]
