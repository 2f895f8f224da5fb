"""The `longheads` command: ask a question about a whole PDF or text file, start the app, or run the passkey
benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from .config import LongHeadsConfig
from .errors import LongHeadsError


def _config_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="hub id, local path or .gguf file (default: embedded SmolLM2)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--attention-length", type=int, default=None)
    ap.add_argument("--max-context", type=int, default=None)
    ap.add_argument("--cpu-offload", action="store_true", help="keep the cache's values in pinned CPU memory")
    ap.add_argument("--offload-keys", action="store_true",
                    help="with --cpu-offload, the keys too: less GPU memory, slower decoding")
    ap.add_argument("--compile-layers", action="store_true",
                    help="torch.compile the model's layers around LongHeads (faster prefill on a GPU)")
    ap.add_argument("--prefill-piece", type=int, default=None,
                    help="tokens per forward call of the prefill, a multiple of the chunk size "
                         "(default: 16384 on a GPU, 4096 on the CPU or with --cpu-offload)")


def _config(args) -> LongHeadsConfig:
    fields = {"chunk_size": args.chunk_size, "attention_length": args.attention_length,
              "max_context": args.max_context, "cpu_offload": args.cpu_offload or None,
              "offload_keys": args.offload_keys or None,
              "compile_layers": args.compile_layers or None, "prefill_piece": args.prefill_piece}
    return LongHeadsConfig(**{k: v for k, v in fields.items() if v is not None})


def _read_document(path: str, password: str | None) -> tuple[str, object | None]:
    file = Path(path)
    if file.suffix.lower() == ".pdf":
        from .pdf import REFERENCE_PAGES, read_pdf

        doc = read_pdf(file, password=password, skip=REFERENCE_PAGES)
        return doc.text, doc
    try:
        return file.read_text(encoding="utf-8"), None
    except FileNotFoundError:
        raise LongHeadsError(f"No such file: {path}") from None
    except UnicodeDecodeError:
        raise LongHeadsError(f"{path} is not a UTF-8 text file (nor a .pdf).") from None


def cmd_ask(args) -> int:
    from .engine import load
    from .prompts import document_messages

    text, pdf = _read_document(args.file, args.password)
    lh = load(args.model, config=_config(args), device=args.device, dtype=args.dtype)
    n_doc = lh.count_tokens(text)
    print(f"[{lh.model_name}] {args.file}: {n_doc:,} tokens", file=sys.stderr)
    if pdf is not None:
        pdf.check_fits(n_doc, lh.max_context, reserve=args.max_new_tokens + 64)
    messages = document_messages(text, args.question)
    t0 = time.perf_counter()
    stream = lh.stream(messages, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    usage, trace = stream.generation.usage, stream.generation.trace
    print(f"[encode {usage['prefill_seconds']:.1f}s, answer {usage['decode_seconds']:.1f}s, "
          f"total {time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    if pdf is not None and trace is not None:
        hits = pdf.pages_for_trace(trace, k=3)
        if hits:
            print("[heads read most: " + ", ".join(f"page {h.page.label or h.page.number}" for h in hits) + "]",
                  file=sys.stderr)
    return 0


def cmd_passkey(args) -> int:
    from .engine import load
    from .passkey import as_dicts, parse_length, run_passkey, summarize

    lengths = [parse_length(x) for x in args.lengths.split(",")]
    if args.baseline_lengths is None:
        baseline = lengths
    else:
        baseline = [parse_length(x) for x in args.baseline_lengths.split(",") if x]
    config = _config(args)
    if args.max_context is None:
        config.max_context = max(config.max_context, max(lengths) + 64)
    lh = load(args.model, config=config, device=args.device, dtype=args.dtype)
    results = run_passkey(lh, lengths, args.samples, seed=args.seed, baseline_lengths=baseline,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    summary = summarize(results)
    print(f"{'method':10s} {'length':>8s} {'correct':>8s} {'accuracy':>9s} {'s/sample':>9s}")
    for row in summary:
        print(f"{row['method']:10s} {row['length']:>8d} {row['correct']:>4d}/{row['total']:<3d} "
              f"{row['accuracy']:>9.0%} {row['mean_seconds']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": lh.model_name, "device": str(lh.device), "config": lh.config.to_dict(),
            "summary": summary, "samples": as_dicts(results)}, indent=1))
    return 0


def cmd_app(args) -> int:
    """Replace this process by Streamlit's server running the app that ships in the `longheads_app` package."""
    app = importlib.util.find_spec("longheads_app")
    if app is None or importlib.util.find_spec("streamlit") is None:
        raise LongHeadsError('The app needs its extra: pip install "longheads[app]"')
    script = str(Path(next(iter(app.submodule_search_locations))) / "app.py")
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true", *args.streamlit_args]
    os.execv(sys.executable, command)
    return 0  # not reached: execv does not return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="longheads", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question about a whole PDF or text file")
    ask.add_argument("file")
    ask.add_argument("question")
    ask.add_argument("--password", default=None, help="password of an encrypted PDF")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--num-beams", type=int, default=None,
                     help="beams of the answer's search (default: 4 beyond the attention length, else 1: greedy)")
    _config_args(ask)
    ask.set_defaults(func=cmd_ask)
    app = sub.add_parser("app", help="start the Streamlit app (http://localhost:8501); other options go to Streamlit",
                         description="Start the Streamlit app. Options after `app` go to `streamlit run`, "
                                     "e.g. longheads app --server.port 8600.")
    app.set_defaults(func=cmd_app)
    pk = sub.add_parser("passkey", help="passkey retrieval: LongHeads and the unmodified model side by side")
    pk.add_argument("--lengths", default="4k,8k,16k,32k")
    pk.add_argument("--samples", type=int, default=20)
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--baseline-lengths", default=None,
                    help="lengths at which to also run the unmodified model (default: all; '' for none)")
    pk.add_argument("--json", default=None, help="write every sample and the summary here")
    _config_args(pk)
    pk.set_defaults(func=cmd_passkey)
    args, extra = ap.parse_known_args(argv)
    if extra and args.command != "app":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.streamlit_args = extra  # Streamlit's own options, for `longheads app`
    try:
        return args.func(args)
    except (LongHeadsError, ValueError) as exc:
        print(f"longheads: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
