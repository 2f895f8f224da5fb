"""The Streamlit app, headless through Streamlit's AppTest, on the real embedded model (CPU).

Every AppTest is its own browser session; the model is a process-wide `st.cache_resource`, as in a server.
Answers are kept to a few tokens: what is checked is the app's behaviour, not the model's knowledge.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from pypdf import PdfWriter

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "longheads_app" / "app.py"
SAMPLE = APP.parent / "samples" / "eddystone.pdf"
# Generous: the model loads inside the first run, and CI machines share their cores.
TIMEOUT = 900
SMALL_WINDOW = {"chunk_size": 64, "attention_length": 256, "max_context": 2048}


def new_session(max_new_tokens: int = 8, **settings: object) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    apply(at, max_new_tokens=max_new_tokens, **settings)
    return at


def apply(at: AppTest, **settings: object) -> None:
    """Fills the sidebar's settings form and presses Apply."""
    for key, value in settings.items():
        if key == "model_source":
            at.sidebar.radio(key=key).set_value(value)
        elif key == "model_ref":
            at.sidebar.text_input(key=key).set_value(value)
        elif key == "kv_cache":
            at.sidebar.selectbox(key=key).set_value(value)
        else:
            at.sidebar.number_input(key=key).set_value(value)
    next(b for b in at.sidebar.button if b.label == "Apply").click()
    at.run()
    assert not at.exception, at.exception


def upload(at: AppTest, name: str, data: bytes) -> None:
    at.file_uploader(key="upload").set_value((name, data, "application/pdf"))
    at.run()
    assert not at.exception, at.exception


def ask(at: AppTest, question: str) -> None:
    at.chat_input(key="question").set_value(question)
    at.run()
    assert not at.exception, at.exception


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in [*at.error, *at.sidebar.error])


def answers(at: AppTest) -> list[str]:
    return ["".join(m.value for m in cm.markdown) for cm in at.chat_message if cm.name == "assistant"]


def charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart"))


def text_pdf(*pages: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def encrypted_pdf(password: str) -> bytes:
    writer = PdfWriter(clone_from=str(SAMPLE))
    writer.encrypt(user_password=password, owner_password="owner-pw", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf() -> bytes:
    """Pages that are only pictures of text, as a scanner writes them."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    img = Image.new("L", (600, 800), 255)
    ImageDraw.Draw(img).text((40, 40), "These words are only pixels.", fill=0)
    pdf = FPDF()
    pdf.add_page()
    pdf.image(img, x=10, y=10, w=190)
    return bytes(pdf.output())


def test_upload_encode_ask_and_heads_view() -> None:
    at = new_session()
    upload(at, "eddystone.pdf", SAMPLE.read_bytes())
    shown = metrics(at)
    assert shown["Pages"] == "5"
    n_tokens = int(shown["Tokens"].replace(",", ""))
    assert 500 < n_tokens < 2000
    assert shown["Encoding"].startswith("≈")  # an estimate before encoding

    at.button(key="encode").click()
    at.run()
    assert not at.exception, at.exception
    assert any(f"Encoded {n_tokens:,} tokens" in s.value for s in at.success)
    assert metrics(at)["Encoding"] == "done"

    ask(at, "Who designed the second lighthouse?")
    assert [cm.name for cm in at.chat_message] == ["user", "assistant"]
    (answer,) = answers(at)
    assert answer.strip()
    # The question reused the encoding: only the tail after the document's last whole chunk ran again.
    usage = next(c.value for cm in at.chat_message for c in cm.caption if "document cache" in c.value)
    cached, prompt = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) of ([\d,]+) prompt", usage)[0])
    assert prompt - 256 <= cached < prompt

    assert any(s.value == "Where the heads looked" for s in at.subheader)
    assert charts(at) == 2  # the strip over the document and the layer x head grid
    assert any(m.value == "**Most read passages**" for m in at.markdown)
    # A short document fits in every head's window, and the view says so.
    assert any("fits in each head's window" in i.value for i in at.info)

    ask(at, "When was the light first lit?")
    assert len(answers(at)) == 2
    assert at.selectbox(key="view_answer").value == 1  # the view follows the newest answer
    assert charts(at) == 2


def test_heads_view_with_real_selection_and_context_limit() -> None:
    """A window of 4 chunks of 64 tokens makes the heads choose inside the 5-page sample. The KV cache is set to
    CPU memory (on a CPU machine it is there either way): the engine's config and the caption say so."""
    at = new_session(**SMALL_WINDOW, kv_cache="Keys and values in CPU memory")
    assert any("KV cache: keys and values in cpu memory" in c.value for c in at.sidebar.caption)
    upload(at, "eddystone.pdf", SAMPLE.read_bytes())
    assert metrics(at)["Head window"] == "256"
    ask(at, "What happened to the first lighthouse in the Great Storm?")
    assert answers(at)[0].strip()
    assert not any("fits in each head's window" in i.value for i in at.info)
    assert charts(at) == 2
    passages = [m.value for m in at.markdown if re.match(r"\*\*\d · pp?\. ", m.value)]
    assert passages, "the most read passages name their pages"
    # The document outgrows the window, so a neutral question's reads were subtracted.
    assert all("for any question" in p for p in passages)
    assert any("Passages read most for this question" in m.value for m in at.markdown)

    # The layer x head grid follows the chunk picker (a click on the strip moves the picker too).
    chunk = next(s for s in at.selectbox if s.label == "Chunk")
    before = chunk.value
    chunk.select_index(len(chunk.options) - 1)
    at.run()
    assert next(s for s in at.selectbox if s.label == "Chunk").value != before
    assert not at.exception, at.exception
    assert charts(at) == 2

    # The answer's room counts against the maximum context: 885 + 1500 tokens do not fit in 2048.
    apply(at, max_new_tokens=1500)
    assert "maximum context" in errors(at)
    assert "2,048" in errors(at)
    assert at.chat_input(key="question").disabled


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"%PDF-1.7\nthis is not really a pdf", "not a readable PDF"),
        (lambda: b"", "is empty"),
        (lambda: encrypted_pdf("lighthouse"), "encrypted"),
        (scanned_pdf, "has no text"),
    ],
    ids=["corrupt", "empty", "encrypted", "scanned"],
)
def test_bad_files_give_messages(make, message: str) -> None:
    at = new_session()
    upload(at, "bad.pdf", make())
    assert message in errors(at)
    assert not at.metric  # nothing half-loaded
    # The app keeps working: a good file after a bad one loads.
    upload(at, "eddystone.pdf", SAMPLE.read_bytes())
    assert metrics(at)["Pages"] == "5"
    assert not errors(at)


