"""Questions over real typeset manuals: do the heads read the answer's page, and is the answer right?

    python benchmarks/real_pdf_qa.py --check
    python benchmarks/real_pdf_qa.py --pdfs libtasn1.pdf --limit 2 --device cpu
    python benchmarks/real_pdf_qa.py --device cuda --json real_pdf_qa.jsonl --config vote_scope=layer

The questions are benchmarks/real_pdf_questions.json, over the PDFs in benchmarks/real_pdfs/; each names the one
page that holds its answer. Every question is asked of four readers:

- longheads: the whole document through LongHeads (`longheads.document_messages(doc.text, question)`);
  its selection trace gives the page map (`PDFDocument.pages_for_trace`), plain and with the trace of
  `longheads.NEUTRAL_QUESTION` as baseline, as the app shows it;
- page_oracle: only the answer's page;
- window_oracle: about 3,000 tokens of the document centred on the answer's page;
- truncation: the first 3,500 tokens of the document.

An answer is right when one of the question's answers appears in it (case-insensitive, whitespace normalised).
`--check` validates the question file against the PDFs without loading a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import longheads
from longheads.engine import LongHeadsModel
from longheads.pdf import REFERENCE_PAGES, PDFDocument, PDFPage, read_pdf

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "real_pdf_questions.json"
PDF_DIR = HERE / "real_pdfs"
READERS = ("longheads", "page_oracle", "window_oracle", "truncation")
WINDOW_TOKENS = 3000
TRUNCATION_TOKENS = 3500
NEUTRAL_TOKENS = 4  # answer tokens of the neutral question, as the app's BASELINE_TOKENS
MIN_PER_DOCUMENT = 12
FIELDS = ("id", "pdf", "page", "page_label", "question", "answers", "evidence")


# --- questions -----------------------------------------------------------------------------------------------
def load_questions(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def is_correct(answer: str, accepted: list[str]) -> bool:
    said = normalise(answer)
    return any(normalise(a) in said for a in accepted)


def is_front_or_index(page: PDFPage) -> bool:
    """Title, contents and index pages: no question may point at them."""
    if getattr(page, "kind", "body") != "body":  # the reader's own classification, where it has one
        return True
    # An index page names itself in its first lines ("Concept Index", "Function and variable index 35").
    heading = re.compile(r"^(\d+ )?[a-z ]*\bindex( \d+)?$|^table of contents$")
    return not page.label.isdigit() or any(heading.match(line.strip().lower()) for line in page.text.splitlines()[:2])


def check(data: dict, pdf_dir: Path) -> list[str]:
    """Every problem of the question file, as messages (none: it is valid)."""
    problems: list[str] = []
    docs = {name: read_pdf(pdf_dir / name) for name in data["sources"]}
    ids: set[str] = set()
    per_doc = dict.fromkeys(docs, 0)
    for q in data["questions"]:
        missing = [k for k in FIELDS if k not in q]
        if missing:
            problems.append(f"{q.get('id', '?')}: missing fields {missing}")
            continue
        where = f"{q['id']} ({q['pdf']} page {q['page']})"
        if q["id"] in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(q["id"])
        if q["pdf"] not in docs:
            problems.append(f"{where}: no such PDF among the sources")
            continue
        doc = docs[q["pdf"]]
        per_doc[q["pdf"]] += 1
        if not 1 <= q["page"] <= doc.num_pages:
            problems.append(f"{where}: the PDF has {doc.num_pages} pages")
            continue
        page = doc.pages[q["page"] - 1]
        if page.label != q["page_label"]:
            problems.append(f"{where}: page label is {page.label!r}, not {q['page_label']!r}")
        if is_front_or_index(page):
            problems.append(f"{where}: a title, contents or index page")
        if not q["answers"] or not all(isinstance(a, str) and a.strip() for a in q["answers"]):
            problems.append(f"{where}: answers must be non-empty strings")
        # Whitespace is normalised because the extractor breaks lines where the typesetter did.
        found = [p.number for p in doc.pages if normalise(q["evidence"]) in normalise(p.text)]
        if found != [q["page"]]:
            problems.append(f"{where}: evidence {q['evidence']!r} found on pages {found}")
        if not any(normalise(a) in normalise(page.text) for a in q["answers"]):
            problems.append(f"{where}: no accepted answer appears on the page")
    for name, n in per_doc.items():
        if n < MIN_PER_DOCUMENT:
            problems.append(f"{name}: {n} questions, fewer than {MIN_PER_DOCUMENT}")
    return problems


def run_check(data: dict, pdf_dir: Path) -> int:
    problems = check(data, pdf_dir)
    counts: dict[str, int] = {}
    for q in data["questions"]:
        counts[q["pdf"]] = counts.get(q["pdf"], 0) + 1
    for name, n in counts.items():
        pages = sorted({q["page"] for q in data["questions"] if q["pdf"] == name})
        print(f"{name}: {n} questions on pages {pages}")
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"{len(data['questions'])} questions, {len(problems)} problems")
    return 1 if problems else 0


# --- engine --------------------------------------------------------------------------------------------------
def generate(lh: LongHeadsModel, messages: list[dict], max_new_tokens: int, num_beams: int | None
             ) -> tuple[str, Any, dict]:
    """One answer with its selection trace and usage (prompt/completion tokens, prefill/decode seconds)."""
    generation = lh.answer(messages, max_new_tokens=max_new_tokens, num_beams=num_beams)
    return generation.text, generation.trace, dict(generation.usage)


def parse_config(items: list[str]) -> longheads.LongHeadsConfig:
    known = {f.name: f for f in fields(longheads.LongHeadsConfig)}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--config {item!r}: expected key=value with key one of {sorted(known)}")
        values[key] = parse_value(raw)
    return longheads.LongHeadsConfig(**values)  # validates the values


def parse_value(raw: str) -> Any:
    if raw == "None":
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        return raw


# --- prompts -------------------------------------------------------------------------------------------------
@dataclass
class Document:
    pdf: PDFDocument
    offsets: list[tuple[int, int]]  # character span of every token of pdf.text

    @property
    def tokens(self) -> int:
        return len(self.offsets)

    def token_span(self, start: int, end: int) -> str:
        """The text of tokens [start, end), cut on token boundaries."""
        start, end = max(0, start), min(end, self.tokens)
        return self.pdf.text[self.offsets[start][0] : self.offsets[end - 1][1]]

    def window(self, page: PDFPage, size: int) -> str:
        """About `size` tokens centred on `page` (shifted to stay inside the document)."""
        inside = [i for i, (s, e) in enumerate(self.offsets) if s < page.end and e > page.start]
        centre = (inside[0] + inside[-1]) // 2 if inside else 0
        start = min(max(0, centre - size // 2), max(0, self.tokens - size))
        return self.token_span(start, start + size)


def open_document(lh: LongHeadsModel, path: Path, args: argparse.Namespace) -> Document:
    pdf = read_pdf(path, skip=args.skip, keep_furniture=args.keep_furniture, clean=not args.raw_text)
    enc = lh.tokenizer(pdf.text, add_special_tokens=False, return_offsets_mapping=True)
    return Document(pdf, [tuple(o) for o in enc["offset_mapping"]])


def reader_text(doc: Document, reader: str, page: PDFPage) -> str:
    if reader == "longheads":
        return doc.pdf.text
    if reader == "page_oracle":
        return page.text
    if reader == "window_oracle":
        return doc.window(page, WINDOW_TOKENS)
    if reader == "truncation":
        return doc.token_span(0, TRUNCATION_TOKENS)
    raise ValueError(reader)


# --- one document --------------------------------------------------------------------------------------------
def neutral_trace(lh: LongHeadsModel, doc: Document, num_beams: int | None) -> tuple[Any, dict]:
    """The trace of the neutral question, the page map's baseline (None where heads read everything, as in
    the app's neutral_trace); its prefill encodes the document, which the longheads reader's questions then reuse."""
    if doc.tokens <= lh.config.attention_length:
        return None, {}
    messages = longheads.document_messages(doc.pdf.text, longheads.NEUTRAL_QUESTION)
    _, trace, usage = generate(lh, messages, NEUTRAL_TOKENS, num_beams)
    return trace, usage


def page_hits(doc: Document, trace: Any, baseline: Any) -> tuple[list[int], list[int]]:
    plain = [h.page.number for h in doc.pdf.pages_for_trace(trace, k=3)]
    if baseline is None:
        return plain, plain
    return plain, [h.page.number for h in doc.pdf.pages_for_trace(trace, k=3, baseline=baseline)]


def ask(lh: LongHeadsModel, doc: Document, q: dict, reader: str, args: argparse.Namespace, baseline: Any) -> dict:
    page = doc.pdf.pages[q["page"] - 1]
    messages = longheads.document_messages(reader_text(doc, reader, page), q["question"])
    t0 = time.perf_counter()
    answer, trace, usage = generate(lh, messages, args.max_new_tokens, args.num_beams)
    result: dict[str, Any] = {
        "answer": answer, "correct": is_correct(answer, q["answers"]), "wall_seconds": time.perf_counter() - t0,
        "prompt_tokens": usage.get("prompt_tokens"), "cached_tokens": usage.get("cached_tokens"),
        "prefill_seconds": usage.get("prefill_seconds"), "decode_seconds": usage.get("decode_seconds"),
    }
    if reader == "longheads":
        plain, based = page_hits(doc, trace, baseline)
        result.update(pages=plain, pages_baseline=based,
                      hit1=plain[:1] == [q["page"]], hit3=q["page"] in plain,
                      hit1_baseline=based[:1] == [q["page"]], hit3_baseline=q["page"] in based)
    return result


def run_document(lh: LongHeadsModel, path: Path, questions: list[dict], args: argparse.Namespace,
                 readers: list[str], done: list[dict]) -> dict:
    """Ask every question of every reader; the records join `done` (those of earlier documents). With --json
    the file is written again after every answer, so a run that is cut off keeps what it answered."""
    doc = open_document(lh, path, args)
    info: dict[str, Any] = {"pdf": path.name, "pages": doc.pdf.num_pages, "tokens": doc.tokens}
    print(f"\n{path.name}: {doc.pdf.num_pages} pages, {doc.tokens:,} tokens, {len(questions)} questions", flush=True)
    baseline = None
    if "longheads" in readers:
        t0 = time.perf_counter()
        baseline, usage = neutral_trace(lh, doc, args.num_beams)
        info.update(neutral_wall_seconds=time.perf_counter() - t0, neutral_prefill_seconds=usage.get("prefill_seconds"))
        print(f"  neutral question: {info['neutral_wall_seconds']:.1f} s (encodes the document)", flush=True)
    records = [{**q, "doc_tokens": doc.tokens, "readers": {}} for q in questions]
    done += records
    # Reader by reader, so that the longheads questions follow one another and reuse the encoded document.
    for reader in readers:
        for rec in records:
            res = ask(lh, doc, rec, reader, args, baseline)
            rec["readers"][reader] = res
            print(f"  {rec['id']} p{rec['page']} {reader:13s} {progress_note(res)}", flush=True)
            if args.json:
                write_records(args.json, done)
    return info


def progress_note(res: dict) -> str:
    mark = "right" if res["correct"] else "wrong"
    pages = f" pages {res['pages']} / with baseline {res['pages_baseline']}" if "pages" in res else ""
    times = f"{res['wall_seconds']:6.1f} s (prefill {res['prefill_seconds']:.1f}, decode {res['decode_seconds']:.1f})"
    return f"{mark} {times}{pages}  {res['answer'].strip()[:70]!r}"


# --- summary -------------------------------------------------------------------------------------------------
def rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def reader_rows(records: list[dict], readers: list[str]) -> list[dict]:
    rows = []
    for reader in readers:
        res = [r["readers"][reader] for r in records if reader in r["readers"]]
        row: dict[str, Any] = {"reader": reader, "questions": len(res), "accuracy": rate([x["correct"] for x in res]),
                               "median_seconds": statistics.median(x["wall_seconds"] for x in res) if res else None}
        for key in ("hit1", "hit3", "hit1_baseline", "hit3_baseline"):
            row[key] = rate([x[key] for x in res]) if res and key in res[0] else None
        rows.append(row)
    oracle = next((r["accuracy"] for r in rows if r["reader"] == "page_oracle"), None)
    for row in rows:
        row["vs_page_oracle"] = row["accuracy"] / oracle if oracle and row["accuracy"] is not None else None
    return rows


def fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if percent else f"{value:.1f}"


def summary_table(rows: list[dict]) -> str:
    lines = ["| reader | questions | page hit@1 | hit@3 | hit@1 with baseline | hit@3 with baseline | answer accuracy "
             "| vs page oracle | median s/question |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['reader']} | {r['questions']} | {fmt(r['hit1'])} | {fmt(r['hit3'])} "
                     f"| {fmt(r['hit1_baseline'])} | {fmt(r['hit3_baseline'])} | {fmt(r['accuracy'])} "
                     f"| {fmt(r['vs_page_oracle'])} | {fmt(r['median_seconds'], percent=False)} |")
    return "\n".join(lines)


def document_table(records: list[dict], readers: list[str]) -> str:
    """Answer accuracy per document and reader, with the longheads page hits."""
    head = " | ".join(readers)
    lines = [f"| document | questions | hit@1 | hit@3 with baseline | {head} |", "|---" * (len(readers) + 4) + "|"]
    for pdf in dict.fromkeys(r["pdf"] for r in records):
        mine = [r for r in records if r["pdf"] == pdf]
        rows = {row["reader"]: row for row in reader_rows(mine, readers)}
        lh = rows.get("longheads", {})
        accs = " | ".join(fmt(rows[x]["accuracy"]) for x in readers)
        lines.append(f"| {pdf} | {len(mine)} | {fmt(lh.get('hit1'))} | {fmt(lh.get('hit3_baseline'))} | {accs} |")
    return "\n".join(lines)


def environment(lh: LongHeadsModel, args: argparse.Namespace) -> dict:
    import torch
    import transformers

    # A copy of the tree (on a lent machine, say) may have no git directory, or a stale one: it names its commit.
    commit = os.environ.get("LONGHEADS_COMMIT")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                          text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        pass
    device_name = torch.cuda.get_device_name(lh.device) if lh.device.type == "cuda" else cpu_name()
    return {
        "commit": commit, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(lh.device), "device_name": device_name, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(), "model": lh.model_name,
        "config": lh.config.to_dict(), "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
        "skip": args.skip, "keep_furniture": args.keep_furniture, "raw_text": args.raw_text,
        "command": shlex.join(sys.orig_argv),
    }


def cpu_name() -> str:
    # platform.processor() is often just the architecture on Linux; /proc/cpuinfo names the model.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_records(path: Path, records: list[dict], summary: dict | None = None) -> None:
    """The whole file: one line per question (with the readers answered so far), then the summary if given."""
    lines = [{"record": "question", **r} for r in records] + ([summary] if summary else [])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    tmp.replace(path)


# --- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="validate the question file against the PDFs and exit")
    ap.add_argument("--questions", type=Path, default=QUESTIONS)
    ap.add_argument("--pdf-dir", type=Path, default=PDF_DIR)
    ap.add_argument("--model", default=None, help="hub id, local path or GGUF (default: the embedded SmolLM2-135M)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the engine's)")
    ap.add_argument("--pdfs", nargs="+", default=None, help="file names of the PDFs to ask about (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="at most N questions per document")
    ap.add_argument("--readers", default=",".join(READERS), help=f"comma list out of {','.join(READERS)}")
    ap.add_argument("--skip", type=lambda v: [k for k in v.split(",") if k], default=list(REFERENCE_PAGES),
                    metavar="KINDS",
                    help="page kinds read_pdf leaves out of the document (default: contents,index, as the app "
                         "and `longheads ask`; '' keeps every page)")
    ap.add_argument("--keep-furniture", action="store_true",
                    help="keep running headers and footers in the text (read_pdf(keep_furniture=True))")
    ap.add_argument("--raw-text", action="store_true",
                    help="the characters as pypdf extracts them, unrepaired (read_pdf(clean=False))")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--num-beams", type=int, default=None, help="default: the engine's choice by prompt length")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="a LongHeadsConfig field, e.g. vote_scope=layer (repeatable)")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT",
                    help="JSON Lines: one record per question, then a summary record")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RUN",
                    help="print the tables of the questions of these --json files together (runs of one variant "
                         "split by --pdfs over several processes); with --json, write them as one file too")
    return ap.parse_args(argv)


def merge(paths: list[Path], out: Path | None) -> int:
    """One table from several runs of the same variant: their questions together, the first run's environment."""
    records: list[dict] = []
    summaries: list[dict] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            (summaries if item.get("record") == "summary" else records).append(item)
    if not records:
        raise SystemExit(f"--merge: no questions in {', '.join(map(str, paths))}")
    readers = [r for r in READERS if any(r in rec["readers"] for rec in records)]
    rows = reader_rows(records, readers)
    first = summaries[0] if summaries else {}
    summary = {**first, "record": "summary", "readers": rows, "merged": [str(p) for p in paths],
               "documents": [d for s in summaries for d in s.get("documents", [])]}
    if out:
        write_records(out, [{k: v for k, v in r.items() if k != "record"} for r in records], summary)
    print(f"{len(records)} questions from {len(paths)} runs; first run: {first.get('date')} · commit "
          f"{first.get('commit')} · {first.get('device_name')} · command: {first.get('command')}\n")
    print(summary_table(rows))
    print()
    print(document_table(records, readers))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = load_questions(args.questions)
    if args.check:
        return run_check(data, args.pdf_dir)
    if args.merge:
        return merge(args.merge, args.json)
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    unknown = sorted(set(readers) - set(READERS))
    if unknown or not readers:
        raise SystemExit(f"--readers: unknown {unknown}; choose from {','.join(READERS)}")
    pdfs = args.pdfs or list(data["sources"])
    missing = sorted(set(pdfs) - set(data["sources"]))
    if missing:
        raise SystemExit(f"--pdfs: no questions for {missing}; known: {', '.join(data['sources'])}")

    lh = longheads.load(args.model, device=args.device, dtype=args.dtype, config=parse_config(args.config))
    records: list[dict] = []
    documents: list[dict] = []
    for name in pdfs:
        questions = [q for q in data["questions"] if q["pdf"] == name][: args.limit]
        documents.append(run_document(lh, args.pdf_dir / name, questions, args, readers, records))

    rows = reader_rows(records, readers)
    summary = {"record": "summary", **environment(lh, args), "documents": documents, "readers": rows}
    if args.json:
        write_records(args.json, records, summary)
    print(f"\n{summary['date']} · commit {summary['commit']} · {summary['device_name']} ({summary['device']}) · "
          f"torch {summary['torch']} · transformers {summary['transformers']}")
    print(f"command: {summary['command']}\n")
    print(summary_table(rows))
    print()
    print(document_table(records, readers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
