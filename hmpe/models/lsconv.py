"""Linear-Snake convolution (LSConv) and dynamic snake convolution (DSConv), paper sec. 3.3.

Pure PyTorch (no custom op): runs on CPU and exports to ONNX (opset 17, the default gather sampler).

Geometry (eqs. 10-11). For an output location ``(x0, y0)`` a strip of ``K`` taps (``K = 2h + 1``,
``K = 9`` by default) is laid along the morph's own axis; tap ``k`` sits at signed distance
``c = k - h`` in ``-h..h`` from the centre.

* x-morph (``morph=0``, eq. 10): ``X_k = x0 + c`` (fixed integer steps, the paper's ``x_i +- c``) and
  ``Y_k = y0 + D_k``, where the deformation ``D_k`` is the offsets accumulated outward from the centre:
  ``D_0 = 0`` at the centre tap and ``D_c = sum_{j=1..|c|} Delta_{sign(c) j}`` (the paper's
  ``sum Delta y_{i +- c}``), so the strip bends like a snake: two neighbouring taps differ by at most
  one predicted step on the deformed axis (continuity constraint).
* y-morph (``morph=1``, eq. 11): the same with the axes swapped (``Y_k = y0 + c``, ``X_k = x0 + D_k``).

Interpretations fixed here (see ``docs/method.md``, LSConv section):

* Offset predictor: ``3x3 conv (in -> K-1) -> BatchNorm -> tanh``. Only the morph's own deformed axis
  is predicted (the public DSCNet code predicts ``2K`` channels and throws half of them away, and its
  centre channel is overwritten by 0); here one channel per *step* between neighbouring taps, ``h`` steps
  on each side of the centre, so every predicted value is used and receives a gradient. Channel
  ``j < h`` is the step from tap ``c = -j`` to ``c = -(j+1)``; channel ``h + j`` the step from ``c = j``
  to ``c = j + 1``. BatchNorm (not GroupNorm): it folds into the conv at deployment and does not force
  every image's offsets to zero mean / unit variance as per-sample GroupNorm over 8 channels would.
* Accumulation covers the full half-kernel: the end taps ``c = +-h`` get a cumulative offset and a
  gradient too (the public code's loop stops one step short and leaves them with a raw offset).
* Scale and limit: ``D_c = clamp(extend_scope * sum ..., -h, +h)``. With ``tanh`` in (-1, 1) and
  ``extend_scope <= 1`` the clamp never binds (``|D_c| < |c| <= h``); it bounds larger scopes.
  The clamp is 1-Lipschitz, so neighbouring taps still differ by at most ``extend_scope`` cells.
* "Within the K-cell strip" means: every sample of output ``(x0, y0)`` lies in the ``K x K`` window
  ``[x0 - h, x0 + h] x [y0 - h, y0 + h]`` centred on it (the x-morph's strip is ``K`` cells long on
  x and bends at most ``h`` cells up or down). In addition the deformed coordinate is clamped to the
  image (``[0, H-1]`` for the x-morph's y, ``[0, W-1]`` for the y-morph's x); on the fixed axis the
  taps past the border read zeros, exactly like the zero padding of the straight strip convolution
  (so that with zero offsets the snake path *is* the linear path).
* Sampling is bilinear. On the fixed axis the coordinate is an integer, so the bilinear weights there
  are (1, 0) and sampling reduces to a 2-point linear interpolation on the deformed axis: the default
  ``sampler="gather"`` does exactly that on channels-last rows of the zero-padded input (eager: one
  fused ``F.embedding_bag`` of the two rows; ONNX export: two row ``Gather``s), the alternative
  ``sampler="grid_sample"`` calls ``F.grid_sample`` (4-point bilinear, zero padding). Same values and
  gradients; the gather form is faster on CPU and keeps one K-fold tensor for backward.
* Aggregation: a ``(1, K)`` conv with stride ``(1, K)`` over the K-fold deformed map ``[B, C, H, W*K]``
  (x-morph; ``(K, 1)`` / ``[B, C, H*K, W]`` for the y-morph). The gather sampler computes the identical
  sum as one matmul ``[B, HW, K*C] @ [K*C, O]`` on the same ``(1, K)`` / ``(K, 1)`` weight, which avoids
  the im2col of the strided conv; ``SnakeConv.conv`` keeps the strip's weight shape either way, so
  weights copy 1:1 to and from ``LinearStripConv``.
* Only the morph's own aggregation conv is built (the public code builds both and leaves one unused,
  which DDP rejects); coordinate grids come from the input's device and dtype (at least float32).

Blocks (all ``[B, C, H, W] -> [B, C, H, W]``, residual, drop-in for a mid -> mid conv of an HG block):

* ``DSConv``:  ``act(x + BN(proj1x1(act(BN(Snake_x(x) + Snake_y(x))))))``  (paper's "DSconv" row)
* ``LSConv``:  snake path as above and linear path ``act(BN(Strip_1xK(x) + Strip_Kx1(x)))``, fused per
  output channel with ``softmax`` weights over the two paths, then the same ``1x1 -> BN -> + x -> act``
  (paper's "Linear-Snake" row). The two morphs of a path are summed (a cross-shaped receptive field),
  not concatenated: same expressiveness as concat + 1x1 without the extra ``2C -> C`` projection.
* ``StripBlock``: the linear path alone in the same residual form (ablation: is the snake worth it?).

``build_strip_block(kind, channels, kernel_size)`` is the hook ``hmpe.models.rtdetr.backbone.HGNetv2`` calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmpe.models.rtdetr.deploy import bn_affine, conv_with_affine
from hmpe.models.rtdetr.sampling import SamplerSwitch

__all__ = [
    "DSConv",
    "LSConv",
    "LinearStripConv",
    "SnakeConv",
    "SnakePath",
    "StripBlock",
    "build_strip_block",
]

_SAMPLERS = ("gather", "grid_sample")


def _check_kernel(kernel_size: int) -> int:
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    return kernel_size // 2


def _check_morph(morph: int) -> int:
    if morph not in (0, 1):
        raise ValueError(f"morph must be 0 (x-axis, eq. 10) or 1 (y-axis, eq. 11), got {morph}")
    return morph


def _geometry_dtype(x: Tensor) -> torch.dtype:
    """Coordinates are built in the input's dtype, but never below float32: in bfloat16 a coordinate
    of 40 cells has a resolution of 0.25 cell, which would quantise the offsets (mixed precision)."""
    return torch.promote_types(x.dtype, torch.float32)


def _strip_conv(in_ch: int, out_ch: int, kernel_size: int, morph: int) -> nn.Conv2d:
    """The straight strip: (1, K) for the x-morph, (K, 1) for the y-morph, zero 'same' padding."""
    h = kernel_size // 2
    k, p = ((1, kernel_size), (0, h)) if morph == 0 else ((kernel_size, 1), (h, 0))
    return nn.Conv2d(in_ch, out_ch, k, padding=p, bias=False)


def _gather_lerp(table: Tensor, idx: Tensor, frac: Tensor, step: int | Tensor) -> Tensor:
    """``(1 - frac) * table[idx] + frac * table[idx + step]``: 2-point interpolation on the deformed axis.

    ``table [N, C]`` (channels-last rows of the zero-padded input), ``idx [M]`` int64, ``frac [M, 1]``,
    ``step`` an int or ``[M]`` int64 (one per row) -> ``[M, C]``. Eager: one ``F.embedding_bag`` (a bag of
    the 2 rows, weighted ``(1 - frac, frac)``), which writes a single K-fold output and keeps only the
    table, indices and weights for backward (not the two gathered K-fold tensors that two gathers +
    arithmetic would keep). Export/tracing: two row gathers (ONNX ``Gather``) and the arithmetic, which
    every runtime supports (``embedding_bag`` exports to an ONNX Loop). ``frac = 0`` gives
    ``table[idx]`` exactly in both forms.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or table.device.type not in ("cpu", "cuda"):
        v0 = F.embedding(idx, table)
        v1 = F.embedding(idx + step, table)
        return v0 + (v1 - v0) * frac
    pairs = torch.stack((idx, idx + step), dim=1)  # [M, 2]
    weights = torch.cat((1.0 - frac, frac), dim=1).to(table.dtype)  # [M, 2]
    return F.embedding_bag(pairs, table, mode="sum", per_sample_weights=weights)


