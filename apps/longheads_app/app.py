"""Ask a whole PDF in one prompt, and see where the model's attention heads looked to answer.

    longheads app                       # or: streamlit run apps/longheads_app/app.py

The model is loaded once per server process and shared; documents, chats and traces live in the
browser session's own state. The engine runs one generation at a time, and its document cache belongs to whoever
ran last, so every use of it here happens inside `turn()`, which also lets a waiting browser session show that it
waits. Each answer's trace and usage come with its own stream (`AnswerStream.generation`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import streamlit as st
import torch

import longheads
from longheads import pdf
from longheads.errors import ContextTooLongError, LongHeadsError
from longheads_app import document, heads_view
from longheads_app.document import Doc

EMBEDDED = "Embedded SmolLM2-135M-Instruct"
HUB = "Hugging Face hub id"
LOCAL = "Local path"
# Where the document's KV cache lives on a GPU machine: (cpu_offload, offload_keys). On a CPU it is all in memory.
KV_CACHE = {
    "GPU memory": (False, False),
    "Values in CPU memory": (True, False),
    "Keys and values in CPU memory": (True, True),
}
KEPT_TRACES = 6  # older answers keep their text but drop their trace (a few MB each)
BASELINE_TOKENS = 4  # answer tokens of the neutral question whose trace is the passages' baseline
KEPT_BASELINES = 4


@dataclass(frozen=True)
class Settings:
    source: str = EMBEDDED
    model: str = ""  # hub id or local path; ignored for the embedded model
    chunk_size: int = 256
    attention_length: int = 0  # 0: the engine picks the model's default
    max_context: int = 131072
    max_new_tokens: int = 200
    kv_cache: str = "GPU memory"  # a key of KV_CACHE

    @property
    def model_ref(self) -> str | None:
        return None if self.source == EMBEDDED else self.model.strip()

    def config(self) -> longheads.LongHeadsConfig:
        """Raises ConfigError naming the field when a value is out of range."""
        cpu_offload, offload_keys = KV_CACHE[self.kv_cache]
        return longheads.LongHeadsConfig(
            chunk_size=int(self.chunk_size),
            attention_length=int(self.attention_length) or None,
            max_context=int(self.max_context),
            cpu_offload=cpu_offload,
            offload_keys=offload_keys,
        )

    def check(self) -> None:
        if self.source != EMBEDDED and not self.model.strip():
            raise ValueError(f"Enter a {'hub id' if self.source == HUB else 'local path'} for the model.")
        if self.source == LOCAL and not Path(self.model.strip()).expanduser().exists():
            raise ValueError(f"No such file or folder: {self.model.strip()}")
        if self.max_new_tokens < 1:
            raise ValueError("The answer length must be at least 1 token.")
        self.config()


@dataclass
class Engine:
    """A loaded model shared by every browser session of this process, with what the app knows about its state."""

    lh: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    holds: str | None = None  # digest of the document whose encoding sits in the engine's cache
    # (tokens, seconds) of encodes on this machine: cost per token grows once a document outgrows the
    # heads' window, so an estimate scales the measurement nearest in length.
    timings: list[tuple[int, float]] = field(default_factory=list)
    # Per document digest, the trace of a neutral question: what the heads read whatever is asked.
    baselines: dict[str, Any] = field(default_factory=dict)

    def estimate(self, n_tokens: int) -> float:
        if not self.timings:
            return 0.0
        tokens, seconds = min(self.timings, key=lambda ts: abs(math.log(ts[0] / n_tokens)))
        return seconds * n_tokens / tokens


@dataclass
class Turn:
    question: str
    answer: str = ""
    stopped: bool = False
    error: str = ""
    trace: Any = None
    baseline: Any = None  # the neutral question's trace for the same document (Engine.baselines)
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0


@st.cache_resource(max_entries=2, show_spinner=False)
def load_engine(model: str | None, config_items: tuple[tuple[str, Any], ...]) -> Engine:
    device = "cuda" if torch.cuda.is_available() else None
    lh = longheads.load(model, config=longheads.LongHeadsConfig(**dict(config_items)), device=device)
    engine = Engine(lh, device or "cpu")
    # One short encode gives a first speed estimate before any document has been encoded here.
    filler = "The river carried silt from the mountains to the plain, year after year. " * 20
    start = time.perf_counter()
    n = lh.encode(filler)
    engine.timings.append((n, time.perf_counter() - start))
    return engine


def get_engine(settings: Settings) -> Engine:
    items = tuple(sorted(asdict(settings.config()).items()))
    return load_engine(settings.model_ref, items)


@contextmanager
def turn(engine: Engine) -> Iterator[None]:
    """Holds the engine for this browser session; shows the wait while another one holds it."""
    if not engine.lock.acquire(blocking=False):
        note = st.empty()
        start = time.perf_counter()
        # Each caption is also where Streamlit can stop this run if the user leaves or clicks something.
        while not engine.lock.acquire(timeout=0.5):
            waited = time.perf_counter() - start
            note.caption(f":material/hourglass_top: Another user is using the model; waiting ({waited:.0f} s)…")
        note.empty()
    try:
        yield
    finally:
        engine.lock.release()


def state() -> Any:
    ss = st.session_state
    ss.setdefault("active_settings", Settings())
    ss.setdefault("chats", {})  # doc digest -> list[Turn]
    ss.setdefault("tokens", {})  # (doc digest, engine id) -> prompt tokens
    ss.setdefault("encoded", {})  # doc digest -> summary of this browser session's last encode
    return ss


# ---------------------------------------------------------------- sidebar


def sidebar() -> Engine | None:
    ss = state()
    current: Settings = ss.active_settings
    with st.sidebar:
        st.header("Model")
        with st.form("settings", border=False):
            source = st.radio(
                "Model",
                [EMBEDDED, HUB, LOCAL],
                index=[EMBEDDED, HUB, LOCAL].index(current.source),
                key="model_source",
                label_visibility="collapsed",
            )
            model = st.text_input(
                "Hub id or local path",
                value=current.model,
                key="model_ref",
                placeholder="Qwen/Qwen2.5-0.5B-Instruct or ~/models/my-model",
                help="Used when the model is a hub id or a local path.",
            )
            st.subheader("LongHeads")
            chunk = st.number_input(
                "Chunk size (tokens)",
                16,
                8192,
                current.chunk_size,
                step=16,
                key="chunk_size",
                help="Heads pick the document in chunks of this many tokens.",
            )
            attention = st.number_input(
                "Attention length per head (tokens)",
                0,
                1 << 20,
                current.attention_length,
                step=256,
                key="attention_length",
                help="How many tokens each head reads; a multiple of the chunk size, within the model's "
                "pretrained length. 0 uses the engine's default for the model.",
            )
            max_context = st.number_input(
                "Maximum context (tokens)",
                16,
                1 << 22,
                current.max_context,
                step=4096,
                key="max_context",
                help="The longest prompt plus answer accepted.",
            )
            new_tokens = st.number_input(
                "Answer length (max new tokens)",
                1,
                4096,
                current.max_new_tokens,
                step=16,
                key="max_new_tokens",
            )
            kv_cache = st.selectbox(
                "KV cache",
                list(KV_CACHE),
                index=list(KV_CACHE).index(current.kv_cache),
                key="kv_cache",
                help="On a GPU: where the document's cache lives. CPU memory leaves room on the GPU for longer "
                "documents and larger models, and makes encoding and answering slower (an 8B model at 128k "
                "tokens on one H100: values about 1.3x and keys and values about 2.7x the time per answer token). "
                "On a CPU everything is in memory anyway.",
            )
            applied = st.form_submit_button("Apply", type="primary", width="stretch")

        if applied:
            wanted = Settings(source, model, int(chunk), int(attention), int(max_context), int(new_tokens), kv_cache)
            try:
                wanted.check()
                with st.spinner(f"Loading {wanted.model_ref or EMBEDDED}…"):
                    get_engine(wanted)
                ss.active_settings = wanted
            except Exception as exc:  # any failed load must leave the app on its last model
                st.error(f"**Settings not applied.** {describe(exc)}")
                if "engine_ready" in ss:
                    st.caption("Still using the previous model and settings.")

        try:
            with st.spinner(f"Loading {ss.active_settings.model_ref or EMBEDDED} (once per server)…"):
                engine = get_engine(ss.active_settings)
        except Exception as exc:  # the sidebar says why; the page says what to do
            st.error(f"**The model could not be loaded.** {describe(exc)}")
            return None
        ss.engine_ready = True
        lh = engine.lh
        cfg = lh.config
        mc = lh.model.config.get_text_config(decoder=True)
        st.caption(
            f"**{lh.model_name}** on {engine.device} · {mc.num_hidden_layers} layers × "
            f"{mc.num_attention_heads} heads · each head reads {cfg.attention_length:,} tokens in chunks of "
            f"{cfg.chunk_size} · max context {lh.max_context:,} tokens"
            + (f" · KV cache: {ss.active_settings.kv_cache.lower()}" if cfg.cpu_offload else "")
        )
    return engine


def describe(exc: BaseException) -> str:
    """A user-facing sentence: our own errors already say what is wrong; others get their type."""
    if isinstance(exc, LongHeadsError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- document


def pick_document(messages: Any) -> Doc | None:
    """The chosen PDF, parsed once per browser session; reading errors go to the `messages` container."""
    ss = state()
    source = st.segmented_control(
        "Document",
        ["Upload a PDF", "Bundled sample"],
        default="Upload a PDF",
        key="doc_source",
        label_visibility="collapsed",
    )
    if source == "Bundled sample":
        paths = document.samples()
        if "pending_sample" in ss:
            ss.sample = ss.pop("pending_sample")
        if not paths:
            st.info("No sample PDFs yet.")
            return None
        path = st.selectbox(
            "Sample",
            paths,
            format_func=lambda p: f"{p.name} ({p.stat().st_size / 1e3:,.0f} kB)",
            key="sample",
        )
        with st.popover("Make a long PDF", icon=":material/note_add:"):
            tokens = st.select_slider(
                "Length", [16_000, 32_000, 64_000, 100_000], value=16_000, key="long_tokens",
                format_func=lambda n: f"{n // 1000}k tokens",
            )  # fmt: skip
            st.caption("Pride and Prejudice (public domain) with three facts added on known pages.")
            if st.button("Generate", key="make_long", type="primary"):
                with st.spinner("Writing the PDF…"):
                    made = document.make_long_sample(tokens)
                # The picker already exists in this run; it takes the new file at the start of the next.
                ss.pending_sample = made
                st.rerun()
        data, name, facts = path.read_bytes(), path.name, document.known_facts(path)
    else:
        upload = st.file_uploader(
            f"PDF (up to {document.MAX_UPLOAD_MB} MB)",
            type="pdf",
            max_upload_size=document.MAX_UPLOAD_MB,
            key="upload",
            label_visibility="collapsed",
        )
        if upload is None:
            st.caption(
                f"Upload a PDF (up to {document.MAX_UPLOAD_MB} MB) or pick a bundled sample. "
                "The whole document goes into one prompt: no retriever, no splitting."
            )
            return None
        data, name, facts = upload.getvalue(), upload.name, ()

    digest = document.digest(data)
    cached: Doc | None = ss.get("doc")
    if cached is not None and cached.digest == digest:
        return cached
    password = ss.get(f"password-{digest}") or None
    try:
        doc = replace(document.read(data, name, password=password), facts=facts)
    except pdf.PDFError as exc:
        ss.doc = None
        with messages:
            st.error(f"**This PDF cannot be used.** {exc}")
            if isinstance(exc, pdf.EncryptedPDFError):
                st.text_input(
                    "Password",
                    type="password",
                    key=f"password-{digest}",
                    help="The PDF is encrypted; its password opens it for this browser session only.",
                )
        return None
    ss.doc = doc
    return doc


def prefix_messages(doc: Doc) -> list[dict[str, str]]:
    # The empty question leaves the document as the prompt's prefix, which every later question shares.
    return longheads.document_messages(doc.text, "")


def prompt_tokens(engine: Engine, doc: Doc) -> int:
    ss = state()
    key = (doc.digest, id(engine))
    if key not in ss.tokens:
        with turn(engine):
            ss.tokens[key] = engine.lh.count_tokens(engine.lh.render(prefix_messages(doc)))
    return ss.tokens[key]


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def encode(engine: Engine, doc: Doc, n_tokens: int) -> None:
    """Encodes the document into the engine's cache under a live progress bar; the caller holds the turn."""
    bar = st.progress(0.0, text=f"Encoding {n_tokens:,} tokens…")
    start = time.perf_counter()
    marks: list[tuple[int, int, float]] = []  # (tokens done, total, when) as the engine reports them
    failure: list[BaseException] = []

    def work() -> None:
        try:
            engine.lh.encode(prefix_messages(doc), progress=lambda d, t: marks.append((d, t, time.perf_counter())))
            engine.holds = doc.digest
        except BaseException as exc:  # handed over to the script thread, which shows it
            failure.append(exc)

    # The engine reports once per block of thousands of tokens and holds the thread in between. Encoding
    # beside the script keeps the bar's clock live, and lets Streamlit end this run if the user leaves:
    # the encoding then completes on its own and stays in the cache for the next question.
    worker = threading.Thread(target=work, name="longheads-encode", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        bar.progress(*progress_text(marks, n_tokens, start, engine))
    if failure:
        raise failure[0]
    seconds = time.perf_counter() - start
    engine.timings.append((n_tokens, seconds))
    bar.empty()
    state().encoded[doc.digest] = (
        f"Encoded {n_tokens:,} tokens in {duration(seconds)} ({n_tokens / seconds:,.0f} tokens/s)"
    )


def neutral_trace(engine: Engine, doc: Doc, n_tokens: int, note: Any) -> Any:
    """The trace of a neutral question about `doc`, made once per document and engine; the caller holds the
    turn. In a long document the heads read some chunks (the first few thousand tokens above all) whatever
    is asked, so the heads' view numbers the passages each answer read more than this question did."""
    if n_tokens <= engine.lh.config.attention_length:
        return None  # every head reads everything: there is nothing to subtract
    if doc.digest not in engine.baselines:
        note.caption("Noting what the heads read for any question about this document…")
        neutral = engine.lh.answer(
            longheads.document_messages(doc.text, longheads.NEUTRAL_QUESTION), max_new_tokens=BASELINE_TOKENS
        )
        while len(engine.baselines) >= KEPT_BASELINES:
            engine.baselines.pop(next(iter(engine.baselines)))
        engine.baselines[doc.digest] = neutral.trace
        engine.holds = doc.digest
        note.caption("…")
    return engine.baselines[doc.digest]


def progress_text(
    marks: list[tuple[int, int, float]], n_tokens: int, start: float, engine: Engine
) -> tuple[float, str]:
    now = time.perf_counter()
    elapsed = f"{duration(now - start)} elapsed"
    if not marks:
        return 0.0, f"Encoding {n_tokens:,} tokens · {elapsed}"
    done, total, when = marks[-1]
    # Speed from the first report on: tokens reused from the cache arrive at once and are not speed.
    first, _, since = marks[0]
    if done > first and when > since:
        rate = (done - first) / (when - since)
        speed = f"{rate:,.0f} tokens/s · about {duration(max((total - done) / rate - (now - when), 0))} left"
    else:
        speed = f"about {duration(max(engine.estimate(total - first) - (now - since), 0))} left (estimate)"
    return min(done / max(total, 1), 1.0), f"Encoding: {done:,} / {total:,} tokens · {speed} · {elapsed}"


def document_panel(engine: Engine, doc: Doc) -> bool:
    """Pages, size, encoding; returns whether questions can be asked."""
    lh = engine.lh
    n_tokens = prompt_tokens(engine, doc)
    cols = st.columns(4)
    cols[0].metric("Pages", f"{len(doc.pages):,}")
    cols[1].metric("Tokens", f"{n_tokens:,}")
    held = engine.holds == doc.digest
    cols[2].metric(
        "Encoding",
        "done" if held else f"≈ {duration(engine.estimate(n_tokens))}",
        help="Estimated from the encodes measured on this machine so far.",
    )
    cols[3].metric(
        "Head window",
        f"{lh.config.attention_length:,}",
        help="Each head reads this many tokens; LongHeads picks which chunks.",
    )
    with st.expander(f"**{doc.name}** · {len(doc.pages)} pages · browse the text"):
        if doc.pages:
            number = st.number_input("Page", 1, len(doc.pages), 1, key=f"page-{doc.digest}")
            page = doc.pages[int(number) - 1]
            # The page's part of exactly the text the model reads, so repairs and removals show here too.
            notes = [f"page {page.label}", f"{len(page.text):,} characters", f"a {page.kind} page"]
            if page.furniture:
                notes.append("running header or footer left out: " + " / ".join(page.furniture))
            st.caption(" · ".join(notes))
            with st.container(height=260):
                if page.skipped:
                    st.text(f"(a {page.kind} page: left out of what the model reads)")
                else:
                    st.text(page.text or "(no text on this page: an image or a blank page)")

    try:
        doc.pdf.check_fits(n_tokens, lh.max_context, reserve=state().active_settings.max_new_tokens)
    except ContextTooLongError as exc:
        st.error(f"**Too long for this model's maximum context.** {exc}")
        return False
    if held:
        st.success(
            state().encoded.get(doc.digest, "Encoded: questions reuse the encoding."),
            icon=":material/check_circle:",
        )
    else:
        note = (
            "Another browser session or model used the engine since; it will re-encode. "
            if doc.digest in state().encoded
            else ""
        )
        if st.button(
            f"Encode the document (≈ {duration(engine.estimate(n_tokens))})",
            type="primary",
            key="encode",
            help=f"{note}Questions encode it first anyway; later ones reuse it.",
        ):
            try:
                with turn(engine):
                    encode(engine, doc, n_tokens)
            except Exception as exc:  # a failed encode is reported; the app stays usable
                st.error(f"**Encoding failed.** {describe(exc)}")
                return False
            st.rerun()
    return True


# ---------------------------------------------------------------- chat


def show_turn(t: Turn) -> None:
    with st.chat_message("user"):
        st.markdown(t.question)
    with st.chat_message("assistant"):
        if t.answer:
            st.markdown(t.answer)
        if t.error:
            st.error(t.error)
        if t.stopped:
            st.caption(":material/stop_circle: Stopped before the end.")
        if t.usage:
            st.caption(usage_line(t))


def usage_line(t: Turn) -> str:
    u = t.usage
    decode = u.get("decode_seconds") or 0.0
    new = u.get("completion_tokens", 0)
    speed = f" at {new / decode:,.1f} tokens/s" if decode else ""
    cached = u.get("cached_tokens", 0)
    return (
        f"{t.seconds:.1f} s · {new} tokens{speed} · {cached:,} of {u.get('prompt_tokens', 0):,} prompt "
        f"tokens from the document cache"
    )


def suggestions(doc: Doc) -> str | None:
    """The planted facts of a generated sample as one-click questions: the heads' view can then be checked
    against the page that really holds the answer."""
    with st.expander("Questions with known answers", icon=":material/lightbulb:"):
        for i, (question, page) in enumerate(doc.facts):
            if st.button(f"{question} — *answer on page {page}*", key=f"fact-{i}", type="tertiary"):
                return question
    return None


def ask(engine: Engine, doc: Doc, question: str, n_tokens: int) -> None:
    ss = state()
    settings: Settings = ss.active_settings
    t = Turn(question)
    ss.chats.setdefault(doc.digest, []).append(t)
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        body = st.empty()
        body.caption("…")
        stop = st.empty()
        start = time.perf_counter()
        with turn(engine):
            lh = engine.lh
            stream = None
            try:
                if engine.holds != doc.digest:
                    encode(engine, doc, n_tokens)
                t.baseline = neutral_trace(engine, doc, n_tokens, body)
                stop.button("Stop", icon=":material/stop_circle:", key="stop")
                stream = lh.stream(
                    longheads.document_messages(doc.text, question), max_new_tokens=settings.max_new_tokens
                )
                # Marked stopped until the stream ends by itself: a click on Stop (or a new question)
                # ends this run inside the loop, and the finally block keeps what was written so far.
                t.stopped = True
                for piece in stream:
                    t.answer += piece
                    body.markdown(t.answer + " ▌")
                t.stopped = False
            except Exception as exc:  # too long, out of memory, or an engine fault: shown in the chat
                t.error = describe(exc)
            finally:
                if stream is not None:
                    stream.close()
                t.seconds = time.perf_counter() - start
                # This answer's own trace and usage: none where it stopped before its first token.
                generation = stream.generation if stream is not None else None
                t.trace = generation.trace if generation is not None else None
                t.usage = dict(generation.usage) if t.trace is not None else {}
                if not t.error:
                    engine.holds = doc.digest
        stop.empty()
        body.markdown(t.answer)
        if t.error:
            st.error(t.error)
        if t.usage:
            st.caption(usage_line(t))
    for old in ss.chats[doc.digest][:-KEPT_TRACES]:
        old.trace = old.baseline = None
    ss.view_answer = len(ss.chats[doc.digest]) - 1


# ---------------------------------------------------------------- page


def heads_panel(engine: Engine, doc: Doc) -> None:
    ss = state()
    turns = ss.chats.get(doc.digest, [])
    with_trace = [i for i, t in enumerate(turns) if t.trace is not None]
    st.subheader("Where the heads looked")
    if not with_trace:
        st.caption(
            "Ask a question: this view then shows, over the whole document, which chunks the attention "
            "heads chose to read while writing the answer, the pages behind them, and which layers and "
            "heads read each chunk."
        )
        return
    if ss.get("view_answer") not in with_trace:
        ss.view_answer = with_trace[-1]
    if len(with_trace) > 1:
        st.selectbox(
            "Answer",
            with_trace,
            key="view_answer",
            format_func=lambda i: f"{i + 1}. {heads_view.snippet(turns[i].question, 70)}",
        )
    else:
        st.caption(f"For the answer to “{heads_view.snippet(turns[with_trace[0]].question, 90)}”")
    cfg = engine.lh.config
    heads_view.show(
        turns[ss.view_answer].trace,
        doc,
        baseline=turns[ss.view_answer].baseline,
        sink_chunks=cfg.sink_chunks,
        recent_chunks=cfg.recent_chunks,
        attention_length=cfg.attention_length,
        key=f"heads-{doc.digest[:12]}-{ss.view_answer}",
    )


def main() -> None:
    st.set_page_config(page_title="longheads · ask a whole PDF", page_icon=":material/picture_as_pdf:", layout="wide")
    st.markdown(
        "<style>.block-container{padding-top:2.2rem;padding-bottom:6rem}"
        "[data-testid='stMetricValue']{font-size:1.45rem}</style>",
        unsafe_allow_html=True,
    )
    engine = sidebar()
    st.title(":material/picture_as_pdf: Ask a whole PDF")
    st.caption(
        "LongHeads lets a short-context model read the entire document in one prompt: every attention "
        "head picks the chunks it needs, so no retriever decides for it."
    )
    if engine is None:
        st.warning("No model is loaded. Pick another model or fix the settings in the sidebar, then Apply.")
        return

    left, right = st.columns([2, 3], gap="large")
    with left:
        doc = pick_document(right)
    if doc is None:
        return
    with right:
        ready = document_panel(engine, doc)
    n_tokens = prompt_tokens(engine, doc)

    chat, heads = st.columns([5, 6], gap="large")
    question = st.chat_input(f"Ask about {doc.name}", disabled=not ready, key="question")
    with chat:
        if doc.facts and ready:
            question = suggestions(doc) or question
        for t in state().chats.get(doc.digest, []):
            show_turn(t)
        if question and ready:
            ask(engine, doc, question, n_tokens)
    with heads:
        heads_panel(engine, doc)


main()
