"""The heads' view: where in the document the attention heads looked while they wrote an answer.

Everything here is computed from a `longheads.SelectionTrace` and the document it was asked about. Arrays
stay per chunk or per head (at most layers x heads x chunks), so a 100k-token document (about 400 chunks)
draws as fast as a short one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
import torch

import longheads
from longheads_app.document import Doc, page_range

ALWAYS_KEPT = "always kept"
DOCUMENT = "document"
PROMPT = "prompt"
TOP_K = 5
SHOWN = 3  # passages shown before "more": the view must fit beside the chat
CACHED_VIEWS = 4  # answers whose built view a browser session keeps


@dataclass
class ChunkView:
    """One answer's trace laid over its document."""

    table: pd.DataFrame  # one row per prompt chunk
    pages: pd.DataFrame  # one row per page: its token span in the prompt
    steps: int
    heads: int  # layers x heads
    top: list[int]  # most selected document chunks (beyond the baseline's, when there is one), best first
    has_baseline: bool = False


def locate(prompt_text: str, doc: Doc) -> int:
    """Where the document starts inside the rendered prompt, or -1 if the prompt does not hold it verbatim."""
    try:
        return doc.pdf.locate(prompt_text)
    except ValueError:
        return -1


def distinct_heads(selections: torch.Tensor, n_chunks: int) -> np.ndarray:
    """For every chunk, how many (layer, head) pairs selected it at least once during the answer."""
    steps, layers, heads, slots = selections.shape
    flat = selections.permute(1, 2, 0, 3).reshape(layers * heads, steps * slots).long()
    # Column 0 swallows the empty slots (-1) and chunks of generated text, which lie past the prompt.
    flat = torch.where((flat >= 0) & (flat < n_chunks), flat + 1, 0)
    seen = torch.zeros(layers * heads, n_chunks + 1, dtype=torch.bool)
    seen.scatter_(1, flat, True)
    return seen[:, 1:].sum(0).numpy()


def per_step(trace, n: int) -> np.ndarray:
    """(layer, head) pairs that read each of the first `n` chunks, per answer token."""
    reads = trace.reads_per_step().numpy()[:n]
    return np.pad(reads, (0, n - len(reads)))


def build(trace, doc: Doc, sink_chunks: int, recent_chunks: int, baseline=None) -> ChunkView:
    """`baseline`: the trace of a neutral question about the same document (or None); passages are then
    ranked by how much more this answer read them."""
    # The trace also has chunks of the generated answer; the view is about the prompt.
    token_spans = [tuple(s) for s in trace.chunk_token_spans if s[0] < trace.prompt_tokens]
    char_spans = [tuple(s) for s in trace.chunk_char_spans[: len(token_spans)]]
    n = len(token_spans)
    last = (trace.prompt_tokens - 1) // trace.chunk_size
    kept = set(range(sink_chunks)) | set(range(max(0, last - recent_chunks), last + 1))
    steps = int(trace.selections.shape[0])
    n_heads = trace.num_layers * trace.num_heads
    distinct = distinct_heads(trace.selections, n)
    offset = locate(trace.prompt_text, doc)
    if baseline is not None and locate(baseline.prompt_text, doc) != offset:
        baseline = None  # a different layout: its chunks are not these
    reads = per_step(trace, n)
    base = per_step(baseline, n) if baseline is not None else np.zeros(n)

    doc_end = offset + len(doc.text)
    rows = []
    for i, ((t0, t1), (c0, c1)) in enumerate(zip(token_spans, char_spans, strict=True)):
        in_doc = offset >= 0 and c0 < doc_end and c1 > offset
        pages = doc.pdf.pages_in_span(max(c0, offset) - offset, min(c1, doc_end) - offset) if in_doc else []
        if i in kept:
            kind = ALWAYS_KEPT
        else:
            kind = DOCUMENT if in_doc else PROMPT
        rows.append(
            {
                "chunk": i,
                "start": t0,
                "end": t1,
                "per_token": reads[i],
                "neutral_per_token": base[i],
                "share": reads[i] / max(n_heads, 1),
                "distinct": int(distinct[i]),
                "kind": kind,
                "pages": page_range(pages) if pages else "outside the document",
                "page": pages[0].number if pages else 0,
                "snippet": snippet(trace.prompt_text[c0:c1], 180),
            }
        )
    table = pd.DataFrame(rows)
    ranked = trace.top_chunks(TOP_K + 4, baseline=baseline)
    top = [c for c in ranked if c < n and table.at[c, "kind"] == DOCUMENT][:TOP_K]
    return ChunkView(table, page_spans(doc, offset, char_spans, token_spans), steps, n_heads, top, baseline is not None)


