"""Under torchrun: a tiny random Llama with grouped-query attention and LongHeads, loaded whole in every process and
again sharded over the processes by transformers' tensor parallelism (tp_plan="auto"; gloo on the CPU). Both read
a prompt beyond the attention length, then decode a few tokens; rank 0 prints one JSON line comparing the two on
every rank.

    python -m torch.distributed.run --nproc-per-node 2 tests/tensor_parallel_check.py MODEL_DIR

Used by tests/test_tensor_parallel.py.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import longheads
from longheads.engine import encode_pieces


def run(model, ids: torch.Tensor, steps: list[int]) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    cache = longheads.LongHeadsCache(model)
    with torch.inference_mode():
        logits = [encode_pieces(model, cache, ids)]
        selections = [[layer.last_selection.clone() for layer in cache.layers]]
        for token in steps:
            out = model(input_ids=torch.tensor([[token]]), **longheads.cache_argument(model, cache)).logits[0, -1]
            logits.append(out)
            selections.append([layer.last_selection.clone() for layer in cache.layers])
    return torch.stack(logits), selections


def main() -> None:
    path = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                     num_attention_heads=8, num_key_value_heads=4,
                                     max_position_embeddings=512)).save_pretrained(path)
    dist.barrier()

    def config() -> longheads.LongHeadsConfig:  # the default votes: vote_scope="model", pooled over every head
        return longheads.LongHeadsConfig(chunk_size=16, attention_length=128, tail_tokens=4)

    whole = longheads.enable(LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), config())
    sharded = longheads.enable(LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, tp_plan="auto").eval(),
                               config())
    # Distinct tokens: in the first layer a key depends on its token alone, so a repeated token would tie two
    # chunks exactly, and the sharded matrix products' rounding could break the tie either way.
    ids = torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:600][None]
    steps = [3, 141, 59, 26, 535, 89]
    want, want_sel = run(whole, ids, steps)
    got, got_sel = run(sharded, ids, steps)
    local = got_sel[0][0].shape[0]
    mine = slice(rank * local, (rank + 1) * local)  # colwise sharding: rank r holds heads r*local..
    pairs = [(w[mine], g) for ws, gs in zip(want_sel, got_sel, strict=True) for w, g in zip(ws, gs, strict=True)]
    report = {"rank": rank, "ranks": getattr(sharded, "tp_size", None), "local_heads": local,
              "max_abs_diff": (want - got).abs().max().item(), "max_abs_logit": want.abs().max().item(),
              "selection_rows_equal": sum(bool(torch.equal(w, g)) for w, g in pairs), "selection_rows": len(pairs)}
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if rank == 0:
        print(json.dumps(reports), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
