"""The passkey retrieval benchmark of the LongHeads paper: a number hidden in filler text, asked for at the end."""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass

import torch

from .engine import LongHeadsModel
from .patch import disable, enable

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def parse_length(text: str) -> int:
    """'16k' -> 16384, '1m' -> 1048576, '5000' -> 5000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise ValueError(f"Bad length {text!r}: use a number with an optional k or m suffix, e.g. 16k")
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def build_prompt(tokenizer, n_tokens: int, depth: float, key: int) -> str:
    """A prompt of about `n_tokens` tokens with the needle at relative `depth` of the filler."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    needle = NEEDLE.format(key=key)
    per_filler = count(" ".join([FILLER] * 50)) / 50
    overhead = count(f"{TASK} {needle} {QUESTION}")
    n_filler = max(1, int((n_tokens - overhead) / per_filler))
    before = round(n_filler * depth)
    parts = [TASK] + [FILLER] * before + [needle] + [FILLER] * (n_filler - before) + [QUESTION]
    return " ".join(parts)


@dataclass
class Sample:
    method: str
    length: int
    prompt_tokens: int
    depth: float
    key: int
    answer: str
    correct: bool
    seconds: float


def _answer_correct(answer: str, key: int) -> bool:
    digits = re.findall(r"\d+", answer)
    return bool(digits) and digits[0] == str(key)


def _baseline_answer(lh: LongHeadsModel, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer of the unmodified model (its own attention, no LongHeads)."""
    model, config = lh.model, lh.config
    disable(model)
    try:
        ids = lh.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(lh.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=lh.tokenizer.eos_token_id)
        return lh.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    finally:
        enable(model, config)


def run_passkey(lh: LongHeadsModel, lengths: list[int], samples: int, seed: int = 0,
                baseline_lengths: list[int] | None = None, max_new_tokens: int = 8,
                log=print) -> list[Sample]:
    """Run every length with `samples` needles at evenly spread depths, for LongHeads and (for
    `baseline_lengths`, default all) the unmodified model on the same prompts."""
    rng = random.Random(seed)
    baseline_lengths = lengths if baseline_lengths is None else baseline_lengths
    results = []
    for length in lengths:
        for i in range(samples):
            depth = (i + 0.5) / samples
            key = rng.randint(10000, 99999)
            prompt = build_prompt(lh.tokenizer, length, depth, key)
            methods = ["longheads"] + (["baseline"] if length in baseline_lengths else [])
            for method in methods:
                t0 = time.perf_counter()
                if method == "longheads":
                    answer = lh.generate(prompt, max_new_tokens=max_new_tokens)
                else:
                    answer = _baseline_answer(lh, prompt, max_new_tokens)
                sample = Sample(method, length, lh.count_tokens(prompt), round(depth, 3), key, answer,
                                _answer_correct(answer, key), time.perf_counter() - t0)
                results.append(sample)
                log(f"{method:9s} {length:>8d} depth={depth:.2f} key={key} -> {answer!r} "
                    f"{'OK' if sample.correct else 'WRONG'} ({sample.seconds:.1f}s)")
    return results


def summarize(results: list[Sample]) -> list[dict]:
    rows: dict[tuple[str, int], list[Sample]] = {}
    for s in results:
        rows.setdefault((s.method, s.length), []).append(s)
    return [
        {"method": m, "length": n, "correct": sum(s.correct for s in v), "total": len(v),
         "accuracy": sum(s.correct for s in v) / len(v), "mean_seconds": sum(s.seconds for s in v) / len(v)}
        for (m, n), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def as_dicts(results: list[Sample]) -> list[dict]:
    return [asdict(s) for s in results]
