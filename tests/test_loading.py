"""Loading: the embedded GGUF model's converted checkpoint (kept on disk, read back as the same model, never trusted
blindly), and models placed over devices by device_map."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import longheads
from longheads.loading import (
    cache_root,
    converted_gguf_dir,
    default_gguf_path,
    gguf_source,
    load_model_and_tokenizer,
    save_converted,
)


def _config(lm: Any) -> dict:
    values = lm.config.to_dict()
    for key in ("_name_or_path", "quantization_config"):
        values.pop(key, None)
    return values


def test_converted_gguf_reloads_as_the_same_model_and_a_damaged_entry_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LONGHEADS_CACHE_DIR", str(tmp_path))
    made = gguf_source(default_gguf_path(), torch.float32)
    entry = converted_gguf_dir(made, tmp_path)
    entry.mkdir()
    (entry / "config.json").write_text("{ half a file")  # as if written by a process killed midway
    # Made from the same file before it changed: dropped once the new entry is written. Another dtype's stays.
    stale, bf16 = tmp_path / "SmolLM2-old", tmp_path / "SmolLM2-bf16"
    for folder, source in ((stale, dict(made, mtime_ns=1)), (bf16, dict(made, dtype="torch.bfloat16"))):
        folder.mkdir()
        (folder / "source.json").write_text(json.dumps(source))

    with pytest.warns(UserWarning, match="damaged converted model"):
        converted, tok1, name = load_model_and_tokenizer(None, "cpu", torch.float32)
    assert name == "SmolLM2-135M-Instruct"
    assert (entry / "model.safetensors").is_file()
    assert json.loads((entry / "source.json").read_text()) == made
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.name, bf16.name])  # no temporary folder

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached, tok2, _ = load_model_and_tokenizer(None, "cpu", torch.float32)
    first, second = converted.state_dict(), cached.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    assert _config(converted) == _config(cached)
    assert converted.generation_config.to_dict() == cached.generation_config.to_dict()

    text = "The ferry to the island of Kest leaves on Thursdays.<|im_end|> café ☃ 12345"
    assert tok1(text).input_ids == tok2(text).input_ids
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    assert tok1.apply_chat_template(chat, tokenize=False) == tok2.apply_chat_template(chat, tokenize=False)
    assert (tok1.eos_token, tok1.bos_token, tok1.pad_token) == (tok2.eos_token, tok2.bos_token, tok2.pad_token)
    ids = torch.tensor([tok1(text).input_ids])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, cached(ids).logits)


def test_a_cache_that_cannot_be_written_warns_and_loses_nothing(engine: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    target = blocked / "entry"
    with pytest.warns(UserWarning, match="Could not keep the converted GGUF model"):
        assert not save_converted(engine.model, engine.tokenizer, target, {"gguf": "model.gguf"})
    assert not target.exists() and blocked.read_text() == "not a folder"


@pytest.mark.parametrize(("value", "expected"), [("off", None), ("", None), ("~/lh", Path.home() / "lh")])
def test_cache_folder_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: Path | None) -> None:
    monkeypatch.setenv("LONGHEADS_CACHE_DIR", value)
    assert cache_root() == expected


def test_cache_folder_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LONGHEADS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "longheads"


def test_a_model_placed_by_device_map_answers_as_the_model_loaded_whole(tmp_path, engine):
    """device_map places the layers through transformers and accelerate: here the second decoder layer is offloaded to
    disk, and accelerate's hooks bring its weights in at every call. Beyond the attention length it must answer, and
    select, as the model loaded whole."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(engine.tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(tmp_path / "model")
    engine.tokenizer.save_pretrained(tmp_path / "model")

    def load(**placement) -> longheads.LongHeadsModel:
        config = longheads.LongHeadsConfig(chunk_size=16, attention_length=256, tail_tokens=8)
        return longheads.load(str(tmp_path / "model"), config=config, device="cpu", dtype="float32", **placement)

    whole = load()
    placed = load(device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"},
                  offload_folder=str(tmp_path / "offload"))
    assert placed.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # on disk until a call
    prompt = " ".join(f"line {i}: the {i % 7}th of {i % 5} keys" for i in range(60))  # beyond 256 tokens
    want, got = (lh.answer(prompt, max_new_tokens=6, num_beams=3) for lh in (whole, placed))
    assert got.text == want.text and torch.equal(got.trace.selections, want.trace.selections)


def test_device_map_needs_a_model_directory():
    with pytest.raises(longheads.ModelLoadError, match="device_map needs a model directory"):
        longheads.load(device_map="auto")  # the embedded GGUF
