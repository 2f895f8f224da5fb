"""`enable(model, config)`: switch an already loaded transformers model to LongHeads attention.

No model file is forked: the attention function is registered in transformers' attention interface and
the model is told to use it, so every RoPE decoder that dispatches through that interface works.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel

from .attention import ModelState, longheads_attention
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
    The model's own rotary function still multiplies by 1 and adds 0 (about 1.5% of a long prefill):
    transformers offers no supported way to skip it, and rewriting its modules' globals broke on release."""

    def __init__(self, rotary: torch.nn.Module):
        super().__init__()
        self.rotary = rotary
        self.dim: int | None = None

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dim is None:
            self.dim = self.rotary(x, position_ids[:, :1])[0].shape[-1]
        ones = torch.ones(*position_ids.shape, self.dim, dtype=x.dtype, device=x.device)
        return ones, torch.zeros_like(ones)


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
    """Make the model's forward use LongHeads. Returns the same model. Pass a `LongHeadsCache(model)` as the
    cache (`cache_argument`) to `forward` or to transformers' own `generate`: with any other cache, or none,
    every call rebuilds the chunk state from the whole key/value.

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
    # Under tensor parallelism (from_pretrained(tp_plan=...)) each rank's attention holds its share of the heads.
    ranks = getattr(model, "tp_size", None) or 1
    table = PositionTable(rotary, config.attention_length + config.chunk_size + 1)
    state = ModelState(config=config, rotary=rotary, table=table, num_heads=heads // ranks,
                       num_kv_heads=kv_heads // ranks, ranks=ranks)
    for module in attention_modules:
        module.longheads_state = state
    parent, _, attr = rotary_name.rpartition(".")
    setattr(model.get_submodule(parent), attr, Unrotated(rotary))
    model.longheads_rotary = rotary_name
    model.longheads = state
    if model.config._attn_implementation != ATTN_NAME:
        model.longheads_previous_attn = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
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
    del model.longheads
    return model


def is_enabled(model: torch.nn.Module) -> bool:
    return getattr(model, "longheads", None) is not None