def test_encrypted_pdf_opens_with_its_password() -> None:
    at = new_session()
    upload(at, "locked.pdf", encrypted_pdf("lighthouse"))
    password = next(t for t in at.text_input if t.label == "Password")
    password.set_value("wrong")
    at.run()
    assert "does not open it" in errors(at)
    next(t for t in at.text_input if t.label == "Password").set_value("lighthouse")
    at.run()
    assert not at.exception, at.exception
    assert metrics(at)["Pages"] == "5"


def test_settings_validation_and_failed_model_load(tmp_path: Path) -> None:
    at = new_session()
    apply(at, attention_length=1000)
    assert "attention_length" in errors(at)
    assert any("previous model" in c.value for c in at.sidebar.caption)

    apply(at, attention_length=0, model_source="Local path", model_ref=str(tmp_path / "missing"))
    assert "No such file or folder" in errors(at)

    # An existing folder that holds no model: the load itself fails, and the app stays on its last model.
    apply(at, model_ref=str(tmp_path))
    assert "Settings not applied" in errors(at)
    assert "Could not load model" in errors(at)
    upload(at, "eddystone.pdf", SAMPLE.read_bytes())
    assert metrics(at)["Pages"] == "5"


def test_two_sessions_keep_their_own_documents_and_answers() -> None:
    first, second = new_session(), new_session()
    upload(first, "eddystone.pdf", SAMPLE.read_bytes())
    harbour = text_pdf("The harbour of Porthwen has a blue crane.", "The crane lifts fishing boats in winter.")
    upload(second, "harbour.pdf", harbour)
    assert metrics(first)["Pages"] == "5"
    assert metrics(second)["Pages"] == "2"

    ask(second, "What colour is the crane?")
    first.run()
    assert not first.chat_message  # the other session's question and answer never show here
    assert first.session_state["doc"].name == "eddystone.pdf"

    # The second session's encoding replaced the first's in the shared engine: asking re-encodes, and works.
    ask(first, "Who built the first lighthouse?")
    second.run()
    assert [cm.name for cm in first.chat_message] == ["user", "assistant"]
    assert [cm.markdown[0].value for cm in second.chat_message if cm.name == "user"] == ["What colour is the crane?"]
    assert second.session_state["doc"].name == "harbour.pdf"
    # One model for both sessions: their token counts are keyed by the same engine.
    engines = {key[1] for at in (first, second) for key in at.session_state["tokens"]}
    assert len(engines) == 1


def test_bundled_and_generated_samples() -> None:
    at = new_session()
    at.button_group(key="doc_source").set_value("Bundled sample")
    at.run()
    assert not at.exception, at.exception
    assert metrics(at)["Pages"] == "5"  # the smallest bundled sample comes first: eddystone.pdf

    # A long PDF made on demand, with its planted questions offered as one-click questions.
    at.select_slider(key="long_tokens").set_value(16_000)
    at.button(key="make_long").click()
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="sample").value.name == "pride-and-prejudice-16k.pdf"
    assert int(metrics(at)["Tokens"].replace(",", "")) > 14_000
    planted = [b.label for b in at.button if b.key and b.key.startswith("fact-")]
    assert len(planted) == 3 and all("answer on page" in label for label in planted)


