"""LongHeads must not change a model whose whole sequence fits in the attention length."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import longheads

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             max_position_embeddings=512)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
}


def tiny_model(family: str, kv_heads: int, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(**{**SMALL, **overrides}, num_attention_heads=4, num_key_value_heads=kv_heads, **extra)
    config._attn_implementation = "sdpa"
    return model_cls(config).eval()


def lh_config(**kw) -> longheads.LongHeadsConfig:
    return longheads.LongHeadsConfig(chunk_size=16, attention_length=256, **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_prefill_decode_and_split_prefill_match_unmodified(family, kv_heads):
    model = tiny_model(family, kv_heads)
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        ref_steps = []
        cache = DynamicCache(config=model.config)
        model(ids[:, :150], **longheads.cache_argument(model, cache), use_cache=True)
        for t in range(150, 200):
            ref_steps.append(model(ids[:, t : t + 1], **longheads.cache_argument(model, cache), use_cache=True).logits)

        longheads.enable(model, lh_config())
        assert model.config._attn_implementation == "longheads"
        out = model(ids).logits  # no cache: state rebuilt from the full key/value
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)

        cache = longheads.LongHeadsCache(model)
        first = model(ids[:, :77], **longheads.cache_argument(model, cache), use_cache=True).logits
        second = model(ids[:, 77:150], **longheads.cache_argument(model, cache), use_cache=True).logits
        torch.testing.assert_close(torch.cat([first, second], 1), ref[:, :150], atol=2e-5, rtol=1e-4)
        for t, expected in zip(range(150, 200), ref_steps, strict=True):
            step = model(ids[:, t : t + 1], **longheads.cache_argument(model, cache), use_cache=True).logits
            torch.testing.assert_close(step, expected, atol=2e-5, rtol=1e-4)


def test_generate_matches_unmodified_below_attention_length():
    model = tiny_model("llama", 2)
    ids = torch.randint(0, 128, (1, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
        longheads.enable(model, lh_config())
        out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0,
                             **longheads.cache_argument(model, longheads.LongHeadsCache(model)))
    assert torch.equal(out, ref)


def test_disable_restores_the_original_attention_and_rotary():
    model = tiny_model("llama", 2)
    rotary = model.model.rotary_emb
    ids = torch.randint(0, 128, (1, 600), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits
        longheads.enable(model, lh_config())
        assert isinstance(model.model.rotary_emb, longheads.patch.Unrotated)
        longheads.enable(model, lh_config())  # twice: still wraps the model's own module, once
        assert model.model.rotary_emb.rotary is rotary
        longheads.disable(model)
        out = model(ids).logits
    assert model.config._attn_implementation == "sdpa"
    assert not longheads.is_enabled(model) and model.model.rotary_emb is rotary
    assert torch.equal(out, ref)  # beyond the attention length too: nothing of LongHeads is left


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rotary_is_the_identity_while_enabled_and_the_models_own_otherwise(family: str):
    """While enabled, the model's own rotary function receives cos 1 and sin 0 and hands queries and keys back
    unchanged; transformers' modules are not touched, so a second model of the family rotates as before."""
    from transformers.models import llama, mistral, qwen2, qwen3

    module = {"llama": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3}[family]
    rotate = getattr(module, f"modeling_{family}").apply_rotary_pos_emb
    model, untouched = tiny_model(family, 2), tiny_model(family, 2)
    rotary = model.model.rotary_emb
    longheads.enable(model, lh_config())
    head_dim = model.model.layers[0].self_attn.head_dim
    q, k = torch.randn(1, 4, 10, head_dim), torch.randn(1, 2, 10, head_dim)
    position_ids = torch.arange(10)[None]
    cos, sin = model.model.rotary_emb(q, position_ids)
    q_out, k_out = rotate(q, k, cos, sin)
    assert torch.equal(q_out, q) and torch.equal(k_out, k)
    real = untouched.model.rotary_emb(q, position_ids)
    assert torch.equal(real[0], rotary(q, position_ids)[0])
    q_rot, _ = rotate(q, k, *real)
    assert not torch.equal(q_rot, q)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = tiny_model(family, 2)(ids).logits
        assert torch.equal(untouched(ids).logits, ref)  # enabling another model changed nothing of this one


