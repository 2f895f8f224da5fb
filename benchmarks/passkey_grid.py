"""Passkey accuracy of several selection designs on one loaded model (the search behind docs/design.md).

    python benchmarks/passkey_grid.py --lengths 16k,32k --samples 20 --out grid.json \
        --variant maxlogit: --variant paper:selection=paper --variant scope-layer:vote_scope=layer

Each --variant is NAME:key=value,key=value over LongHeadsConfig fields. Results are written after every
variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import longheads
from longheads.engine import LongHeadsModel
from longheads.passkey import parse_length, run_passkey, summarize


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key] = int(value) if value.lstrip("-").isdigit() else (None if value == "None" else value)
    return name, fields


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--lengths", default="16k,32k")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--baseline", default="", help="lengths at which to also run the unmodified model")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--budget", type=float, default=1e9, help="stop starting new variants after this many s")
    ap.add_argument("--out", default="passkey_grid.json")
    args = ap.parse_args()

    t_start = time.perf_counter()
    base = longheads.load(args.model, device=args.device, dtype=args.dtype)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    baseline = [parse_length(x) for x in args.baseline.split(",") if x]
    report = {"model": base.model_name, "device": str(base.device),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "variants": []}
    for i, spec in enumerate(args.variant or ["default:"]):
        if time.perf_counter() - t_start > args.budget:
            print(f"budget reached, skipping {spec}")
            continue
        name, fields = parse_variant(spec)
        config = longheads.LongHeadsConfig(**fields)
        lh = LongHeadsModel(base.model, base.tokenizer, config, base.model_name)
        t0 = time.perf_counter()
        results = run_passkey(lh, lengths, args.samples, baseline_lengths=baseline if i == 0 else [],
                              log=lambda s, name=name: print(name, s, flush=True))
        summary = summarize(results)
        report["variants"].append({"name": name, "config": config.to_dict(), "summary": summary,
                                   "seconds": time.perf_counter() - t0,
                                   "samples": [r.__dict__ for r in results]})
        for row in summary:
            print(f"== {name:24s} {row['method']:9s} {row['length']:>7d} {row['correct']}/{row['total']}", flush=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