def padded_table(x: Tensor, p: int) -> Tensor:
    """``[B, C, H, W]`` -> zero-padded (``p`` each side) channels-last rows ``[B*(H+2p)*(W+2p), C]``, so
    that each gather copies C contiguous values."""
    B, C, H, W = x.shape
    return F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1).reshape(B * (H + 2 * p) * (W + 2 * p), C)


class SnakeConv(nn.Module, SamplerSwitch):
    """Dynamic snake convolution along one axis (eq. 10 for ``morph=0``, eq. 11 for ``morph=1``).

    ``[B, in_ch, H, W] -> [B, out_ch, H, W]``; no bias, no norm (the enclosing block adds them).

    Args:
        in_ch, out_ch: channels.
        kernel_size: K, the number of taps of the strip (odd, >= 3).
        morph: 0 = x-morph (strip along x, offsets bend it in y), 1 = y-morph (swapped).
        extend_scope: scale of the accumulated offsets (the public code's ``extend_scope``).
        sampler: "gather" (default; ONNX-friendly, 2-point interpolation on the deformed axis) or
            "grid_sample" (``F.grid_sample``, bilinear, zero padding). Both give the same values.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 9,
        morph: int = 0,
        extend_scope: float = 1.0,
        sampler: str = "gather",
    ) -> None:
        super().__init__()
        self.half = _check_kernel(kernel_size)
        self.kernel_size = kernel_size
        self.morph = _check_morph(morph)
        self.extend_scope = float(extend_scope)
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
        self.sampler = sampler
        # Offset predictor: one value per step between neighbouring taps (K - 1), see module docstring.
        self.offset_conv = nn.Conv2d(in_ch, kernel_size - 1, 3, padding=1)
        self.offset_norm = nn.BatchNorm2d(kernel_size - 1)
        # Aggregation weight with the straight strip's shape; only this morph's conv exists (DDP).
        self.conv = _strip_conv(in_ch, out_ch, kernel_size, morph)
        # Accumulation matrix A [K, K-1]: D = A @ tanh(offsets) sums the steps between the centre and
        # each tap (eqs. 10-11, "sum Delta"), end taps included. A 0/1 constant (a buffer so it moves
        # with .to()); applied as a 1x1 conv, which exports to ONNX as a plain Conv.
        h = self.half
        acc = torch.zeros(kernel_size, kernel_size - 1)
        for j in range(h):
            acc[: h - j, j] = 1.0  # step j (left/up side) is crossed by taps c = -(j+1) .. -h
            acc[h + j + 1 :, h + j] = 1.0  # step h+j (right/down side) by taps c = j+1 .. h
        self.register_buffer("accumulate", acc[:, :, None, None], persistent=False)

    def extra_repr(self) -> str:
        return f"morph={'xy'[self.morph]}, extend_scope={self.extend_scope}, sampler={self.sampler}"

    # -- geometry ----------------------------------------------------------------------------------

    def deformation(self, x: Tensor) -> Tensor:
        """Cumulative, scaled and strip-limited deformation ``D`` ``[B, K, H, W]`` in cells (eqs. 10-11).

        Returned in the geometry dtype (``x.dtype`` promoted to at least float32).
        """
        steps = torch.tanh(self.offset_norm(self.offset_conv(x)))  # [B, K-1, H, W] in (-1, 1)
        gdt = _geometry_dtype(x)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):  # keep the accumulation in float32
                cum = F.conv2d(steps.to(gdt), self.accumulate.to(gdt))
        else:
            cum = F.conv2d(steps.to(gdt), self.accumulate.to(gdt))  # [B, K, H, W]; centre row of A is 0
        # Limit: every tap within h cells of the centre on the deformed axis (the K x K window).
        return (cum * self.extend_scope).clamp(-float(self.half), float(self.half))

    def _deformed_coord(self, x: Tensor) -> Tensor:
        """Absolute deformed-axis coordinate ``[B, K, H, W]`` (y for the x-morph), clamped to the image."""
        _, _, H, W = x.shape
        d = self.deformation(x)
        if self.morph == 0:
            base = torch.arange(H, device=x.device, dtype=d.dtype).view(1, 1, H, 1)
            return (base + d).clamp(0, H - 1)
        base = torch.arange(W, device=x.device, dtype=d.dtype).view(1, 1, 1, W)
        return (base + d).clamp(0, W - 1)

    def sample_positions(self, x: Tensor) -> Tensor:
        """Absolute sampling coordinates ``[B, K, H, W, 2]`` as (x, y) pixels of ``x``'s grid.

        Taps on the fixed axis may lie outside the image at the border (they read zeros, like the zero
        padding of a straight strip conv); deformed coordinates always lie inside the image.
        """
        B, _, H, W = x.shape
        K, h = self.kernel_size, self.half
        dev, dt = x.device, _geometry_dtype(x)
        deformed = self._deformed_coord(x)  # [B, K, H, W]
        c = torch.arange(K, device=dev, dtype=dt).view(1, K, 1, 1) - h
        if self.morph == 0:
            fixed = torch.arange(W, device=dev, dtype=dt).view(1, 1, 1, W) + c
            return torch.stack((fixed.expand(B, K, H, W), deformed), dim=-1)
        fixed = torch.arange(H, device=dev, dtype=dt).view(1, 1, H, 1) + c
        return torch.stack((deformed, fixed.expand(B, K, H, W)), dim=-1)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if self.sampler == "gather":
            return self._forward_gather(x)
        return self._forward_grid_sample(x)

    def tap_index(self, x: Tensor, p: int) -> tuple[Tensor, Tensor, int]:
        """Gather plan on the zero-padded (border ``p >= half + 1``) channels-last table of ``x``:
        row indices ``[B, H, W, K]`` of the lower interpolation point, its weight ``frac`` ``[B, H, W, K]``
        (carries the gradient to the offsets) and the row step to the upper point."""
        B, C, H, W = x.shape
        K, h = self.kernel_size, self.half
        dev = x.device
        Hp, Wp = H + 2 * p, W + 2 * p
        coord = self._deformed_coord(x).permute(0, 2, 3, 1)  # [B, H, W, K], deformed axis
        lo = torch.floor(coord)
        frac = coord - lo
        lo = lo.to(torch.int64) + p
        c = torch.arange(K, device=dev, dtype=torch.int64) - h  # [K]
        b = torch.arange(B, device=dev, dtype=torch.int64).view(B, 1, 1, 1) * (Hp * Wp)
        if self.morph == 0:  # rows deformed, columns x0 + c
            cols = torch.arange(W, device=dev, dtype=torch.int64).view(1, 1, W, 1) + c + p
            return b + lo * Wp + cols, frac, Wp  # next row
        rows = torch.arange(H, device=dev, dtype=torch.int64).view(1, H, 1, 1) + c + p  # columns deformed
        return b + rows * Wp + lo, frac, 1  # next column

    def strip_weight(self) -> Tensor:
        """The strip conv's weight as a ``[K*C, O]`` matrix (row ``k*C + c``): a stride-K strip conv over
        the gathered taps is a matmul with it."""
        O, C = self.conv.out_channels, self.conv.in_channels
        return self.conv.weight.reshape(O, C, self.kernel_size).permute(2, 1, 0).reshape(-1, O)

    def _forward_gather(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p = self.half + 1  # zero border: h for the fixed-axis taps, +1 for the interpolation's upper neighbour
        idx, frac, step = self.tap_index(x, p)
        s = _gather_lerp(padded_table(x, p), idx.reshape(-1), frac.reshape(-1, 1), step)  # [B*H*W*K, C]
        out = torch.matmul(s.reshape(B, H * W, -1), self.strip_weight())  # [B, H*W, O]
        if self.conv.bias is not None:  # deploy mode: the path's BatchNorm folded in
            out = out + self.conv.bias
        return out.transpose(1, 2).reshape(B, -1, H, W)

    def _forward_grid_sample(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        K = self.kernel_size
        pos = self.sample_positions(x)  # [B, K, H, W, 2] (x, y)
        # align_corners=False normalisation: pixel i -> (2i + 1) / size - 1 (well defined for size 1).
        gx = (2.0 * pos[..., 0] + 1.0) / W - 1.0
        gy = (2.0 * pos[..., 1] + 1.0) / H - 1.0
        grid = torch.stack((gx, gy), dim=-1).to(x.dtype)  # grid_sample wants the input's dtype
        if self.morph == 0:
            grid = grid.permute(0, 2, 3, 1, 4).reshape(B, H, W * K, 2)  # taps along x: [B,C,H,W*K]
        else:
            grid = grid.permute(0, 2, 1, 3, 4).reshape(B, H * K, W, 2)  # taps along y: [B,C,H*K,W]
        deformed = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        stride = (1, K) if self.morph == 0 else (K, 1)
        return F.conv2d(deformed, self.conv.weight, self.conv.bias, stride=stride)


class LinearStripConv(nn.Module):
    """The straight strip (eqs. 10-11 with all offsets 0): ``conv_x`` (1 x K) + ``conv_y`` (K x 1).

    ``[B, in_ch, H, W] -> [B, out_ch, H, W]``; zero 'same' padding, no bias.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 9) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        self.conv_x = _strip_conv(in_ch, out_ch, kernel_size, morph=0)
        self.conv_y = _strip_conv(in_ch, out_ch, kernel_size, morph=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_x(x) + self.conv_y(x)

    def fold_affine(self, scale: Tensor, shift: Tensor) -> None:
        """Deploy mode: make ``forward`` return ``forward(x) * scale + shift`` (per output channel)."""
        self.conv_x = conv_with_affine(self.conv_x, scale, shift)
        self.conv_y = conv_with_affine(self.conv_y, scale)


class SnakePath(nn.Module):
    """Snake counterpart of ``LinearStripConv``: ``snake_x`` (eq. 10) + ``snake_y`` (eq. 11), summed."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 9, extend_scope: float = 1.0, sampler: str = "gather"
    ) -> None:
        super().__init__()
        self.snake_x = SnakeConv(in_ch, out_ch, kernel_size, 0, extend_scope, sampler)
        self.snake_y = SnakeConv(in_ch, out_ch, kernel_size, 1, extend_scope, sampler)

    def forward(self, x: Tensor) -> Tensor:
        sx, sy = self.snake_x, self.snake_y
        if not self.training and sx.sampler == sy.sampler == "gather":
            return self._forward_one_gather(x)
        return sx(x) + sy(x)

    def _forward_one_gather(self, x: Tensor) -> Tensor:
        """Inference: both morphs in one pass -- one padded table, one gather of the 2K taps per pixel and
        one matmul with the stacked strip weights, which also sums the two morphs (same values as
        ``snake_x(x) + snake_y(x)`` up to float summation order)."""
        sx, sy = self.snake_x, self.snake_y
        B, C, H, W = x.shape
        p = sx.half + 1
        ix, fx, step_x = sx.tap_index(x, p)
        iy, fy, step_y = sy.tap_index(x, p)
        idx = torch.cat((ix, iy), -1).reshape(-1)  # [B*H*W*2K]: a pixel's x-morph taps, then its y-morph taps
        frac = torch.cat((fx, fy), -1).reshape(-1, 1)
        step = torch.cat((torch.full_like(ix, step_x), torch.full_like(iy, step_y)), -1).reshape(-1)
        s = _gather_lerp(padded_table(x, p), idx, frac, step)  # [B*H*W*2K, C]
        w = torch.cat((sx.strip_weight(), sy.strip_weight()), 0)  # [2K*C, O]
        out = torch.matmul(s.reshape(B, H * W, -1), w)
        for conv in (sx.conv, sy.conv):
            if conv.bias is not None:
                out = out + conv.bias
        return out.transpose(1, 2).reshape(B, -1, H, W)

    def fold_affine(self, scale: Tensor, shift: Tensor) -> None:
        """Deploy mode: make ``forward`` return ``forward(x) * scale + shift`` (per output channel)."""
        self.snake_x.conv = conv_with_affine(self.snake_x.conv, scale, shift)
        self.snake_y.conv = conv_with_affine(self.snake_y.conv, scale)


class _PathBNAct(nn.Sequential):
    """path conv -> BN -> act."""

    def __init__(self, path: nn.Module, channels: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.conv = path
        self.bn = nn.BatchNorm2d(channels)
        self.act = act_layer()

    @torch.no_grad()
    def fold(self, weight: Tensor | None = None) -> None:
        """Deploy mode: BN (times a positive per-channel ``weight``, which commutes with ReLU) into the path."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return  # already folded
        scale, shift = bn_affine(self.bn)
        if weight is not None:
            scale, shift = scale * weight, shift * weight
        self.conv.fold_affine(scale, shift)
        self.bn = nn.Identity()


class _ResidualProj(nn.Module):
    """Residual tail shared by the blocks: ``act(x + BN(conv1x1(y)))``."""

    def __init__(self, channels: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = act_layer()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.act(x + self.bn(self.proj(y)))


class DSConv(nn.Module):
    """Snake path only, residual: ``act(x + BN(proj(act(BN(Snake_x(x) + Snake_y(x))))))``.

    ``[B, C, H, W] -> [B, C, H, W]``. The paper's "DSconv" ablation row.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 9,
        extend_scope: float = 1.0,
        sampler: str = "gather",
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.snake = _PathBNAct(SnakePath(channels, channels, kernel_size, extend_scope, sampler), channels, act_layer)
        self.out = _ResidualProj(channels, act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x, self.snake(x))

    def fold_for_inference(self) -> None:
        """Deploy mode (:func:`hmpe.models.rtdetr.deploy.fuse_model`): the path's BN into its strip convs."""
        self.snake.fold()


class StripBlock(nn.Module):
    """Linear (straight strip) path only, residual; ablation counterpart of ``DSConv``."""

    def __init__(self, channels: int, kernel_size: int = 9, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.linear = _PathBNAct(LinearStripConv(channels, channels, kernel_size), channels, act_layer)
        self.out = _ResidualProj(channels, act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x, self.linear(x))

    def fold_for_inference(self) -> None:
        """Deploy mode (:func:`hmpe.models.rtdetr.deploy.fuse_model`): the path's BN into its strip convs."""
        self.linear.fold()


class LSConv(nn.Module):
    """Linear-Snake convolution: snake path + linear strip path, fused per channel, 1x1, residual.

    ``y = w_s * act(BN(Snake_x(x) + Snake_y(x))) + w_l * act(BN(Strip_1xK(x) + Strip_Kx1(x)))`` with
    ``(w_s, w_l) = softmax(fuse_logits)`` over the two paths for each output channel (initially 1/2 each),
    then ``act(x + BN(proj1x1(y)))``. ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 9,
        extend_scope: float = 1.0,
        sampler: str = "gather",
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.snake = _PathBNAct(SnakePath(channels, channels, kernel_size, extend_scope, sampler), channels, act_layer)
        self.linear = _PathBNAct(LinearStripConv(channels, channels, kernel_size), channels, act_layer)
        self.fuse_logits = nn.Parameter(torch.zeros(2, channels))  # [path (snake, linear), C]
        self.out = _ResidualProj(channels, act_layer)
        self.weights_folded = False  # deploy mode: the path weights live in the folded strip convs

    def fusion_weights(self) -> Tensor:
        """``[2, C]`` softmax weights of (snake, linear) per output channel."""
        return self.fuse_logits.softmax(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.weights_folded:
            return self.out(x, self.snake(x) + self.linear(x))
        w = self.fusion_weights().to(x.dtype)[:, None, :, None, None]  # [2, 1, C, 1, 1]
        y = w[0] * self.snake(x) + w[1] * self.linear(x)
        return self.out(x, y)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Deploy mode (:func:`hmpe.models.rtdetr.deploy.fuse_model`): each path's BN into its strip convs and,
        with ReLU paths, the softmax path weights too (``w * relu(z) = relu(w * z)``, ``w > 0``)."""
        relu = isinstance(self.snake.act, nn.ReLU) and isinstance(self.linear.act, nn.ReLU)
        if self.weights_folded or not isinstance(self.snake.bn, nn.BatchNorm2d):
            return
        w = self.fusion_weights() if relu else (None, None)
        self.snake.fold(w[0])
        self.linear.fold(w[1])
        self.weights_folded = relu


_KINDS = {"lsconv": LSConv, "dsconv": DSConv, "strip": StripBlock}


def build_strip_block(
    kind: str,
    channels: int,
    kernel_size: int = 9,
    *,
    extend_scope: float = 1.0,
    sampler: str = "gather",
) -> nn.Module:
    """Residual strip block replacing a mid -> mid conv of an HG block, ``[B, C, H, W] -> [B, C, H, W]``.

    kinds: "lsconv" (``LSConv``), "dsconv" (``DSConv``), "strip" (``StripBlock``, linear path only).
    "none" is not a kind: the caller keeps its own conv.
    """
    key = str(kind).lower()
    if key not in _KINDS:
        raise ValueError(f"unknown strip block kind {kind!r}; choose from {sorted(_KINDS)} (or keep the plain conv)")
    if key == "strip":
        return StripBlock(channels, kernel_size)
    return _KINDS[key](channels, kernel_size, extend_scope=extend_scope, sampler=sampler)