def test_transformers_generate_with_a_longheads_cache_is_the_engines_greedy_loop():
    """transformers' own `generate`, handed a LongHeadsCache, decodes what a plain greedy loop over the model's
    forward does, beyond the attention length too: no wrapper around `generate` is needed."""
    model = tiny_model("llama", 2)
    longheads.enable(model, lh_config(tail_tokens=8))
    ids = torch.randint(0, 128, (1, 400), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0,
                             **longheads.cache_argument(model, longheads.LongHeadsCache(model)))
        cache = longheads.LongHeadsCache(model)
        logits = model(ids, **longheads.cache_argument(model, cache), use_cache=True).logits[0, -1]
        tokens = []
        for _ in range(12):
            tokens.append(int(logits.argmax()))
            step = torch.tensor([[tokens[-1]]])
            logits = model(step, **longheads.cache_argument(model, cache), use_cache=True).logits[0, -1]
    assert out[0, 400:].tolist() == tokens
    assert cache.get_seq_length() == 400 + 12  # the loop also fed its last token


def test_beyond_attention_length_runs_and_differs_from_full_attention():
    model = tiny_model("qwen2", 2)
    ids = torch.randint(0, 128, (1, 700), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        longheads.enable(model, lh_config(tail_tokens=8))
        cache = longheads.LongHeadsCache(model)
        out = model(ids, **longheads.cache_argument(model, cache), use_cache=True).logits
    assert torch.isfinite(out).all()
    # Below the attention length nothing changes; beyond it heads read only their chunks.
    torch.testing.assert_close(out[:, :256], ref[:, :256], atol=2e-5, rtol=1e-4)
    assert (out[:, 300:] - ref[:, 300:]).abs().max() > 1e-3


def test_embedded_model_matches_unmodified(engine):
    """The real default model: LongHeads (prompt below 4k tokens) gives the unmodified model's logits."""
    model, tok = engine.model, engine.tokenizer
    text = "The lighthouse keeper wrote in his log every night. " * 40
    ids = tok(text, return_tensors="pt")["input_ids"][:, :400]
    with torch.no_grad():
        out = model(ids, **longheads.cache_argument(model, longheads.LongHeadsCache(model)), use_cache=True).logits
        longheads.disable(model)
        try:
            ref = model(ids).logits
        finally:
            longheads.enable(model, engine.config)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
@pytest.mark.parametrize("family", ["llama", "qwen3"])  # qwen3: norms on queries and keys inside attention
def test_compiled_layers_match_eager_beyond_the_attention_length(family):
    """compile_layers compiles the model's own code around the LongHeads attention, which stays eager: the
    logits, far beyond the attention length too, are the uncompiled model's. (A vocabulary larger than the
    prompt keeps any two tokens from having equal keys, whose tied chunk scores either run could break its
    own way; without question tokens, no votes tie either.)"""
    model = tiny_model(family, 2, vocab_size=4096)
    ids = torch.randint(0, 4096, (1, 700), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        longheads.enable(model, lh_config(tail_tokens=0))
        ref = model(ids, **longheads.cache_argument(model, longheads.LongHeadsCache(model))).logits
        longheads.disable(model)
        longheads.enable(model, lh_config(tail_tokens=0, compile_layers=True))
        out = model(ids, **longheads.cache_argument(model, longheads.LongHeadsCache(model))).logits
    assert all(getattr(layer, "longheads_compiled", False) for layer in model.model.layers)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_prefill_piece_changes_neither_logits_nor_selections():
    """The prompt is encoded in pieces of any multiple of the chunk size (even one that would leave a last
    piece shorter than the question's tail tokens, which the encoder folds into the piece before) with the
    same last logits and chunks chosen."""
    from longheads.engine import encode_pieces

    model = tiny_model("llama", 2, vocab_size=4096)
    ids = torch.randint(0, 4096, (1, 712), generator=torch.Generator().manual_seed(5))
    longheads.enable(model, lh_config(tail_tokens=12))
    results = []
    for piece in (1024, 96, 160, 704):  # 704: the last piece would hold 8 of the 12 tail tokens
        model.longheads.config.prefill_piece = piece
        cache = longheads.LongHeadsCache(model)
        logits = encode_pieces(model, cache, ids)
        results.append((logits, [layer.last_selection for layer in cache.layers]))
    for logits, selections in results[1:]:
        torch.testing.assert_close(logits, results[0][0], atol=2e-5, rtol=1e-4)
        for got, want in zip(selections, results[0][1], strict=True):
            assert torch.equal(got, want)