def page_spans(doc: Doc, offset: int, char_spans: list, token_spans: list) -> pd.DataFrame:
    """Each page's token span in the prompt, interpolated inside chunks (chunks and pages rarely align)."""
    if offset < 0 or not doc.pages or not char_spans:
        return pd.DataFrame(columns=["start", "end", "label", "shade"])
    chars = [c0 for c0, _ in char_spans] + [char_spans[-1][1]]
    tokens = [t0 for t0, _ in token_spans] + [token_spans[-1][1]]
    starts = np.interp([offset + p.start for p in doc.pages], chars, tokens)
    ends = np.append(starts[1:], np.interp(offset + doc.pages[-1].end, chars, tokens))
    return pd.DataFrame(
        {
            "start": starts,
            "end": ends,
            "label": [f"page {p.label}" for p in doc.pages],
            "shade": [i % 2 for i in range(len(doc.pages))],
        }
    )


def snippet(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_markdown(text: str) -> str:
    # PDF text is full of *, _, # and $ that Markdown (and Streamlit's LaTeX) would otherwise interpret.
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|>~<$:])", r"\\\1", text)


def strip_chart(view: ChunkView) -> alt.VConcatChart:
    """The whole prompt as one strip of chunks, coloured by how many heads read each, pages underneath."""
    table = view.table
    total = int(table["end"].max()) if len(table) else 1
    domain = alt.Scale(domain=[0, total], nice=False, zero=True)
    click = alt.selection_point(name="chunk", fields=["chunk"], on="click", clear="dblclick")
    tooltip = [
        alt.Tooltip("chunk:Q", title="chunk"),
        alt.Tooltip("pages:N", title="where"),
        alt.Tooltip("per_token:Q", title="heads per answer token", format=".1f"),
        alt.Tooltip("distinct:Q", title=f"heads that read it (of {view.heads})"),
        alt.Tooltip("kind:N", title="kind"),
        alt.Tooltip("snippet:N", title="text"),
    ]
    chosen = table.loc[table["kind"] != ALWAYS_KEPT, "per_token"]
    top = max(float(chosen.max()) if len(chosen) else 0.0, 1e-9)
    colour = alt.condition(
        f"datum.kind == '{ALWAYS_KEPT}'",
        alt.value("#cbd2de"),
        # No legend: it would take width from 400 chunks; the tooltip gives every chunk's numbers.
        alt.Color("per_token:Q", scale=alt.Scale(scheme="orangered", domain=[0, top], clamp=True), legend=None),
    )
    strip = (
        alt.Chart(table)
        .mark_rect(stroke="white", strokeWidth=0.25 if len(table) > 150 else 0.8)
        .encode(
            x=alt.X("start:Q", scale=domain, axis=None),
            x2="end:Q",
            y=alt.value(16),
            y2=alt.value(60),
            color=colour,
            tooltip=tooltip,
            opacity=alt.condition(click, alt.value(1.0), alt.value(0.3)),
        )
        .add_params(click)
    )
    layers: list[alt.Chart] = [strip]
    if view.top:
        marks = table.loc[view.top].assign(
            mid=lambda d: (d["start"] + d["end"]) / 2,
            rank=[str(i + 1) for i in range(len(view.top))],
        )
        layers.append(
            alt.Chart(marks)
            .mark_rule(color="#111827", strokeWidth=1)
            .encode(x=alt.X("mid:Q", scale=domain), y=alt.value(11), y2=alt.value(16))
        )
        layers.append(
            alt.Chart(marks)
            .mark_text(fontSize=10.5, fontWeight="bold", color="#111827", baseline="bottom")
            .encode(x=alt.X("mid:Q", scale=domain), y=alt.value(10), text="rank:N")
        )
    heads = alt.layer(*layers).properties(height=60)

    pages = view.pages if len(view.pages) else pd.DataFrame({"start": [0], "end": [total], "label": [""], "shade": [0]})
    band = (
        alt.Chart(pages)
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X(
                "start:Q",
                scale=domain,
                title=None,
                axis=alt.Axis(
                    format="~s",
                    tickCount=8,
                    grid=False,
                    labelFontSize=10,
                    labelExpr="datum.label + ' tokens'",
                ),
            ),
            x2="end:Q",
            color=alt.condition("datum.shade == 1", alt.value("#94a3b8"), alt.value("#cbd5e1")),
            tooltip=[alt.Tooltip("label:N", title="page")],
        )
        .properties(height=10)
    )
    return alt.vconcat(heads, band, spacing=2).resolve_scale(x="shared").configure_view(strokeWidth=0)


