"""ChatLongHeads and LongHeadsPDFLoader with the real engine and the embedded model, plus the standard
langchain-tests suites."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import LoopTicks, embedded_engine
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

import longheads
import longheads.engine
from langchain_longheads import ChatLongHeads, LongHeadsPDFLoader, chat_models
from langchain_longheads.chat_models import to_engine_messages
from longheads.pdf import NoTextLayerError, PDFError, read_pdf

SAMPLE = Path(__file__).resolve().parents[1] / "apps" / "longheads_app" / "samples" / "eddystone.pdf"

# Short answers keep the CPU time of the suites modest; every standard test only needs some text back.
FAST = {"max_tokens": 8}


class TestChatLongHeadsUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLongHeads]:
        return ChatLongHeads

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # No engine: built from the (default) model name, which loads nothing until the first call.
        return {}


class TestChatLongHeadsIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLongHeads]:
        return ChatLongHeads

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": embedded_engine(), **FAST}

    @property
    def supports_model_override(self) -> bool:
        # One ChatLongHeads serves the one model its engine holds; another model is another engine.
        return False

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        # The second question about the same document reuses the engine's encoding of it.
        model = ChatLongHeads(**self.chat_model_params)
        document = read_pdf(SAMPLE).text
        for question in ("Who was Henry Winstanley?", "Who was John Smeaton?"):
            messages = [HumanMessage(f"<document>\n{document}\n</document>\n\nQuestion: {question}")]
            if stream:
                full = None
                for chunk in model.stream(messages):
                    full = chunk if full is None else full + chunk
                result = full
            else:
                result = model.invoke(messages)
        assert result.usage_metadata["input_token_details"]["cache_read"] > 0
        return result


# --- behaviour beyond the standard suites ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(engine: Any) -> ChatLongHeads:
    return ChatLongHeads(engine=engine, max_tokens=24)


def test_building_from_a_loaded_engine_loads_nothing(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(chat_models, "load_shared", no_loading)
    monkeypatch.setattr(longheads, "load", no_loading)
    monkeypatch.setattr(longheads.engine, "load", no_loading)
    model = ChatLongHeads(engine=engine)
    # It runs on the very engine it was given, and so on its model and document cache.
    assert model.get_engine() is engine
    assert model.model_name == engine.model_name
    # Built from a name, nothing is loaded until the first call; that call loads the model (here: fails to).
    named = ChatLongHeads(model="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(AssertionError, match="a model was loaded"):
        named.invoke("hi")


def test_messages_go_through_the_models_chat_template(chat: ChatLongHeads, engine: Any) -> None:
    messages = [SystemMessage("Answer briefly."), HumanMessage("What is the capital of France?")]
    chat.invoke(messages)
    expected = engine.render(
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    assert engine.last_trace.prompt_text == expected


def test_consecutive_messages_of_one_role_are_merged() -> None:
    merged = to_engine_messages([HumanMessage("a"), HumanMessage("b"), AIMessage("c")])
    assert merged == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


def test_usage_and_model_name(chat: ChatLongHeads, engine: Any) -> None:
    result = chat.invoke("Name a colour.")
    usage = result.usage_metadata
    assert usage["input_tokens"] == engine.last_usage["prompt_tokens"] > 0
    assert usage["output_tokens"] == engine.last_usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert result.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    # An answer cut at max_tokens says so (one the model or a stop string ended: test_multi_token_stop_string).
    cut = chat.invoke("Count from 1 to 10, separated by commas.", max_tokens=3)
    assert cut.usage_metadata["output_tokens"] == 3 and cut.response_metadata["finish_reason"] == "length"


def test_stream_reports_every_piece_to_callbacks(chat: ChatLongHeads) -> None:
    class Collect(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Collect()
    chunks = list(chat.stream("Count from 1 to 5.", config={"callbacks": [handler]}))
    text = "".join(c.content for c in chunks)
    assert len(chunks) >= 3 and text
    assert "".join(handler.tokens) == text
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["output_tokens"] > 0


def test_multi_token_stop_string(engine: Any) -> None:
    # One beam: a stop string then cuts the one answer there is, which the full answer shows.
    model = ChatLongHeads(engine=engine, max_tokens=40, num_beams=1)
    prompt = "Count from 1 to 10, separated by commas."
    full = model.invoke(prompt).content
    assert "4, 5" in full, f"the model counted differently: {full!r}"
    stopped_message = model.invoke(prompt, stop=["4, 5"])
    stopped = stopped_message.content
    assert stopped_message.response_metadata["finish_reason"] == "stop"
    assert full.startswith(stopped) and "4, 5" not in stopped and stopped.rstrip().endswith("3,")
    streamed = "".join(c.content for c in model.stream(prompt, stop=["4, 5"]))
    assert streamed == stopped
    # A stop string set on the model works the same.
    assert ChatLongHeads(engine=engine, max_tokens=40, num_beams=1, stop=["4, 5"]).invoke(prompt).content == stopped
    # With beams, every beam that reaches a stop string ends there, and the answer is one of them or one of those
    # that had not reached it: either way it does not hold the stop string.
    beamed = ChatLongHeads(engine=engine, max_tokens=40, num_beams=4).invoke(prompt, stop=["5"]).content
    assert beamed.strip() and "5" not in beamed


async def test_async_calls_do_not_block_the_event_loop(chat: ChatLongHeads) -> None:
    async with LoopTicks(chat.get_engine()) as loop:
        result = await chat.ainvoke("Say hello.")
        pieces = [c.content async for c in chat.astream("Say hello.")]
    assert result.content and "".join(pieces)
    loop.assert_loop_was_free()


async def test_stopping_an_async_stream_early_frees_the_engine(chat: ChatLongHeads, engine: Any) -> None:
    model = ChatLongHeads(engine=engine, max_tokens=200)
    stream = model.astream("Write a long story about a lighthouse.")
    async for _ in stream:
        break
    await stream.aclose()
    # The engine is free again (its lock released by the thread that took it) and answers the next call.
    assert (await asyncio.wait_for(chat.ainvoke("Say hi."), timeout=120)).content


def test_unsupported_inputs_fail_clearly(chat: ChatLongHeads) -> None:
    image = {"type": "image", "url": "https://example.com/cat.png"}
    with pytest.raises(ValueError, match="reads text only"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])])
    with pytest.raises(ValueError, match="does not support tool calling"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")])
    with pytest.raises(ValueError, match="build another ChatLongHeads for 'gpt-x'"):
        chat.invoke("hi", model="gpt-x")


# --- the PDF loader ----------------------------------------------------------------------------------------


def test_pdf_loader_pages_and_metadata() -> None:
    loader = LongHeadsPDFLoader(SAMPLE)
    docs = loader.load()
    assert len(docs) == 5
    third = docs[2]
    assert "Rudyerd" in third.page_content
    assert third.metadata == {
        "source": "eddystone.pdf",
        "total_pages": 5,
        "title": "The Eddystone Lighthouse: Four Towers on One Rock",
        "page": 2,
        "page_number": 3,
        "page_label": "2",
        "start_index": loader.pdf.pages[2].start,
    }
    assert loader.pdf.text[third.metadata["start_index"] :].startswith(third.page_content)


def test_pdf_loader_single_document() -> None:
    (doc,) = LongHeadsPDFLoader(SAMPLE.read_bytes(), mode="single").load()
    assert doc.page_content == read_pdf(SAMPLE).text
    assert doc.metadata["source"] == "bytes"
    assert [p["page_label"] for p in doc.metadata["pages"]] == ["i", "1", "2", "3", "4"]


def test_pdf_loader_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(PDFError, match=r"'empty\.pdf' is empty \(0 bytes\)"):
        LongHeadsPDFLoader(empty).load()
    blank = tmp_path / "blank.pdf"
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.output(str(blank))
    with pytest.raises(NoTextLayerError, match="has no text"):
        LongHeadsPDFLoader(blank).load()
    with pytest.raises(ValueError, match="choose 'page' or 'single'"):
        LongHeadsPDFLoader(SAMPLE, mode="chapters")


def test_lcel_chain_answers_from_the_whole_pdf(engine: Any) -> None:
    doc = read_pdf(SAMPLE)
    prompt = ChatPromptTemplate.from_messages(
        [("human", "<document>\n{document}\n</document>\n\nQuestion: {question}")]
    )
    chain = prompt | ChatLongHeads(engine=engine, max_tokens=24)
    answer = chain.invoke({"document": doc.text, "question": "How old was the keeper Henry Hall?"})
    assert "94" in answer.content or "ninety-four" in answer.content.lower(), answer.content
    assert answer.usage_metadata["input_tokens"] > engine.count_tokens(doc.text)
