"""LlamaIndex integration of longheads: an LLM whose context window is the engine's real maximum context,
and a query engine that sends a whole document to it in one call.

    from llama_index.llms.longheads import LongHeads, WholeDocumentQueryEngine

    llm = LongHeads(engine=longheads.load())
    answer = WholeDocumentQueryEngine.from_pdf(llm, "book.pdf").query("Who built the clock?")
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import Document, NodeWithScore, QueryBundle, TextNode

import longheads
from longheads.engine import load_shared
from longheads.pdf import PAGE_SEPARATOR, PDFDocument, PDFSource, read_pdf
from longheads.threads import iterate_in_thread

__all__ = ["LongHeads", "WholeDocumentQueryEngine"]


class LongHeads(CustomLLM):
    """A LongHeads-enabled local model as a LlamaIndex LLM.

    `metadata.context_window` is the engine's real maximum context (e.g. 131072 tokens), so LlamaIndex
    packs a whole long document into one prompt instead of splitting it. Messages go through the model's
    own chat template; `complete(prompt)` sends the prompt as one user message, `complete(prompt,
    formatted=True)` sends it as it is.
    """

    model_name: str | None = Field(
        default=None, description="Model id, path or GGUF; None: embedded default."
    )
    max_new_tokens: int = Field(default=256, description="Most tokens generated per call.")
    temperature: float = Field(default=0.0, description="0 decodes by beam search (num_beams), >0 samples.")
    top_p: float = Field(default=1.0)
    seed: int | None = Field(default=None)
    num_beams: int | None = Field(default=None, description="Beams at temperature 0; None: the engine's default (4).")
    stop: list[str] | None = Field(default=None, description="Strings that end generation (any length).")
    device: str | None = Field(default=None)
    dtype: str | None = Field(default=None)

    _engine: Any = PrivateAttr(default=None)
    _config: Any = PrivateAttr(default=None)

    def __init__(self, engine: Any = None, longheads_config: Any = None, **kwargs: Any) -> None:
        if engine is not None and kwargs.get("model_name") is None:
            kwargs["model_name"] = engine.model_name
        super().__init__(**kwargs)
        self._engine = engine
        self._config = longheads_config

    @classmethod
    def class_name(cls) -> str:
        return "LongHeads"

    @property
    def engine(self) -> Any:
        """The engine this LLM runs on, loading it now if it was given by name."""
        if self._engine is None:
            self._engine = load_shared(self.model_name, config=self._config, device=self.device, dtype=self.dtype)
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        engine = self.engine
        return LLMMetadata(
            context_window=engine.max_context,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=engine.model_name,
        )

    # --- translation ----------------------------------------------------------------------------------------

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "max_new_tokens": kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
            "stop": kwargs.get("stop", self.stop),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "num_beams": kwargs.get("num_beams", self.num_beams),
        }

    def _usage(self, generation: Any) -> dict[str, Any]:
        usage = dict(generation.usage)
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        # The keys LlamaIndex's TokenCountingHandler reads, plus the engine's timings and cache reuse.
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            **{k: v for k, v in usage.items() if k not in ("prompt_tokens", "completion_tokens")},
            "model_name": self.engine.model_name,
        }

    def _raw(self, generation: Any) -> dict[str, Any]:
        # The trace rides in `raw`, so that a query engine maps the answer it got to pages (LongHeadsQueryEngine).
        return {"usage": self._usage(generation), "trace": generation.trace}

    @staticmethod
    def _prompt(prompt: str, formatted: bool) -> str | list[dict[str, str]]:
        return prompt if formatted else [{"role": "user", "content": prompt}]

    def _run(self, prompt: str | list[dict[str, str]], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        generation = self.engine.answer(prompt, **self._options(kwargs))
        return generation.text, self._raw(generation)

    def _start(self, prompt: str | list[dict[str, str]], kwargs: dict[str, Any]) -> Any:
        return self.engine.stream(prompt, **self._options(kwargs))

    @staticmethod
    def _pieces(stream: Any) -> Iterator[str]:
        try:
            yield from stream
        finally:
            stream.close()  # a consumer that stops early stops the generation and frees the engine

    # --- completion -----------------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, raw = self._run(self._prompt(prompt, formatted), kwargs)
        return CompletionResponse(text=text, raw=raw, additional_kwargs=raw["usage"])

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completion_stream(self._prompt(prompt, formatted), kwargs)

    def _completion_stream(self, prompt: str | list[dict[str, str]], kwargs: dict[str, Any]) -> CompletionResponseGen:
        # Started on first iteration, as before: for the async calls, in the worker thread.
        stream = self._start(prompt, kwargs)
        text = ""
        for piece in self._pieces(stream):
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        raw = self._raw(stream.generation)
        yield CompletionResponse(text=text, delta="", raw=raw, additional_kwargs=raw["usage"])

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        # The engine blocks for seconds to minutes: it runs in a worker thread so the event loop stays free.
        text, raw = await asyncio.to_thread(self._run, self._prompt(prompt, formatted), kwargs)
        return CompletionResponse(text=text, raw=raw, additional_kwargs=raw["usage"])

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        sync = self._completion_stream(self._prompt(prompt, formatted), kwargs)
        return iterate_in_thread(lambda: sync)

    # --- chat ----------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text, raw = self._run(to_engine_messages(messages), kwargs)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
            raw=raw,
            additional_kwargs=raw["usage"],
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(to_engine_messages(messages), kwargs)

    def _chat_stream(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> ChatResponseGen:
        stream = self._start(messages, kwargs)
        text = ""
        for piece in self._pieces(stream):
            text += piece
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        raw = self._raw(stream.generation)
        yield ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
            delta="",
            raw=raw,
            additional_kwargs=raw["usage"],
        )

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text, raw = await asyncio.to_thread(self._run, to_engine_messages(messages), kwargs)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
            raw=raw,
            additional_kwargs=raw["usage"],
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        sync = self._chat_stream(to_engine_messages(messages), kwargs)
        return iterate_in_thread(lambda: sync)


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as the engine's {"role", "content"} dicts; consecutive turns of one role merged,
    since many chat templates reject two user turns in a row."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.role.value
        if role in ("tool", "function"):
            raise ValueError("LongHeads does not support tool calling (the history holds a tool message)")
        role = {"developer": "system", "chatbot": "assistant", "model": "assistant"}.get(role, role)
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                raise ValueError(f"LongHeads reads text only; the message holds a {type(block).__name__}")
        text = message.content or ""
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    if not out:
        raise ValueError("LongHeads needs at least one message")
    return out


class WholeDocumentQueryEngine(BaseQueryEngine):
    """Answers questions about a document by sending all of it, and the question, in one LLM call.

    No index, no retriever, no splitting: LlamaIndex's usual pipeline cuts documents into nodes at index
    time and repacks them at query time, which is exactly what a LongHeads model makes unnecessary. The
    document comes before the question (`longheads.document_messages`), so every question about the same
    document reuses the engine's cached encoding of it.
    """

    def __init__(
        self,
        llm: LongHeads,
        documents: Sequence[Document] | str,
        *,
        pdf: PDFDocument | None = None,
        baseline: Any = None,
        system_prompt: str | None = None,
        max_new_tokens: int | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(callback_manager=callback_manager)
        self._llm = llm
        self._text = (
            documents if isinstance(documents, str) else PAGE_SEPARATOR.join(d.text for d in documents)
        )
        self._pdf = pdf
        # The trace of a neutral question about the same document ("What is this document about?"): source
        # pages are then those this question made the heads read more than usual (PDFDocument.pages_for_trace).
        self.baseline = baseline
        self._system = system_prompt
        self._max_new_tokens = max_new_tokens

    @classmethod
    def from_pdf(
        cls, llm: LongHeads, source: PDFSource, *, password: str | None = None, **kwargs: Any
    ) -> WholeDocumentQueryEngine:
        """Read a PDF with `longheads.pdf` and answer from its whole text; answers list the pages the model
        read most as source nodes. Raises a PDFError for unreadable files and ContextTooLongError if the
        document does not fit the engine's maximum context."""
        pdf = read_pdf(source, password=password)
        pdf.check_fits(llm.engine.count_tokens(pdf.text), llm.engine.max_context, reserve=llm.max_new_tokens)
        return cls(llm, pdf.text, pdf=pdf, **kwargs)

    @property
    def text(self) -> str:
        return self._text

    def _messages(self, question: str) -> list[ChatMessage]:
        layout = (
            longheads.document_messages(self._text, question, self._system)
            if self._system is not None
            else longheads.document_messages(self._text, question)
        )
        return [ChatMessage(role=m["role"], content=m["content"]) for m in layout]

    def _options(self) -> dict[str, Any]:
        return {} if self._max_new_tokens is None else {"max_new_tokens": self._max_new_tokens}

    def _response(self, chat: ChatResponse) -> Response:
        usage = dict(chat.additional_kwargs)
        nodes: list[NodeWithScore] = []
        trace = (chat.raw or {}).get("trace")
        if self._pdf is not None and trace is not None:
            for hit in self._pdf.pages_for_trace(trace, k=3, baseline=self.baseline):
                node = TextNode(
                    text=hit.page.text,
                    metadata={"page_label": hit.page.label, "page_number": hit.page.number},
                )
                nodes.append(NodeWithScore(node=node, score=float(hit.count)))
        # The trace too, so that a caller can keep a neutral question's as the baseline of later ones.
        return Response(response=chat.message.content or "", source_nodes=nodes,
                        metadata={"usage": usage, "trace": trace})

    def _query(self, query_bundle: QueryBundle) -> Response:
        return self._response(self._llm.chat(self._messages(query_bundle.query_str), **self._options()))

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._response(
            await self._llm.achat(self._messages(query_bundle.query_str), **self._options())
        )

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}
