"""LongHeads (LlamaIndex LLM) and WholeDocumentQueryEngine with the real engine and the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import LoopTicks
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent
from llama_index.llms import longheads as llama_longheads
from llama_index.llms.longheads import LongHeads, WholeDocumentQueryEngine

import longheads
import longheads.engine
from longheads.pdf import read_pdf
from longheads.sample_pdf import make_long_pdf

SAMPLE = Path(__file__).resolve().parents[1] / "apps" / "longheads_app" / "samples" / "eddystone.pdf"


@pytest.fixture(scope="module")
def llm(engine: Any) -> LongHeads:
    return LongHeads(engine=engine, max_new_tokens=24)


class LLMCalls(BaseEventHandler):
    """Records every LLM call LlamaIndex makes, through its own instrumentation."""

    calls: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "LLMCalls"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, (LLMChatStartEvent, LLMCompletionStartEvent)):
            self.calls.append(event)


@pytest.fixture
def llm_calls() -> Any:
    handler = LLMCalls(calls=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler.calls
    dispatcher.event_handlers.remove(handler)


def test_metadata_reports_the_engines_real_context(llm: LongHeads, engine: Any) -> None:
    meta = llm.metadata
    assert meta.context_window == engine.max_context
    assert meta.context_window > 100_000  # far beyond the model's trained 8k: LlamaIndex will not split
    assert meta.num_output == 24
    assert meta.is_chat_model and not meta.is_function_calling_model
    assert meta.model_name == "SmolLM2-135M-Instruct"


def test_building_from_a_loaded_engine_loads_nothing(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(llama_longheads, "load_shared", no_loading)
    monkeypatch.setattr(longheads, "load", no_loading)
    monkeypatch.setattr(longheads.engine, "load", no_loading)
    llm = LongHeads(engine=engine)
    assert llm.engine is engine and llm.model_name == engine.model_name
    assert llm.metadata.model_name == engine.model_name
    # Built from a name, the model is loaded when first needed (here: fails to be), not before.
    named = LongHeads(model_name="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(AssertionError, match="a model was loaded"):
        named.complete("hi")


def test_complete_uses_the_chat_template_unless_formatted(llm: LongHeads, engine: Any) -> None:
    response = llm.complete("Name a fruit.")
    assert response.text
    assert response.raw["trace"].prompt_text == engine.render([{"role": "user", "content": "Name a fruit."}])
    assert response.additional_kwargs["prompt_tokens"] == response.raw["trace"].prompt_tokens
    assert response.raw["usage"]["model_name"] == "SmolLM2-135M-Instruct"

    raw = engine.render([{"role": "user", "content": "Name a fruit."}])
    formatted = llm.complete(raw, formatted=True)
    assert formatted.text == response.text and formatted.raw["trace"].prompt_text == raw


def test_stream_complete_deltas(llm: LongHeads) -> None:
    responses = list(llm.stream_complete("Count from 1 to 5."))
    deltas = "".join(r.delta or "" for r in responses)
    assert len(responses) >= 3
    assert deltas == responses[-1].text and deltas
    assert responses[-1].additional_kwargs["completion_tokens"] > 0


def test_chat_and_stream_chat(llm: LongHeads, engine: Any) -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
        ChatMessage(role=MessageRole.USER, content="What is the capital of France?"),
    ]
    reply = llm.chat(messages)
    assert reply.message.role == MessageRole.ASSISTANT and reply.message.content
    assert reply.raw["trace"].prompt_text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    streamed = list(llm.stream_chat(messages))
    assert "".join(r.delta or "" for r in streamed) == streamed[-1].message.content == reply.message.content
    assert streamed[-1].raw["trace"].prompt_text == reply.raw["trace"].prompt_text


def test_stop_strings_of_several_tokens(engine: Any) -> None:
    # One beam: a stop string then cuts the one answer there is, which the full answer shows.
    llm = LongHeads(engine=engine, max_new_tokens=40, num_beams=1)
    full = llm.complete("Count from 1 to 10, separated by commas.").text
    assert "4, 5" in full, full
    stopped = llm.complete("Count from 1 to 10, separated by commas.", stop=["4, 5"]).text
    assert full.startswith(stopped) and "4, 5" not in stopped
    # With beams, no answer holds a stop string either.
    beamed = LongHeads(engine=engine, max_new_tokens=40, num_beams=4).complete("Count from 1 to 10.", stop=["5"]).text
    assert beamed.strip() and "5" not in beamed


def test_unsupported_inputs_fail_clearly(llm: LongHeads) -> None:
    image = ChatMessage(
        role=MessageRole.USER, blocks=[TextBlock(text="What is this?"), ImageBlock(url="https://x.org/a.png")]
    )
    with pytest.raises(ValueError, match="reads text only"):
        llm.chat([image])
    with pytest.raises(ValueError, match="does not support tool calling"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="42")])


async def test_async_variants_do_not_block_the_event_loop(llm: LongHeads) -> None:
    async with LoopTicks(llm.engine) as loop:
        completion = await llm.acomplete("Say hello.")
        chat = await llm.achat([ChatMessage(role=MessageRole.USER, content="Say hello.")])
        deltas = [r.delta async for r in await llm.astream_complete("Say hello.")]
        hi = [ChatMessage(role="user", content="Hi")]
        chat_deltas = [r.delta async for r in await llm.astream_chat(hi)]
    assert completion.text == chat.message.content  # same prompt through the chat template
    assert "".join(deltas) == completion.text and "".join(chat_deltas)
    loop.assert_loop_was_free()


def test_query_engine_sends_the_whole_document_in_one_call(
    llm: LongHeads, engine: Any, llm_calls: list, tmp_path: Path
) -> None:
    # Over twice LlamaIndex's default chunk of 1024 tokens: its usual pipeline would split it.
    path = tmp_path / "book.pdf"
    (fact,) = make_long_pdf(path, tokens=2400, n_facts=1, positions=[0.5])
    pdf = read_pdf(path)
    assert engine.count_tokens(pdf.text) > 2 * 1024

    query_engine = WholeDocumentQueryEngine.from_pdf(llm, path)
    response = query_engine.query(fact.question)

    assert len(llm_calls) == 1, f"{len(llm_calls)} LLM calls"
    (call,) = llm_calls
    sent = "\n".join(m.content for m in call.messages)
    assert pdf.text in sent and fact.question in sent
    assert sent.index(pdf.text) < sent.index(fact.question)  # document first: its encoding is reusable
    assert response.response
    assert response.metadata["usage"]["prompt_tokens"] > engine.count_tokens(pdf.text)
    # The pages the heads read most come back as source nodes, each named by its page.
    assert response.source_nodes and all("page_label" in n.node.metadata for n in response.source_nodes)


async def test_query_engine_async(llm: LongHeads, llm_calls: list) -> None:
    text = read_pdf(SAMPLE).text
    response = await WholeDocumentQueryEngine(llm, text).aquery("Who designed the fourth lighthouse?")
    assert response.response
    assert len(llm_calls) == 1 and text in llm_calls[0].messages[-1].content
