"""Run a tiny model through the reference path and the Triton fast path and report how far apart they are.

    python tests/fast_path_check.py DEVICE DTYPE CHECKS HEAD_DIM LENGTH

CHECKS is a comma-separated list of checks, each printed as one JSON line, in order, from one process. The
Triton interpreter's checks are batched this way, because importing torch, transformers and triton takes a
check's process several seconds on a small CPU.

default: the default configuration, on a model with three query heads per KV head (grouped-query attention).

mha: the same on a model with one KV head per query head.

head, layer: the question's votes pooled with vote_scope "head" or "layer" instead of the default "model".

offload, offload_keys: both paths with the values (and the keys) in CPU memory; the fast path is also run without
offload, and its outputs and selections compared with the offloaded run's.

pointers: the attention kernel loads tiles through pointers, as before Hopper, even where it could use
tensor descriptors (on Hopper, and in the interpreter).

Used by tests/test_fast_path.py in a subprocess, because Triton's CPU interpreter (TRITON_INTERPRET=1)
must be switched on before triton is imported.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import longheads
from longheads import fast, kernels
from longheads.cache import LongHeadsCache


def run(model, ids: torch.Tensor, cuts: list[int], backend: str, cfg: dict) -> tuple[torch.Tensor, list]:
    longheads.disable(model)
    longheads.enable(model, longheads.LongHeadsConfig(backend=backend, **cfg))
    cache = LongHeadsCache(model)
    logits, selections = [], []
    with torch.no_grad():
        for a, b in zip(cuts, cuts[1:], strict=False):
            logits.append(model(ids[:, a:b], **longheads.cache_argument(model, cache)).logits.float())
            selections.append([layer.last_selection.cpu() for layer in cache.layers])
    return torch.cat(logits, 1), selections


def main() -> None:
    device, dtype, checks, head_dim, length = sys.argv[1:6]
    head_dim, length = int(head_dim), int(length)
    if device == "cpu":  # the interpreter runs the kernels on CPU tensors
        fast.available = lambda _device: True
    models = {}
    # Distinct tokens: in the first layer a key depends on its token only, so a repeated token would give two
    # chunks exactly equal scores, a tie each path may break its own way.
    ids = torch.randperm(32000, generator=torch.Generator().manual_seed(1))[: length + 8][None].to(device)
    for check in checks.split(","):
        # Three query heads per KV head (as in the embedded model): packing pads groups to a power of two.
        kv_heads = 6 if check == "mha" else 2
        if kv_heads not in models:
            models[kv_heads] = _model(device, dtype, head_dim, kv_heads)
        print(json.dumps(compare(models[kv_heads], ids, check)), flush=True)


def _model(device: str, dtype: str, head_dim: int, kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    # One layer in bfloat16: a deeper random model passes rounding differences on to the next layer's
    # near-tied chunk scores, so only float32 can check several layers for identical selections.
    config = LlamaConfig(vocab_size=32000, hidden_size=6 * head_dim, intermediate_size=256,
                         num_hidden_layers=2 if dtype == "float32" else 1, num_attention_heads=6,
                         num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval().to(device=device, dtype=getattr(torch, dtype))


def compare(model, ids: torch.Tensor, check: str) -> dict:
    """The reference path against the fast path on one configuration."""
    length = ids.shape[1] - 8
    offload = check in ("offload", "offload_keys")
    cfg = dict(chunk_size=16, attention_length=96, tail_tokens=5, max_context=1 << 20,
               cpu_offload=offload, offload_keys=check == "offload_keys")
    if check in ("head", "layer"):
        cfg["vote_scope"] = check
    # A long first call (plain region, blocks, tail), a second piece, one shorter than the tail (a question
    # after a cached document), then token-by-token decoding.
    cuts = [0, length - 37, length - 3, length] + list(range(length + 1, length + 9))
    ref, ref_sel = run(model, ids, cuts, "reference", cfg)
    tensor_memory_accelerator = kernels.tensor_memory_accelerator
    if check == "pointers":
        kernels.tensor_memory_accelerator = lambda _device: False
    try:
        got, got_sel = run(model, ids, cuts, "triton", cfg)
    finally:
        kernels.tensor_memory_accelerator = tensor_memory_accelerator
    report = {
        "max_abs_diff": (ref - got).abs().max().item(),
        "max_abs_logit": ref.abs().max().item(),
        "selection_rows_equal": _rows_equal(ref_sel, got_sel),
        "selection_rows": sum(map(len, ref_sel)),
    }
    if offload:
        plain, plain_sel = run(model, ids, cuts, "triton", dict(cfg, cpu_offload=False, offload_keys=False))
        report["offload_max_abs_diff"] = (plain - got).abs().max().item()
        report["offload_selection_rows_equal"] = _rows_equal(plain_sel, got_sel)
    return report


def _rows_equal(a: list, b: list) -> int:
    pairs = [(x, y) for call_a, call_b in zip(a, b, strict=True) for x, y in zip(call_a, call_b, strict=True)]
    return sum(bool((x == y).all(dim=1).all()) for x, y in pairs)


if __name__ == "__main__":
    main()
