"""Errors the engine raises on bad input. Each message says what was wrong and what is allowed."""

from __future__ import annotations


class LongHeadsError(Exception):
    """Base class of every error longheads raises on purpose."""


class ConfigError(LongHeadsError, ValueError):
    """A configuration value is out of range."""


class UnsupportedModelError(LongHeadsError, ValueError):
    """The model cannot run LongHeads (no rotary position embedding, or an attention layout we do not know)."""


class ContextTooLongError(LongHeadsError, ValueError):
    """The prompt (plus the tokens to generate) is longer than the configured maximum context."""

    def __init__(self, n_tokens: int, max_context: int, what: str = "prompt"):
        self.n_tokens = n_tokens
        self.max_context = max_context
        super().__init__(
            f"The {what} is {n_tokens:,} tokens long, but the maximum context is {max_context:,} tokens. "
            f"Shorten it or raise LongHeadsConfig.max_context."
        )


class ModelLoadError(LongHeadsError, RuntimeError):
    """The model or tokenizer could not be loaded."""


class OutOfMemoryError(LongHeadsError, RuntimeError):
    """The device (or, with offload, the host) ran out of memory while encoding a prompt or generating. The engine
    stays usable: its document cache is dropped and the next call encodes its prompt afresh."""
