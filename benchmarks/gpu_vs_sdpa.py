"""LongHeads against transformers' SDPA full attention on one GPU: prefill time, peak memory, decode speed.

    python benchmarks/gpu_vs_sdpa.py --lengths 4k,16k,32k,64k,100k,128k [--compile] --json out.json

Random weights of the Llama-3-8B shape (32 layers, 32 query / 8 KV heads, head_dim 128, bf16): speed and
memory do not depend on the weights. For every length, one process measures, each from a clean cache:
SDPA prefill in one forward (logits_to_keep=1, as a user would call it) and its decode; LongHeads prefill
through the engine's piecewise encoder (--repeats times, the median shown) and its decode; the same with
cpu_offload (once), and with cpu_offload and offload_keys (once). Decode ms/token is the mean of
--decode-steps single-token forwards after a warm-up step. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

import longheads


def llama3_8b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    return model


def _timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _decode_ms(model, cache, steps: int) -> float:
    token = torch.tensor([[1000]], device="cuda")
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            model(input_ids=token, **longheads.cache_argument(model, cache), use_cache=True)
        _, seconds = _timed(lambda: [model(input_ids=token, **longheads.cache_argument(model, cache), use_cache=True)
                                     for _ in range(steps)])
    return 1000 * seconds / steps


def _clean() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run_sdpa(model, ids: torch.Tensor, steps: int) -> dict:
    from transformers import DynamicCache


    longheads.disable(model)
    _clean()
    cache = DynamicCache(config=model.config)
    try:
        # transformers' default, eager, even where --compile left the layers compiled
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            _, seconds = _timed(lambda: model(input_ids=ids, **longheads.cache_argument(model, cache), use_cache=True,
                                              logits_to_keep=1))
        peak = torch.cuda.max_memory_allocated()
        with torch.compiler.set_stance("force_eager"):
            decode = _decode_ms(model, cache, steps)
    except torch.OutOfMemoryError:
        return {"prefill_s": None, "peak_gib": None, "decode_ms": None, "error": "out of memory"}
    finally:
        cache = None
    return {"prefill_s": round(seconds, 3), "peak_gib": round(peak / 2**30, 2), "decode_ms": round(decode, 2)}


def run_longheads(model, ids: torch.Tensor, steps: int, offload: bool, backend: str, compile_layers: bool,
                  repeats: int = 1, offload_keys: bool = False) -> dict:
    from longheads.cache import LongHeadsCache
    from longheads.engine import encode_pieces

    longheads.disable(model)
    cfg = longheads.LongHeadsConfig(max_context=ids.shape[1] + steps + 8, cpu_offload=offload, backend=backend,
                                    compile_layers=compile_layers, offload_keys=offload_keys)
    longheads.enable(model, cfg)
    times = []
    for _ in range(repeats):
        cache = None
        _clean()
        cache = LongHeadsCache(model)
        cache.reserve(ids.shape[1] + steps + 3)  # the prompt, warm-up and timed decode steps
        times.append(_timed(lambda cache=cache: encode_pieces(model, cache, ids))[1])
    peak = torch.cuda.max_memory_allocated()
    decode = _decode_ms(model, cache, steps)
    peak_all = torch.cuda.max_memory_allocated()
    return {"prefill_s": round(sorted(times)[len(times) // 2], 3), "prefill_runs_s": [round(t, 3) for t in times],
            "peak_gib": round(peak / 2**30, 2), "peak_with_decode_gib": round(peak_all / 2**30, 2),
            "decode_ms": round(decode, 2)}


def main() -> None:
    from longheads.passkey import parse_length

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4k,16k,32k,64k,100k,128k")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma list of: sdpa, longheads, offload, offload_keys")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile", action="store_true", help="LongHeadsConfig(compile_layers=True) for LongHeads")
    ap.add_argument("--repeats", type=int, default=3,
                    help="LongHeads prefills per length without offload; the table shows their median")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    model = llama3_8b(args.layers)
    # Compile the kernels (and with --compile the layers) outside the timings: 20,736 tokens give a middle
    # piece and a final piece (with the question's single-token rows) beyond the attention length, each a
    # kernel specialization of its own, in the piece sizes with and without offload (16384 and 4096).
    warm = torch.randint(0, 128000, (1, 20736), device="cuda")
    variants = {"longheads": (False, False), "offload": (True, False), "offload_keys": (True, True)}
    for offload, offload_keys in [v for name, v in variants.items() if name not in skip]:
        for _ in range(2 if args.compile else 1):  # torch.compile settles on dynamic shapes on the second call
            run_longheads(model, warm, 2, offload, args.backend, args.compile, offload_keys=offload_keys)
    rows = []
    for length in [parse_length(x) for x in args.lengths.split(",")]:
        ids = torch.randint(0, 128000, (1, length), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        row = {"tokens": length, "device": torch.cuda.get_device_name()}
        if "sdpa" not in skip:
            row["sdpa"] = run_sdpa(model, ids, args.decode_steps)
        if "longheads" not in skip:
            row["longheads"] = run_longheads(model, ids, args.decode_steps, False, args.backend, args.compile,
                                             args.repeats)
        if "offload" not in skip:
            row["offload"] = run_longheads(model, ids, args.decode_steps, True, args.backend, args.compile)
        if "offload_keys" not in skip:
            row["offload_keys"] = run_longheads(model, ids, args.decode_steps, True, args.backend, args.compile,
                                                offload_keys=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(f"\n{rows[0]['device']}, random-weight Llama-3-8B shape ({args.layers} layers), bf16\n")
    print("| tokens | SDPA prefill s | SDPA peak GiB | SDPA decode ms | LongHeads prefill s | LongHeads peak GiB "
          "| LongHeads decode ms | offload prefill s | offload peak GiB | offload decode ms "
          "| offload_keys prefill s | offload_keys peak GiB | offload_keys decode ms |")
    print("|---" * 13 + "|")
    for r in rows:
        cells = [f"{r['tokens']:,}"]
        for key in ("sdpa", "longheads", "offload", "offload_keys"):
            m = r.get(key, {})
            cells += [str(m.get("prefill_s", "-")), str(m.get("peak_gib", "-")), str(m.get("decode_ms", "-"))]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
