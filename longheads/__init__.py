"""LongHeads for Hugging Face transformers: training-free context extension for RoPE decoder models."""

from .cache import LongHeadsCache, cache_argument
from .config import LongHeadsConfig
from .errors import (
    ConfigError,
    ContextTooLongError,
    LongHeadsError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from .patch import disable, enable, is_enabled

__all__ = [
    "ConfigError",
    "ContextTooLongError",
    "LongHeadsCache",
    "LongHeadsConfig",
    "LongHeadsError",
    "ModelLoadError",
    "OutOfMemoryError",
    "UnsupportedModelError",
    "cache_argument",
    "disable",
    "enable",
    "is_enabled",
]

from .engine import AnswerStream, Generation, LongHeadsModel, load, load_shared  # noqa: E402
from .prompts import NEUTRAL_QUESTION, document_messages  # noqa: E402
from .trace import SelectionTrace  # noqa: E402

__all__ += ["NEUTRAL_QUESTION", "AnswerStream", "Generation", "LongHeadsModel", "SelectionTrace", "document_messages",
            "load", "load_shared"]
