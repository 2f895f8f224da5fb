"""Encoding time and peak memory of LongHeads against context length (linear cost check).

    python benchmarks/encode_scaling.py --lengths 8k,16k,32k [--device cpu] [--random-weights]

Each length runs in a fresh subprocess so that its peak resident memory (CPU) or peak allocated memory
(CUDA) is its own. --random-weights builds a model of the embedded model's shape without loading the GGUF
(speed and memory do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(length: int, device: str, random_weights: bool) -> dict:
    import torch

    import longheads
    from longheads.engine import LongHeadsModel, encode_pieces

    if random_weights:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from longheads.loading import default_gguf_path

        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             rope_theta=100000, tie_word_embeddings=True)
        config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(config).eval().to(device)
        path = default_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        lh = LongHeadsModel(model, tok, longheads.LongHeadsConfig(max_context=length + 16), "random SmolLM2 shape")
    else:
        lh = longheads.load(device=device, config=longheads.LongHeadsConfig(max_context=length + 16))
    ids = torch.randint(100, 40000, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cache = longheads.LongHeadsCache(lh.model)
    cache.reserve(length)  # one allocation, as the engine makes for a prompt
    t0 = time.perf_counter()
    encode_pieces(lh.model, cache, torch.tensor([ids], device=lh.device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"tokens": length, "seconds": round(seconds, 2), "tokens_per_s": round(length / seconds),
            "peak_gib": round(peak / 2**30, 2), "kv_cache_gib": round(cache.nbytes() / 2**30, 3),
            "device": device, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8k,16k,32k")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.device, args.random_weights)))
        return
    from longheads.passkey import parse_length

    rows = []
    for length in [parse_length(x) for x in args.lengths.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(length), "--device", args.device]
        cmd += ["--random-weights"] if args.random_weights else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| tokens | encode s | tokens/s | peak GiB | KV cache GiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['seconds']} | {r['tokens_per_s']} | {r['peak_gib']} | {r['kv_cache_gib']} |")


if __name__ == "__main__":
    main()
