"""Chunk selection, chunk representations and position remapping, checked directly."""

from __future__ import annotations

import pytest
import torch

import longheads
from longheads.attention import ModelState, _chunk_attention, _pool_votes
from longheads.cache import LongHeadsLayer, SequenceState
from longheads.errors import ConfigError
from longheads.rope import PositionTable, apply_rope, rotation_matrix
from longheads.selection import (
    choose_chunks,
    paper_representation,
    row_means,
    score_maxlogit,
    score_rows,
    selection_rows,
    top_indices,
)


def cfg(**kw):
    return longheads.LongHeadsConfig(chunk_size=16, attention_length=128, **kw)  # 8 slots, 5 selected


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("current", [8, 9, 20, 57])
def test_choose_keeps_sink_and_recent_never_future_and_sorted(groups, current):
    config = cfg(recent_chunks=2)
    scores = torch.randn(6, current, generator=torch.Generator().manual_seed(current))
    chosen = choose_chunks(scores, current, config, groups=groups)
    assert chosen.shape == (6, config.slots - 1)
    for row in chosen.tolist():
        assert row == sorted(row) and len(set(row)) == len(row)
        assert 0 in row and current - 1 in row and current - 2 in row
        assert max(row) < current  # never the current chunk nor a future one
    if groups > 1:  # heads that share keys read the same chunks
        assert torch.equal(chosen[0], chosen[1]) and torch.equal(chosen[3], chosen[5])
    else:
        assert any(not torch.equal(chosen[0], row) for row in chosen[1:]) or current - 3 <= config.selected_chunks


def test_choose_picks_the_best_scoring_chunks():
    config = cfg()
    scores = torch.zeros(1, 30)
    best = [4, 11, 17, 22, 25]
    scores[0, best] = 5.0
    assert choose_chunks(scores, 30, config, groups=1)[0].tolist() == sorted([0, 29] + best)


def test_ties_go_to_the_later_chunk():
    # In layer 0 a key depends on its token alone, so chunks often tie exactly; the order must not be topk's.
    config = cfg()
    scores = torch.zeros(2, 30)
    scores[:, [3, 12]] = 1.0  # two clear winners, then 25 tied candidates
    assert choose_chunks(scores, 30, config, groups=1)[0].tolist() == [0, 3, 12, 26, 27, 28, 29]
    tied = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    assert top_indices(tied, 3).tolist() == [[5, 3, 2], [5, 4, 3]]


def test_maxlogit_finds_the_chunk_holding_the_matching_key():
    torch.manual_seed(0)
    w, d = 16, 32
    keys = torch.randn(1, 10 * w, d) * 0.1
    query = torch.randn(1, d)
    keys[0, 7 * w + 5] = query[0] * 3  # the "needle"
    rotary = _Rotary(d)
    cos, sin = rotary(keys, torch.arange(w + 1)[None])
    cos, sin = cos[0], sin[0]
    # The cache stores keys rotated at their place inside their chunk; scoring turns them back.
    local = torch.arange(10 * w) % w
    cached = apply_rope(keys, cos[local], sin[local])
    scores = score_maxlogit(query, cached, 10, w, rotation_matrix(cos[w], sin[w]), cos[:w], sin[:w])
    assert scores.shape == (1, 10) and int(scores.argmax()) == 7
    direct = (apply_rope(query, cos[w], sin[w]) @ keys[0].T).view(10, w).amax(-1)
    torch.testing.assert_close(scores[0], direct)


def test_rotation_matrix_is_the_rotary_rotation():
    rotary = _Rotary(16)
    cos, sin = rotary(torch.zeros(1), torch.tensor([[37]]))
    x = torch.randn(5, 16)
    torch.testing.assert_close(x @ rotation_matrix(cos[0, 0], sin[0, 0]), apply_rope(x, cos[0, 0], sin[0, 0]))


def test_selection_rows_are_chunk_blocks_then_single_tail_tokens():
    rows = selection_rows(first=100, per_token_from=140, total=144, w=16)
    assert rows.n_blocks == 3  # 100..111 (rest of chunk 6), 112..127, 128..139
    assert rows.starts.tolist() == [100, 112, 128, 140, 141, 142, 143]
    assert rows.ends.tolist() == [112, 128, 140, 141, 142, 143, 144]
    # A call shorter than the tail (a question after a cached document) is all single-token rows.
    rows = selection_rows(first=140, per_token_from=130, total=144, w=16)
    assert rows.n_blocks == 0 and rows.starts.tolist() == [140, 141, 142, 143]


