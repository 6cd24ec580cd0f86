"""Heatmap-embedding figures with a colour bar, the paper's "heatbar" (Figures 1 and 6).

Headless: the figure is built on matplotlib's Agg canvas directly (no pyplot, no GUI, no global figure
state), so rendering many images keeps memory flat.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

from hmpe.viz.draw import class_colour

__all__ = ["render_heatmap_figure", "heatmap_maps", "masked_fraction", "visible_row_channel", "render_heatmap_output",
           "upsample_map", "detector_heatmaps", "tensor_to_uint8", "fit_for_display", "map_range", "colourise"]

# Per-cell maps are upsampled with nearest neighbour (the mask and the masked PE, which bilinear
# interpolation would smear into rings around cold cells); the heatmaps bilinear.
NEAREST_KEYS = ("mask", "pe'")


def upsample_map(m: np.ndarray | torch.Tensor, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a [h,w] map to ``size`` = (H, W) (bilinear, align_corners=False; or nearest)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        if nearest:
            t = Fn.interpolate(t, size=tuple(size), mode="nearest")
        else:
            t = Fn.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def render_heatmap_figure(
    image: np.ndarray,
    boxes: np.ndarray | Sequence,
    labels: np.ndarray | Sequence,
    names: Sequence[str],
    maps: Mapping[str, np.ndarray],
    out_png: str | Path | None = None,
    *,
    ncols: int = 3,
    cmap: str = "viridis",
    alpha: float = 0.5,
    panel_width: float = 4.0,
    dpi: int = 100,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Render the input with boxes, then every map upsampled to the image and overlaid with a colour bar.

    image: HxWx3 uint8; boxes: [N,4] xyxy absolute pixels of ``image``; labels: [N] int; names: class
    names; maps: name -> [h,w] array (e.g. H_class, H_bbox, H_mixed, Mask, |PE'|) at any resolution.
    Colour range per map: ``ranges[name]`` if given, [0,1] when the map lies in [0,1], else [min,max].
    Panels keep the image's aspect ratio; each overlay panel has its own colour bar of the panel's
    height, except binary maps (a name containing "mask"), which get a two-entry legend (masked / kept)
    and the fraction of masked cells in their title. The colour map defaults to viridis (perceptually
    uniform, readable with colour-vision deficiency); box labels are clipped to the input panel. Writes ``out_png`` when given and returns the rendered figure as an RGB uint8 array.
    """
    image = _as_uint8_image(image)
    H, W = image.shape[:2]
    fig, axes = _figure(1 + len(maps), H / W, ncols, panel_width, dpi, title)
    _panel(axes[0], image, "input").set_axis_off()  # same geometry as the other panels, no bar
    _draw_boxes(axes[0], boxes, labels, names, H)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        _map_panel(fig, ax, image, name, np.asarray(m, dtype=np.float32), cmap, alpha, ranges)
    for ax in axes[1 + len(maps):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=dpi)
    return rgb


def _as_uint8_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return image


def _figure(n: int, aspect: float, ncols: int, panel_width: float, dpi: int, title: str | None):
    """An Agg figure with ``n`` panels of ``panel_width`` inches and height ``aspect * panel_width``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    ph = panel_width * aspect
    fig = Figure(figsize=(ncols * panel_width * 1.12, nrows * (ph + 0.45) + (0.4 if title else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if title:
        fig.suptitle(title)
    return fig, axes


def _panel(ax, image: np.ndarray, name: str):
    """The image under a titled panel; returns the axes of its heatbar, on its right."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    ax.imshow(image, interpolation="bilinear")
    ax.set_title(name, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    return make_axes_locatable(ax).append_axes("right", size="4%", pad=0.05)


def _draw_boxes(ax, boxes, labels, names: Sequence[str], H: int) -> None:
    """xyxy pixel boxes in their class colours, labelled (labels clipped to the panel)."""
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    for b, c in zip(boxes, np.asarray(labels).reshape(-1)):
        col = tuple(v / 255.0 for v in class_colour(int(c)))
        x1, y1, x2, y2 = (float(v) for v in b)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=col, linewidth=1.5))
        text = names[int(c)] if int(c) < len(names) else str(int(c))
        above = y1 > 0.04 * H  # a label above a box at the top edge would cover the panel title
        ax.text(x1, y1 if above else y1 + 1, text, fontsize=7, color="black", va="bottom" if above else "top",
                bbox=dict(facecolor=col, edgecolor="none", pad=1.0), clip_on=True)


