"""ChatLongHeads: a LangChain chat model over a longheads engine. It translates; the engine does the work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from longheads.engine import load_shared
from longheads.threads import iterate_in_thread


class ChatLongHeads(BaseChatModel):
    """Chat model that reads a whole long document in one prompt, through a LongHeads-enabled local model.

    Build it from a loaded engine (cheap, and the engine's document cache is shared):

        lh = longheads.load()
        chat = ChatLongHeads(engine=lh)

    or from a model name (loaded on first use, once per process): `ChatLongHeads(model="...")`. With neither,
    the embedded SmolLM2-135M-Instruct is used. The model's own chat template formats the messages.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    engine: Any = Field(default=None, exclude=True)
    """A loaded `longheads` engine (`longheads.load()`); loaded from `model_name` on first use when absent."""
    model_name: str | None = Field(default=None, alias="model")
    """Model id, local path or GGUF file; None is the embedded default model."""
    temperature: float = 0.0
    max_tokens: int = Field(default=256, alias="max_new_tokens")
    top_p: float = 1.0
    seed: int | None = None
    num_beams: int | None = None
    """Beams of the search at temperature 0; None is the engine's default (4)."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False
    device: str | None = None
    dtype: str | None = None
    longheads_config: Any = Field(default=None, exclude=True)
    """A `longheads.LongHeadsConfig` used when the engine is loaded from `model_name`."""

    _loaded: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _name_from_engine(self) -> ChatLongHeads:
        if self.engine is not None and self.model_name is None:
            self.model_name = self.engine.model_name
        return self

    @property
    def _llm_type(self) -> str:
        return "longheads"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "num_beams": self.num_beams,
        }

    def get_engine(self) -> Any:
        """The engine this model runs on, loading it now if it was given by name."""
        if self.engine is not None:
            return self.engine
        if self._loaded is None:
            self._loaded = load_shared(
                self.model_name, config=self.longheads_config, device=self.device, dtype=self.dtype
            )
        return self._loaded

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="longheads",
            ls_model_name=kwargs.get("model") or self.model_name or "SmolLM2-135M-Instruct",
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # --- translation ----------------------------------------------------------------------------------------

    def _options(self, engine: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        wanted = kwargs.get("model")
        if wanted and wanted not in (self.model_name, engine.model_name):
            raise ValueError(
                f"this ChatLongHeads runs {engine.model_name!r}; build another ChatLongHeads for {wanted!r}"
            )
        return {
            "max_new_tokens": kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens)),
            "stop": stop if stop is not None else self.stop,
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "num_beams": kwargs.get("num_beams", self.num_beams),
        }

    def _metadata(self, engine: Any, generation: Any, max_new_tokens: int) -> tuple[UsageMetadata, dict[str, Any]]:
        usage = dict(generation.usage)
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        usage_metadata = UsageMetadata(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=prompt + completion,
            # Tokens whose encoding came from the engine's document cache: the reused document.
            input_token_details={"cache_read": int(usage.get("cached_tokens", 0))},
        )
        response_metadata = {
            "model_name": engine.model_name,
            "model_provider": "longheads",
            "finish_reason": "length" if completion >= max_new_tokens else "stop",
            "prefill_seconds": usage.get("prefill_seconds"),
            "decode_seconds": usage.get("decode_seconds"),
        }
        return usage_metadata, response_metadata

    # --- sync ---------------------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            chunks = list(self._stream(messages, stop, run_manager, **kwargs))
            message = chunks[0].message
            for chunk in chunks[1:]:
                message = message + chunk.message
            return ChatResult(generations=[ChatGeneration(message=_to_message(message))])
        engine = self.get_engine()
        options = self._options(engine, stop, kwargs)
        generation = engine.answer(to_engine_messages(messages), **options)
        usage, meta = self._metadata(engine, generation, options["max_new_tokens"])
        message = AIMessage(content=generation.text, usage_metadata=usage, response_metadata=meta)
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output={"model_name": meta["model_name"]}
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        engine = self.get_engine()
        options = self._options(engine, stop, kwargs)
        pieces = engine.stream(to_engine_messages(messages), **options)
        try:
            for piece in pieces:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            pieces.close()  # a consumer that stops early stops the generation, and frees the engine
        yield self._last_chunk(engine, pieces.generation, options["max_new_tokens"])

    def _last_chunk(self, engine: Any, generation: Any, max_new_tokens: int) -> ChatGenerationChunk:
        # Usage and the model name go on one chunk only, so that adding chunks up counts them once.
        usage, meta = self._metadata(engine, generation, max_new_tokens)
        message = AIMessageChunk(
            content="", usage_metadata=usage, response_metadata=meta, chunk_position="last"
        )
        return ChatGenerationChunk(message=message)

    # --- async: the engine runs in a worker thread so the event loop stays free ---------------------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            message = None
            async for chunk in self._astream(messages, stop, run_manager, **kwargs):
                message = chunk.message if message is None else message + chunk.message
            return ChatResult(generations=[ChatGeneration(message=_to_message(message))])
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Loading a model by name takes seconds: do that off the loop too.
        engine = await asyncio.to_thread(self.get_engine)
        options = self._options(engine, stop, kwargs)
        streams = []  # the one stream, made in the worker thread

        def start() -> Any:
            streams.append(engine.stream(to_engine_messages(messages), **options))
            return streams[0]

        async for piece in iterate_in_thread(start):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(engine, streams[0].generation, options["max_new_tokens"])


def to_engine_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the engine's {"role", "content"} dicts, for the model's chat template.

    Consecutive messages of one role are merged: many chat templates reject two user turns in a row.
    """
    out: list[dict[str, str]] = []
    for message in messages:
        role = _role(message)
        text = _text(message)
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    if not out:
        raise ValueError("ChatLongHeads needs at least one message")
    return out


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        if message.tool_calls:
            raise ValueError("ChatLongHeads does not support tool calling (the history holds tool calls)")
        return "assistant"
    if isinstance(message, ToolMessage):
        raise ValueError("ChatLongHeads does not support tool calling (the history holds a ToolMessage)")
    if isinstance(message, ChatMessage):
        return message.role
    raise ValueError(f"ChatLongHeads cannot send a {type(message).__name__}")


def _text(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"ChatLongHeads reads text only; the message holds a {kind!r} block")
    return "".join(parts)


def _to_message(chunk: Any) -> AIMessage:
    return AIMessage(
        content=chunk.content,
        usage_metadata=chunk.usage_metadata,
        response_metadata=chunk.response_metadata,
        id=chunk.id,
    )
