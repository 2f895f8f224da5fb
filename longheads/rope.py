"""Rotary position helpers.

LongHeads needs queries and keys at *remapped* positions, so the model's rotary embedding is made the
identity while LongHeads is enabled (patch.Unrotated), keys are cached rotated only at their place inside
their chunk, and attention adds small positions only (a chunk's slot, the query's place), from tables the
model's own rotary module computed.
This keeps position error from growing with the context: angles are never computed for positions beyond
the attention length.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def rotation_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R [d, d] with x @ R == apply_rope(x, cos, sin) for cos/sin [d] of one position: one matmul instead of
    a handful of elementwise kernels, for many small query rows."""
    d = cos.shape[-1]
    h = d // 2
    rot = torch.diag(cos)
    idx = torch.arange(h, device=cos.device)
    rot[idx + h, idx] = -sin[:h]
    rot[idx, idx + h] = sin[h:]
    return rot


def model_cos_sin(rotary: torch.nn.Module, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos/sin [n, head_dim] exactly as the model computes them for `positions` in `dtype`."""
    probe = torch.empty(0, device=positions.device, dtype=dtype)
    cos, sin = rotary(probe, positions[None])
    return cos[0], sin[0]


class PositionTable:
    """float32 cos/sin for positions 0..length-1, made once per device."""

    def __init__(self, rotary: torch.nn.Module, length: int):
        self.rotary = rotary
        self.length = length
        self._tables: dict = {}

    def get(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:
            pos = torch.arange(self.length, device=device)
            self._tables[device] = model_cos_sin(self.rotary, pos, torch.float32)
        return self._tables[device]

    def rotation(self, position: int, device: torch.device) -> torch.Tensor:
        """`rotation_matrix` for one position, made once per device."""
        key = ("rotation", position, device)
        if key not in self._tables:
            cos, sin = self.get(device)
            self._tables[key] = rotation_matrix(cos[position], sin[position])
        return self._tables[key]

    def halves(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first half of cos/sin [length, head_dim/2], when the second half repeats it (every rotary
        type in transformers builds its tables as cat(freqs, freqs)); None otherwise."""
        key = ("half", device)
        if key not in self._tables:
            cos, sin = self.get(device)
            h = cos.shape[-1] // 2
            same = torch.equal(cos[:, :h], cos[:, h:]) and torch.equal(sin[:, :h], sin[:, h:])
            self._tables[key] = (cos[:, :h].contiguous(), sin[:, :h].contiguous()) if same else None
        return self._tables[key]

