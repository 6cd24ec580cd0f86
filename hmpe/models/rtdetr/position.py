"""2D sin-cos position encodings for flattened feature maps, built h-major.

Token order: a feature map ``x [B, C, H, W]`` flattened with ``x.flatten(2)`` puts row ``i``, column
``j`` at index ``i * W + j`` (row-major, "h-major"). Both encodings here follow that order, so they
are right for rectangular maps. The official RT-DETR code builds its grid w-major (``index = j * H + i``),
which only coincides with the flattening for square maps.

Channel layout of :func:`sincos_2d` (D = dim, F = D // 4 frequencies ``w_f = T ** (-f / F)``)::

    [ sin(i * w_f) | cos(i * w_f) | sin(j * w_f) | cos(j * w_f) ]     (i = row / y, j = column / x)

i.e. ``[sin y, cos y, sin x, cos x]``. This is deliberately the layout the official w-major code ends
up with on a square map (its "w" half is then indexed by the row), so weights trained with the official
code see the same encoding on square inputs, and rectangular inputs are geometrically correct.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MODES", "PositionEncoding", "masked_position_encoding", "position_encoding", "sincos_2d",
           "sincos_2d_additive"]

MODES = ("rtdetr", "paper")


def _grid(h: int, w: int, device, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Row and column index of every token in h-major order, each [h*w]."""
    ii, jj = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return ii.reshape(-1), jj.reshape(-1)


def sincos_2d(
    h: int,
    w: int,
    dim: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Concatenated 2D sin-cos encoding ``[h*w, dim]``; token ``i*w + j`` encodes row i, column j.

    Computed in float32 and cast to ``dtype`` at the end (half precision cannot hold the angles).
    """
    if dim % 4 != 0:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    n_freq = dim // 4
    ii, jj = _grid(h, w, device)
    omega = 1.0 / temperature ** (torch.arange(n_freq, device=device, dtype=torch.float32) / n_freq)
    y = ii[:, None] * omega[None]  # [h*w, F]
    x = jj[:, None] * omega[None]
    pe = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)
    return pe if dtype is None else pe.to(dtype)


def sincos_2d_additive(
    h: int,
    w: int,
    dim: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The paper's eq. 7 variant ``[h*w, dim]``: row and column waves summed per channel.

    The paper gives ``PE(i, j, d) = sin(i / tau_d) + cos(j / tau_d)`` with
    ``tau_d = T ** (2d / D)``, d in 0..D/2-1, i.e. D/2 values per token. To fill D channels the second
    half holds the quadrature pair ``cos(i / tau_d) + sin(j / tau_d)``, so that both phases of every
    frequency are present (as in the concatenated form); with the first half alone, positions whose
    phases are mirrored (``sin`` is symmetric about pi/2, ``cos`` about 0) share channels.
    Layout: ``[sin(i/tau) + cos(j/tau) | cos(i/tau) + sin(j/tau)]``, token order h-major.
    """
    if dim % 2 != 0:
        raise ValueError(f"sincos_2d_additive needs an even dim, got {dim}")
    half = dim // 2
    ii, jj = _grid(h, w, device)
    inv_tau = 1.0 / temperature ** (2.0 * torch.arange(half, device=device, dtype=torch.float32) / dim)
    y = ii[:, None] * inv_tau[None]  # [h*w, D/2]
    x = jj[:, None] * inv_tau[None]
    pe = torch.cat([y.sin() + x.cos(), y.cos() + x.sin()], dim=1)
    return pe if dtype is None else pe.to(dtype)


def position_encoding(mode: str, h: int, w: int, dim: int, temperature: float = 10000.0,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """The encoding ``[h*w, dim]`` of one grid in form ``mode``: "rtdetr" (:func:`sincos_2d`) or "paper"
    (:func:`sincos_2d_additive`). The one entry point of the encoder's PE and of the figures' PE'."""
    if mode == "rtdetr":
        return sincos_2d(h, w, dim, temperature, device=device, dtype=dtype)
    if mode == "paper":
        return sincos_2d_additive(h, w, dim, temperature, device=device, dtype=dtype)
    raise ValueError(f"pe must be 'rtdetr' or 'paper', got {mode!r}")


# a constant per grid: figures and the explorer ask for the same grids again and again
_cached_position_encoding = functools.lru_cache(maxsize=8)(position_encoding)


def masked_position_encoding(pe: Tensor, mask: Tensor) -> Tensor:
    """Eq. 7: ``PE' = Mask * PE``.

    pe: [H*W, D] or [B, H*W, D] tokens h-major, or a map [B|1, D, H, W]; mask: [B,1,H,W].
    Returns [B, H*W, D] for token input, [B, D, H, W] for map input.
    Hot cells keep the encoding bit for bit; cold cells are exactly zero.
    """
    if pe.dim() == 4:
        return pe * mask
    m = mask.flatten(2).transpose(1, 2).to(pe.dtype)  # [B,HW,1]
    return (pe if pe.dim() == 3 else pe[None]) * m


@dataclass(frozen=True)
class PositionEncoding:
    """The settings of one position encoding: form ``mode`` ("rtdetr" | "paper"), channels ``dim`` and
    ``temperature``. The hybrid encoder owns one; the detector hands the same object to the heatmap
    embedding, so the PE' of the figures (:class:`hmpe.models.heatmap.HeatmapOutput`) is the encoder's."""

    mode: str = "rtdetr"
    dim: int = 256
    temperature: float = 10000.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"pe must be 'rtdetr' or 'paper', got {self.mode!r}")

    def __call__(self, h: int, w: int, device=None, dtype=None, cached: bool = False) -> Tensor:
        """``[h*w, dim]``; ``cached=True`` shares one tensor per grid (callers must not modify it in place)."""
        fn = _cached_position_encoding if cached else position_encoding
        return fn(self.mode, h, w, self.dim, self.temperature, device, dtype)