def _long_trace(n_chunks: int = 400, chunk: int = 256, steps: int = 65):
    """A SelectionTrace shaped like a 100k-token answer of the embedded model, over a real PDFDocument.

    The selections are drawn at random: this tests the heads' view at that size, not what a model reads.
    """
    import torch

    from longheads import SelectionTrace
    from longheads.pdf import PAGE_SEPARATOR, PDFDocument, PDFPage

    texts = [f"Page {i + 1}. " + "The tide came in over the harbour wall. " * 25 for i in range(400)]
    pages, at = [], 0
    for i, text in enumerate(texts):
        pages.append(PDFPage(index=i, label=str(i + 1), text=text, start=at, end=at + len(text)))
        at += len(text) + len(PAGE_SEPARATOR)
    doc = PDFDocument(pages=tuple(pages), text=PAGE_SEPARATOR.join(texts), name="long.pdf")
    prompt = "<|im_start|>user\n<document>\n" + doc.text + "\n</document>\n\nQuestion: where?<|im_end|>\n"
    per = len(prompt) / n_chunks
    trace = SelectionTrace(
        chunk_size=chunk,
        num_layers=30,
        num_heads=9,
        prompt_text=prompt,
        prompt_tokens=n_chunks * chunk,
        chunk_token_spans=[(i * chunk, (i + 1) * chunk) for i in range(n_chunks)],
        chunk_char_spans=[(round(i * per), round((i + 1) * per)) for i in range(n_chunks)],
        selections=torch.randint(0, n_chunks, (steps, 30, 9, 16), generator=torch.Generator().manual_seed(0)).int(),
    )
    return trace, doc


def test_the_app_reads_a_manual_without_its_contents_and_index() -> None:
    """What the model reads of a real manual: every body page, none of the pages that list the others."""
    from longheads_app import document

    data = (ROOT / "benchmarks" / "real_pdfs" / "R-data.pdf").read_bytes()
    doc = document.read(data, "R-data.pdf")
    skipped = [p.number for p in doc.pages if p.skipped]
    assert skipped == [3, 4, 38, 39, 40, 41]  # contents, then the index
    assert doc.pages[4].text.startswith("Acknowledgements") and all(p.text == "" for p in doc.pages if p.skipped)
    assert len(doc.pages) == 41 and doc.text == "\n\n".join(p.text for p in doc.pages)


def test_heads_view_numbers_passages_beyond_a_neutral_question() -> None:
    from dataclasses import replace

    import torch

    from longheads_app import document, heads_view

    trace, parsed = _long_trace(n_chunks=40, steps=3)
    doc = document.Doc("long.pdf", parsed, 0, "0" * 64)
    plain = heads_view.build(trace, doc, sink_chunks=1, recent_chunks=1)
    assert not plain.has_baseline and len(plain.top) == heads_view.TOP_K
    # A neutral question whose heads read the answer's favourite chunk at every slot.
    neutral = replace(trace, selections=torch.full_like(trace.selections, plain.top[0]))
    view = heads_view.build(trace, doc, sink_chunks=1, recent_chunks=1, baseline=neutral)
    assert view.has_baseline and plain.top[0] not in view.top and view.top[:-1] == plain.top[1:]
    assert view.table.at[plain.top[0], "neutral_per_token"] == 30 * 9 * 16
    # Reading exactly what any question reads leaves no passage to number.
    assert heads_view.build(trace, doc, sink_chunks=1, recent_chunks=1, baseline=trace).top == []


def test_heads_view_of_a_100k_token_document() -> None:
    from longheads_app import document, heads_view

    trace, parsed = _long_trace()
    doc = document.Doc("long.pdf", parsed, 0, "0" * 64)
    view = heads_view.build(trace, doc, sink_chunks=1, recent_chunks=1)
    assert len(view.table) == 400 and len(view.pages) == 400
    assert view.table.at[200, "pages"].startswith("p")
    # The strip draws every chunk and every page, and numbers the most read passages; the grid has every head.
    strip = heads_view.strip_chart(view).to_dict()["datasets"]
    assert sorted(len(rows) for rows in strip.values()) == [heads_view.TOP_K, 400, 400]
    grid = heads_view.grid_chart(trace.head_grid(view.top[0]).numpy(), view.steps).to_dict()["datasets"]
    assert [len(rows) for rows in grid.values()] == [30 * 9]

    def page() -> None:
        import streamlit as st

        from longheads_app import heads_view

        trace, doc = st.session_state["case"]
        heads_view.show(trace, doc, sink_chunks=1, recent_chunks=1, attention_length=4096, key="long")

    at = AppTest.from_function(page, default_timeout=120)
    at.session_state["case"] = (trace, doc)
    at.run()
    assert not at.exception, at.exception
    assert charts(at) == 2