def test_row_means_and_scores_in_slices_match_direct_computation():
    torch.manual_seed(0)
    q = torch.randn(4, 44, 8)
    means = row_means(q, selection_rows(first=100, per_token_from=140, total=144, w=16), offset=100)
    torch.testing.assert_close(means[:, 1], q[:, 12:28].mean(1))
    torch.testing.assert_close(means[:, -1], q[:, -1])
    keys = torch.randn(2, 9 * 16, 8)
    queries = torch.randn(2, 5, 8)
    direct = (queries @ keys.transpose(1, 2)).view(2, 5, 9, 16).amax(-1)
    torch.testing.assert_close(score_rows(queries, keys, 9, 16), direct)
    torch.testing.assert_close(score_rows(queries, keys, 9, 16, max_elements=100), direct)  # one chunk a slice


def test_paper_representation_is_a_convex_combination_of_chunk_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 16, 8), torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    cos, sin = torch.ones(16, 8), torch.zeros(16, 8)
    rep = paper_representation(q, k, v, cos, sin, 8**-0.5)
    assert rep.shape == (3, 8)
    # Identical keys make any attention-weighted mix equal to that key.
    same = torch.randn(1, 1, 8).expand(3, 16, 8)
    torch.testing.assert_close(paper_representation(q, same, v, cos, sin, 1.0), same[:, 0])


class _Rotary(torch.nn.Module):
    def __init__(self, d=8, base=100.0):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def test_selected_chunks_are_laid_out_within_the_attention_length():
    """The attention over selected chunks equals a direct computation with keys placed at 0..S*w-1 and the
    query right after them, whatever the chunks' original positions."""
    torch.manual_seed(0)
    config = cfg()
    w, d, heads = 16, 8, 2
    rotary = _Rotary(d)
    # One KV head per query head, so that each head reads chunks of its own.
    state = ModelState(config, rotary, PositionTable(rotary, 200), num_heads=heads, num_kv_heads=heads)
    layer = LongHeadsLayer(w, table=state.table)
    total = 50 * w + 5
    k_pre, v = torch.randn(1, heads, total, d), torch.randn(1, heads, total, d)
    layer.update(k_pre, v)  # keys arrive without rotary positions and are stored at their place in their chunk
    cos, sin = state.table.get(torch.device("cpu"))
    local = torch.arange(total) % w
    torch.testing.assert_close(layer.keys, apply_rope(k_pre, cos[local], sin[local]))

    chunks = torch.tensor([[0, 3, 17, 30, 41, 48, 49], [0, 5, 6, 7, 20, 48, 49]])
    q_pre = torch.randn(heads, 1, d)
    pos = total - 1
    out = _chunk_attention(layer, state, q_pre[None], pos, chunks[None], scaling=d**-0.5)[0]

    for h in range(heads):
        idx = torch.cat([torch.arange(c * w, (c + 1) * w) for c in chunks[h].tolist()] + [torch.arange(50 * w, total)])
        positions = torch.arange(len(idx))  # remapped: contiguous from 0
        assert positions.max() < config.attention_length
        kc, sc = rotary(k_pre, positions[None])
        keys = apply_rope(k_pre[0, h, idx], kc[0], sc[0])
        qc, qs = rotary(k_pre, torch.tensor([[len(idx) - 1]]))
        q = apply_rope(q_pre[h], qc[0], qs[0])
        weights = torch.softmax((q @ keys.T) * d**-0.5, -1)
        torch.testing.assert_close(out[h], weights @ v[0, h, idx], atol=1e-5, rtol=1e-4)


def test_trace_never_selects_future_chunks():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256)).eval()
    longheads.enable(model, cfg(tail_tokens=4))
    cache = longheads.LongHeadsCache(model)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 500)), **longheads.cache_argument(model, cache), use_cache=True)
    for layer in cache.layers:
        sel = layer.last_selection
        assert sel.shape == (4, 8)
        current = 499 // 16
        assert (sel[:, -1] == current).all() and (sel[:, :-1] < current).all() and (sel[:, 0] == 0).all()


def test_each_question_token_votes_for_its_best_chunks_only():
    """A token adds one vote to each of its `ballot_size` best chunks, and votes add up over the
    question's tokens, so a chunk several tokens match stays ahead of one a single token liked."""
    assert cfg(votes_per_token=None).ballot_size == cfg().selected_chunks
    assert cfg(votes_per_token=1000).ballot_size == cfg().selected_chunks
    layer = LongHeadsLayer(16)
    _pool_votes(layer, torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]]), 2, "head")
    assert layer.votes.tolist() == [[1, 1, 0, 0, 0]]
    pooled = _pool_votes(layer, torch.tensor([[1.0, 5.0, 0.0, 0.0, 4.0]]), 2, "head")
    assert layer.votes.tolist() == [[1, 2, 0, 0, 1]]
    assert int(pooled.argmax()) == 1



