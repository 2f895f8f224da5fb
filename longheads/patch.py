"""`enable(model, config)`: switch an already loaded transformers model to LongHeads attention.

No model file is forked: the attention function is registered in transformers' attention interface and
the model is told to use it, so every RoPE decoder that dispatches through that interface works.
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface, PreTrainedModel

from .attention import ModelState, longheads_attention
from .cache import LongHeadsCache
from .config import LongHeadsConfig
from .errors import UnsupportedModelError
from .rope import PositionTable

ATTN_NAME = "longheads"
DEFAULT_ATTENTION_LENGTH = 4096

AttentionInterface.register(ATTN_NAME, longheads_attention)


class Unrotated(torch.nn.Module):
    """Stands in for the model's rotary embedding while LongHeads is enabled: cos 1 and sin 0, so the
    attention modules pass queries and keys on without rotary positions. LongHeads rotates them itself, at
    remapped positions; undoing the model's rotation instead cost about ten elementwise passes per layer.

    With `marked`, cos and sin are boolean: the models' `apply_rotary_pos_emb`, wrapped by `enable`, then
    hands queries and keys back untouched instead of multiplying them by 1 and adding 0 (a pass over each
    that also made them contiguous copies: ~45 ms of a 100k-token prefill of Llama-3-8B on an H100). Any
    rotary code that was not wrapped still computes the identity: booleans promote to the queries' dtype."""

    def __init__(self, rotary: torch.nn.Module, marked: bool = False):
        super().__init__()
        self.rotary = rotary
        self.marked = marked
        self.dim: int | None = None

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dim is None:
            self.dim = self.rotary(x, position_ids[:, :1])[0].shape[-1]
        dtype = torch.bool if self.marked else x.dtype
        ones = torch.ones(*position_ids.shape, self.dim, dtype=dtype, device=x.device)
        return ones, torch.zeros_like(ones)


def _skips_unrotated(rotate):
    @functools.wraps(rotate)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        # A dtype is fixed when torch.compile traces: compiled layers drop the branch, not just the arithmetic.
        if cos.dtype == torch.bool:
            return q, k
        return rotate(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.longheads_wraps = rotate
    return apply_rotary_pos_emb


def _wrap_rotary_functions(attention_modules: list[torch.nn.Module]) -> bool:
    """Make the `apply_rotary_pos_emb` each attention module's forward calls pass Unrotated's boolean marker
    through (every other call is unchanged, so `disable` leaves the wrapper in place). False if some module's
    forward calls no such function."""
    for module in attention_modules:
        names = type(module).forward.__globals__
        rotate = names.get("apply_rotary_pos_emb")
        if rotate is None or "apply_rotary_pos_emb" not in type(module).forward.__code__.co_names:
            return False
        if not hasattr(rotate, "longheads_wraps"):
            names["apply_rotary_pos_emb"] = _skips_unrotated(rotate)
    return True


def pretrained_length(text_config) -> int:
    """The longest relative distance the model was trained on."""
    length = getattr(text_config, "max_position_embeddings", None)
    if not length:
        raise UnsupportedModelError("The model config has no max_position_embeddings; its trained length is unknown.")
    window = getattr(text_config, "sliding_window", None)
    if window and getattr(text_config, "use_sliding_window", True):
        length = min(length, window)
    return int(length)


def enable(model: PreTrainedModel, config: LongHeadsConfig | None = None) -> PreTrainedModel:
    """Make `model.forward` and `model.generate` use LongHeads. Returns the same model.

    Registers the attention function, and swaps the model's rotary embedding for `Unrotated` (restored
    by `disable`)."""
    config = config or LongHeadsConfig()
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(f"Expected a transformers PreTrainedModel, got {type(model).__name__}.")
    text_config = model.config.get_text_config(decoder=True)
    name = getattr(model.config, "model_type", type(model).__name__)
    found = {n: m for n, m in model.named_modules() if n.endswith("rotary_emb")}
    if len(found) > 1:
        raise UnsupportedModelError(
            f"Model type '{name}' has several rotary embeddings ({', '.join(found)}); LongHeads supports models "
            "whose layers share one."
        )
    rotary_name, rotary = next(iter(found.items()), (None, None))
    if isinstance(rotary, Unrotated):  # enabled before
        rotary = rotary.rotary
    if rotary is None:
        raise UnsupportedModelError(
            f"Model type '{name}' has no rotary position embedding (RoPE); LongHeads remaps rotary positions "
            "and cannot extend models with learned or absolute positions such as GPT-2."
        )
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"Model type '{name}' does not dispatch attention through transformers' attention interface."
        )
    attention_modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj")]
    if not attention_modules:
        raise UnsupportedModelError(f"Found no attention layers in model type '{name}'.")

    trained = pretrained_length(text_config)
    if config.attention_length is None:
        length = min(DEFAULT_ATTENTION_LENGTH, trained)
        config.attention_length = length - length % config.chunk_size
    config.check_attention_length(trained)

    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    table = PositionTable(rotary, config.attention_length + config.chunk_size + 1)
    state = ModelState(config=config, rotary=rotary, table=table, num_heads=heads, num_kv_heads=kv_heads)
    for module in attention_modules:
        module.longheads_state = state
    parent, _, attr = rotary_name.rpartition(".")
    setattr(model.get_submodule(parent), attr, Unrotated(rotary, marked=_wrap_rotary_functions(attention_modules)))
    model.longheads_rotary = rotary_name
    model.longheads = state
    if model.config._attn_implementation != ATTN_NAME:
        model.longheads_previous_attn = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    if "generate" not in model.__dict__:
        model.generate = _generate_with_longheads_cache(model)
    if config.compile_layers:
        _compile_layers(model, attention_modules)
    return model


def _compile_layers(model: PreTrainedModel, attention_modules: list[torch.nn.Module]) -> None:
    """torch.compile the decoder layers that hold the attention modules. The attention function and the
    cache update are excluded from the graphs (graph breaks), so each layer compiles into the code before,
    between and after them."""
    names = {m: n for n, m in model.named_modules()}
    layers = {model.get_submodule(names[m].rpartition(".")[0]) for m in attention_modules}
    # Each layer passes its own index to the cache. Without this (process-wide) setting dynamo would
    # specialize on it: one compilation per layer and shape, beyond its limit of 8, and each call would
    # check the guards of every layer's code before finding its own.
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    for layer in layers:
        if not getattr(layer, "longheads_compiled", False):  # enabled again: keep the compiled code
            layer.compile()
            layer.longheads_compiled = True


def disable(model: PreTrainedModel) -> PreTrainedModel:
    """Restore the attention implementation the model had before `enable`."""
    if getattr(model, "longheads", None) is None:
        return model
    model.set_attn_implementation(getattr(model, "longheads_previous_attn", None) or "sdpa")
    parent, _, attr = model.longheads_rotary.rpartition(".")
    setattr(model.get_submodule(parent), attr, model.longheads.rotary)
    model.__dict__.pop("generate", None)
    del model.longheads
    return model


def _generate_with_longheads_cache(model: PreTrainedModel):
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        if kwargs.get("past_key_values") is None and getattr(model, "longheads", None) is not None:
            kwargs["past_key_values"] = LongHeadsCache(model)
        return original(*args, **kwargs)

    return generate


def is_enabled(model: torch.nn.Module) -> bool:
    return getattr(model, "longheads", None) is not None