def grid_chart(grid: np.ndarray, steps: int) -> alt.Chart:
    """Layer x head: for how many of the answer's tokens each head read the chosen chunk."""
    layers, heads = grid.shape
    frame = pd.DataFrame(
        [
            (layer, head, int(grid[layer, head]), grid[layer, head] / max(steps, 1))
            for layer in range(layers)
            for head in range(heads)
        ],
        columns=["layer", "head", "steps", "share"],
    )
    return (
        alt.Chart(frame)
        .mark_rect(stroke="white", strokeWidth=0.6)
        .encode(
            x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, orient="top")),
            y=alt.Y("layer:O", title="layer", axis=alt.Axis(values=list(range(0, layers, 5)))),
            color=alt.Color(
                "share:Q",
                title="of answer tokens",
                scale=alt.Scale(scheme="orangered", domain=[0, 1]),
                legend=alt.Legend(format="%", orient="bottom", gradientLength=120, titleFontSize=10, labelFontSize=9),
            ),
            tooltip=[
                alt.Tooltip("layer:O"),
                alt.Tooltip("head:O"),
                alt.Tooltip("steps:Q", title="answer tokens"),
                alt.Tooltip("share:Q", format=".0%"),
            ],
        )
        .properties(height=min(12 * layers, 420))
    )


def passage(trace, doc: Doc, view: ChunkView, rank: int, chunk: int) -> None:
    """One of the most read chunks: where it is, how many heads read it, its text, and its whole page."""
    row = view.table.loc[chunk]
    with st.container(border=True):
        head, more = st.columns([4, 1], vertical_alignment="center")
        neutral = f" ({row['neutral_per_token']:.0f} for any question)" if view.has_baseline else ""
        head.markdown(
            f"**{rank} · {row['pages']}** — read by **{row['per_token']:.0f}** of {view.heads} heads per answer "
            f"token{neutral} · chunk {chunk}, tokens {row['start']:,}–{row['end']:,}"
        )
        if row["page"]:
            page = doc.pages[int(row["page"]) - 1]
            with more.popover(f"Page {page.label}", width="stretch"):
                with st.container(height=420, border=False):
                    st.text(page.text)
        c0, c1 = trace.chunk_char_spans[chunk]
        st.caption(escape_markdown(snippet(trace.prompt_text[c0:c1], 300)))