def test_layer_scope_makes_a_layers_heads_follow_their_pooled_votes():
    """vote_scope="layer": every head ranks chunks by the share of the layer's ballots (all heads, all
    question tokens so far); its own scores only break ties."""
    scores = torch.tensor([[0.0, 5.0, 0.0, 1.0], [0.0, 4.0, 1.0, 0.0], [0.0, 1.0, 0.0, 6.0]])
    own = _pool_votes(LongHeadsLayer(16), scores, 1, "head")
    assert own.argmax(1).tolist() == [1, 1, 3]
    layer = LongHeadsLayer(16)
    pooled = _pool_votes(layer, scores, 1, "layer")
    assert pooled.argmax(1).tolist() == [1, 1, 1]  # two of three heads voted for chunk 1
    assert layer.votes.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]  # each head's own ballots
    # A second token whose three heads all prefer chunk 3 turns the layer to it (4 of 6 ballots).
    pooled = _pool_votes(layer, torch.tensor([[0.0, 0.0, 0.0, 9.0]] * 3), 1, "layer")
    assert layer.vote_tokens == 2 and pooled.argmax(1).tolist() == [3, 3, 3]
    with pytest.raises(ConfigError, match="vote_scope"):
        cfg(vote_scope="everyone")


def test_model_scope_adds_every_earlier_layers_ballots():
    """vote_scope="model": a head follows its layer's share of ballots plus the share of all ballots cast so
    far in the model (earlier layers, then this layer's tokens up to the current one)."""
    state = SequenceState()  # what the layers of one cache share
    first, second = LongHeadsLayer(16), LongHeadsLayer(16)
    first.sequence = second.sequence = state
    # Layer 0: both heads vote for chunk 2.
    _pool_votes(first, torch.tensor([[0.0, 1.0, 5.0], [0.0, 1.0, 5.0]]), 1, "model")
    assert state.tally.tolist() == [0, 0, 2] and state.voters == 2
    # Layer 1's heads split between chunks 0 and 1: each has half the layer's ballots and a quarter of the
    # model's, ahead of chunk 2 (none of the layer's, half of the model's).
    pooled = _pool_votes(second, torch.tensor([[5.0, 1.0, 0.0], [1.0, 5.0, 0.0]]), 1, "model")
    assert state.tally.tolist() == [1, 1, 2] and state.voters == 4
    expected = torch.tensor([0.5 + 0.25, 0.5 + 0.25, 0.0 + 0.5]) * 16
    assert torch.allclose(pooled - torch.softmax(torch.tensor([[5.0, 1.0, 0.0], [1.0, 5.0, 0.0]]), -1), expected)
    # A later row with one more chunk keeps the tally's columns aligned.
    _pool_votes(second, torch.tensor([[0.0, 0.0, 0.0, 9.0]] * 2), 1, "model")
    assert state.tally.tolist() == [1, 1, 2, 2] and state.voters == 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_position_free_keys_score_as_keys_turned_back_at_every_call(dtype):
    """The CPU scores read keys turned back to no position once, as they arrive: bit for bit what turning
    the cached keys back at every call gives, also after a crop and after a beam's tail is put back."""
    torch.manual_seed(0)
    w, d, kv = 16, 32, 2
    table = PositionTable(_Rotary(d), 4 * w)
    layer = LongHeadsLayer(w, table=table, use_kernels=False)

    def check() -> None:
        cos, sin = table.get(torch.device("cpu"))
        n = layer.length // w
        queries = torch.randn(kv, 3, d).to(dtype)
        turned = score_rows(queries, layer.keys[0], n, w, cos[:w], sin[:w])
        free = layer.position_free_keys()
        assert free.shape == layer.keys[0].shape
        assert torch.equal(score_rows(queries, free, n, w), turned)

    layer.update(torch.randn(1, kv, 5 * w + 3, d).to(dtype), torch.randn(1, kv, 5 * w + 3, d).to(dtype))
    check()
    saved = layer.save_tail(4 * w)
    layer.update(torch.randn(1, kv, 2 * w, d).to(dtype), torch.randn(1, kv, 2 * w, d).to(dtype))
    check()
    layer.restore_tail(4 * w, saved)  # another beam's tokens replace these
    check()
    layer.crop(2 * w)
    layer.update(torch.randn(1, kv, 40 * w, d).to(dtype), torch.randn(1, kv, 40 * w, d).to(dtype))  # storage grows
    check()