def _map_panel(fig, ax, image: np.ndarray, name: str, m: np.ndarray, cmap: str, alpha: float,
               ranges: Mapping[str, tuple[float, float]] | None) -> None:
    """One map over the image: a binary mask with its legend, any other map with its colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    up = upsample_map(m, image.shape[:2], nearest=any(k in name.lower() for k in NEAREST_KEYS))
    if "mask" in name.lower():
        _mask_panel(ax, _panel(ax, image, f"{name} ({masked_fraction(m):.0%} masked)"), up, cmap, alpha)
        return
    lo, hi = ranges[name] if ranges and name in ranges else map_range(m)
    norm = Normalize(vmin=lo, vmax=hi)
    cax = _panel(ax, image, name)
    ax.imshow(up, cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)  # opaque heatbar


def map_range(m: np.ndarray) -> tuple[float, float]:
    """A map's colour range: [0,1] when it lies in [0,1] (heatmaps, the mask), else [min,max]."""
    m = np.asarray(m, dtype=np.float32)
    if m.size and m.min() >= 0.0 and m.max() <= 1.0:
        return 0.0, 1.0
    lo, hi = float(m.min(initial=0.0)), float(m.max(initial=1.0))
    return lo, (hi if hi > lo else lo + 1.0)


def colourise(m: np.ndarray, lo: float, hi: float, cmap: str = "viridis") -> np.ndarray:
    """A [H,W] map -> HxWx3 uint8 through ``cmap`` over [lo,hi] (256 levels, the colours of the figure's bars)."""
    idx = np.clip((np.asarray(m, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    return _lut(cmap)[np.rint(idx, out=idx).astype(np.uint8)]


@functools.lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def masked_fraction(mask: np.ndarray) -> float:
    """Fraction of cells a binary mask sets to zero (eq. 6: those cells lose their position encoding)."""
    mask = np.asarray(mask)
    return float((mask < 0.5).mean()) if mask.size else 0.0


def _mask_panel(ax, legend_ax, up: np.ndarray, cmap: str, alpha: float) -> None:
    """A binary map: two colours of ``cmap`` and a legend naming them, not a continuous colour bar."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cold, hot = colormaps[cmap](0.0), colormaps[cmap](1.0)
    ax.imshow((up >= 0.5).astype(np.float32), cmap=ListedColormap([cold, hot]), vmin=0, vmax=1, alpha=alpha,
              interpolation="nearest")
    legend_ax.set_axis_off()
    ax.legend(handles=[Patch(color=cold, label="masked (0)"), Patch(color=hot, label="kept (1)")],
              loc="lower right", fontsize=6, framealpha=0.8)


def _to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@torch.no_grad()
def heatmap_maps(out, index: int = 0, level: int | str = 0, pe: str | None = "channel") -> dict[str, np.ndarray]:
    """Assemble the figure's maps for image ``index`` of a :class:`~hmpe.models.heatmap.HeatmapOutput`.

    level: an int shows that level's maps; the default 0 is the stride-8 level, the finest grid and the
    one where small objects live (its map is computed from stride-8 features, and larger objects show
    on it too). ``"max"`` shows the per-pixel max over the levels, each upsampled (bilinear; Mask
    and PE' nearest) to the stride-8 grid -- sharper objects from S3, blurrier ones from S4/S5.
    Returns ``{"H_class", "H_bbox", "H_mixed", "Mask", PE'}`` as [h,w] float arrays. The PE' map:
    ``pe="channel"`` (the figures' default) gives ``"PE' ch.k"``, one channel of the masked position
    encoding (eq. 7) at the finest level shown: the row wave whose period is about a third of the map
    height, so the figure shows the position signal attention receives and where the mask removed it;
    ``pe="norm"`` gives ``"|PE'|"``, the L2 norm over channels (for a binary mask, the mask times
    ``sqrt(D/2)``: the explorer shows it per level); ``pe=None`` omits it.
    """
    L = out.num_levels
    levels = list(range(L)) if level == "max" else [int(level)]
    size = tuple(out.mask[levels[0]].shape[-2:])

    def pick(ms, nearest=False, i=index):  # the per-pixel max over the levels shown, on the first's grid
        return np.max([upsample_map(_to_np(ms[l][i, 0]), size, nearest) for l in levels], axis=0)

    maps = {
        "H_class": pick(out.h_class),
        "H_bbox": pick(out.h_bbox),
        "H_mixed": pick(out.h_mixed),
        "Mask": pick(out.mask, nearest=True),
    }
    if pe == "norm":  # per cell, like the mask; only the levels shown: the encoding of a grid is not free
        mags = {l: out.masked_pe(l)[index].float().norm(dim=-1).reshape(1, 1, *out.mask[l].shape[-2:])
                for l in levels}
        maps["|PE'|"] = pick(mags, nearest=True, i=0)
    elif pe:  # one channel of the finest level shown
        l = levels[0]
        h, w = out.mask[l].shape[-2:]
        pe_l = out.masked_pe(l)[index].float()  # [h*w, D]
        k = visible_row_channel(pe_l.shape[-1], h, out.position.temperature, out.position.mode)
        maps[f"PE' ch.{k}"] = _to_np(pe_l[:, k].reshape(h, w))
    return maps


def visible_row_channel(dim: int, height: int, temperature: float = 10000.0, mode: str = "rtdetr") -> int:
    """The row-wave channel of the position encoding whose period is closest to ``height / 3`` cells.

    Channel f (f < F) has period ``2 pi T^(f/F)`` along the rows, with F = dim // 4 for
    :func:`hmpe.models.rtdetr.position.sincos_2d` (``mode="rtdetr"``) and dim // 2 for
    :func:`~hmpe.models.rtdetr.position.sincos_2d_additive` (``"paper"``).
    """
    n_freq = max(1, dim // 4 if mode == "rtdetr" else dim // 2)
    target = max(height / 3.0, 2 * math.pi)
    f = round(n_freq * math.log(target / (2 * math.pi)) / math.log(temperature))
    return int(min(max(f, 0), n_freq - 1))


def render_heatmap_output(image: np.ndarray, boxes, labels, names: Sequence[str], out, index: int = 0,
                          level: int | str = 0, out_png: str | Path | None = None, **kwargs) -> np.ndarray:
    """``heatmap_maps`` + ``render_heatmap_figure`` for one image of a batch."""
    return render_heatmap_figure(image, boxes, labels, names, heatmap_maps(out, index, level), out_png, **kwargs)


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """A network input ``[3,H,W]`` in [0,1] -> ``HxWx3`` uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def fit_for_display(image: np.ndarray, boxes, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Shrink a large image (and its xyxy pixel boxes) so that its longer side is at most ``max_side``:
    the figure shows maps of a stride-8 grid, full resolution adds nothing but time and memory."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    H, W = image.shape[:2]
    f = max_side / max(H, W)
    if f >= 1.0:
        return image, boxes
    from PIL import Image

    w, h = max(1, round(W * f)), max(1, round(H * f))
    small = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return small, boxes * np.array([w / W, h / H, w / W, h / H], np.float32)


@torch.no_grad()
def detector_heatmaps(model, images: torch.Tensor, level: int | str = 0) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """One inference forward of a detector with a heatmap path -> (outputs, per-image figure maps).

    ``model``: a :class:`~hmpe.models.detector.DetectionModel` whose ``heatmap`` is not None, in eval mode;
    images ``[B,3,H,W]`` in [0,1]. The maps are :func:`heatmap_maps` of each image (numpy, on the
    stride-8 grid); the outputs keep ``pred_logits`` / ``pred_boxes`` for the post-processor. Runs under
    ``no_grad`` and registers no hooks, so calling it over many images keeps memory flat.
    """
    if getattr(model, "heatmap", None) is None:
        raise ValueError("this model has no heatmap path (its model config has `heatmap: null`)")
    out = model(images)
    heat = out.pop("heatmap")
    maps = [heatmap_maps(heat, i, level) for i in range(images.shape[0])]
    return out, maps