def show(
    trace, doc: Doc, *, sink_chunks: int, recent_chunks: int, attention_length: int, key: str, baseline=None
) -> None:
    """Draws the heads' view of one answer in the current Streamlit container."""
    # Built once per answer: later reruns (a click, the chunk picker) reuse the table and the chart's spec.
    cache: dict = st.session_state.setdefault("heads_view_cache", {})
    if key not in cache:
        view = build(trace, doc, sink_chunks, recent_chunks, baseline)
        while len(cache) >= CACHED_VIEWS:
            cache.pop(next(iter(cache)))
        cache[key] = (view, strip_chart(view).to_dict())
    view, spec = cache[key]
    if trace.prompt_tokens + view.steps <= attention_length:
        st.info(
            f"The whole prompt ({trace.prompt_tokens:,} tokens) fits in each head's window of "
            f"{attention_length:,} tokens, so every head reads every chunk: LongHeads only has to choose "
            "for longer documents. Try a long PDF to see the heads pick."
        )
    st.caption(
        f"{len(view.table):,} chunks of {trace.chunk_size} tokens · {view.steps} answer tokens × "
        f"{trace.num_layers} layers × {trace.num_heads} heads. Darker chunks were read by more heads; grey ones "
        "(the start and the question) are read by every head by rule; the band below marks the pages. "
        + (
            "Numbers mark the passages this answer read most beyond what the heads read for any question "
            f"(“{longheads.NEUTRAL_QUESTION}”). "
            if view.has_baseline
            else "Numbers mark the most read passages. "
        )
        + "Click a chunk to inspect it."
    )
    interactive(trace, doc, view, spec, key)


# A fragment: clicking the strip or picking a chunk reruns only this view, not the chat and the document.
@st.fragment
def interactive(trace, doc: Doc, view: ChunkView, spec: dict, key: str) -> None:
    table = view.table
    event = st.vega_lite_chart(spec, on_select="rerun", selection_mode="chunk", key=f"{key}-strip", width="stretch")

    choice_key = f"{key}-chunk"
    clicked = [p["chunk"] for p in (event.selection.get("chunk") or [])] if event else []
    # A click moves the chunk picker once; the picker stays free to change until the next click.
    if clicked and st.session_state.get(f"{key}-click") != clicked[0]:
        st.session_state[f"{key}-click"] = clicked[0]
        st.session_state[choice_key] = int(clicked[0])

    if not view.top:
        st.info(
            "The heads read only the always-kept chunks for this answer"
            + (", or no more than for any question" if view.has_baseline else "")
            + ": the document fits in their attention window, or the answer did not need it."
        )
    else:
        st.markdown("**Passages read most for this question**" if view.has_baseline else "**Most read passages**")
        for rank, c in enumerate(view.top[:SHOWN], 1):
            passage(trace, doc, view, rank, c)
        if len(view.top) > SHOWN:
            with st.expander(f"{len(view.top) - SHOWN} more"):
                for rank, c in enumerate(view.top[SHOWN:], SHOWN + 1):
                    passage(trace, doc, view, rank, c)

    st.markdown("**Which layers and heads read a chunk**")
    order = view.top + [c for c in table["chunk"] if c not in view.top]
    if st.session_state.get(choice_key) not in order:
        st.session_state[choice_key] = order[0] if order else 0
    left, right = st.columns([3, 2])
    with left:
        chunk = st.selectbox(
            "Chunk",
            order,
            key=choice_key,
            format_func=lambda c: (
                f"chunk {c} · {table.at[c, 'pages']} · {table.at[c, 'per_token']:.0f} heads per token"
            ),
        )
        row = table.loc[chunk]
        c0, c1 = trace.chunk_char_spans[chunk]
        st.caption(f"{row['kind']} · tokens {row['start']:,}–{row['end']:,} · {row['pages']}")
        with st.container(height=190):
            st.text(trace.prompt_text[c0:c1])
    with right:
        grid = trace.head_grid(chunk).numpy()
        st.altair_chart(grid_chart(grid, view.steps), width="stretch")
