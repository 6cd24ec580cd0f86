"""Render docs/figures/lsconv_positions.png: where SnakeConv samples, like the paper's Figure 5.

Usage:  python -m benchmarks.render_lsconv_figure [--out docs/figures/lsconv_positions.png] [--steps 300]

A synthetic 48 x 48 image holds two thin curved structures (a horizontal and a vertical sine wave,
Gaussian-blurred). Panels:
  (a) straight strip (all offsets 0: the linear path of LSConv) at a few output locations;
  (b) a randomly initialised x-morph and y-morph ``SnakeConv`` (seed 0): the offsets a fresh module
      produces before any training;
  (c, d) the x-morph / y-morph after a brief fit: only the offset predictor is trained (Adam, ``--steps``
      steps) to maximise the image intensity sampled along the strip, averaged over the output
      locations on the horizontal (x-morph) / vertical (y-morph) curve. The predictor's input is the
      9 x 9 neighbourhood of each pixel (81 shifted copies of the image), standing in for the wide
      receptive field that backbone features have; the geometry (accumulation, clamp, sampling) is the
      library's, via ``SnakeConv.sample_positions``.
Deterministic (fixed seeds); CPU only; a few seconds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from hmpe.models.lsconv import SnakeConv

ROOT = Path(__file__).resolve().parents[1]
K, S = 9, 48  # kernel size, image size


def synthetic_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blurred image [1, 1, S, S] and boolean masks of the horizontal / vertical curve centrelines."""
    img = torch.zeros(S, S)
    horiz = torch.zeros(S, S, dtype=torch.bool)
    vert = torch.zeros(S, S, dtype=torch.bool)
    for t in torch.linspace(0, S - 1, 8 * S):
        y = 15 + 6 * math.sin(2 * math.pi * float(t) / 26)  # horizontal wave (x-morph target)
        x = 33 + 5 * math.sin(2 * math.pi * float(t) / 22 + 1.0)  # vertical wave (y-morph target)
        i, j = int(round(y)), int(round(float(t)))
        img[i, j] = 1.0
        horiz[i, j] = True
        i, j = int(round(float(t))), int(round(x))
        img[i, j] = 1.0
        vert[i, j] = True
    g = torch.exp(-0.5 * (torch.arange(-3, 4, dtype=torch.float32) / 0.8) ** 2)
    g = g / g.sum()
    blurred = F.conv2d(img[None, None], g.view(1, 1, 1, 7), padding=(0, 3))
    blurred = F.conv2d(blurred, g.view(1, 1, 7, 1), padding=(3, 0))
    blurred = blurred / blurred.max()
    # Keep only interior centres (the strip of K = 9 taps fits inside the image).
    inner = torch.zeros(S, S, dtype=torch.bool)
    inner[K // 2 : S - K // 2, K // 2 : S - K // 2] = True
    return blurred, horiz & inner, vert & inner


def neighbourhood_features(img: torch.Tensor) -> torch.Tensor:
    """[1, 81, S, S]: the 9 x 9 neighbourhood of every pixel, the offset predictor's input."""
    return F.unfold(img, K, padding=K // 2).view(1, K * K, S, S)


def sampled_intensity(m: SnakeConv, feats: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Bilinear image intensity at every tap ``[1, K, S, S]`` (differentiable in the offsets)."""
    pos = m.sample_positions(feats)  # [1, K, S, S, 2] (x, y)
    grid = (2 * pos + 1) / S - 1
    v = F.grid_sample(img, grid.view(1, K * S, S, 2), align_corners=False, padding_mode="zeros")
    return v.view(1, K, S, S)


def fit(m: SnakeConv, feats: torch.Tensor, img: torch.Tensor, mask: torch.Tensor, steps: int) -> list[float]:
    m.offset_norm.eval()  # identity running stats: the affine (gamma, beta) is trained, no batch stats
    params = list(m.offset_conv.parameters()) + list(m.offset_norm.parameters())
    opt = torch.optim.Adam(params, lr=0.02)
    hist = []
    for _ in range(steps):
        score = sampled_intensity(m, feats, img)[0].mean(0)[mask].mean()
        opt.zero_grad()
        (-score).backward()
        opt.step()
        hist.append(float(score.detach()))
    return hist


def pick(mask: torch.Tensor, along: int, targets: tuple[int, ...]) -> list[tuple[int, int]]:
    """On-curve (row, col) locations at the given columns (``along=1``) or rows (``along=0``)."""
    out = []
    for t in targets:
        line = mask[:, t] if along == 1 else mask[t, :]
        k = int(line.nonzero()[0])
        out.append((k, t) if along == 1 else (t, k))
    return out


def draw(ax, img, tracks, title: str) -> None:
    ax.imshow(img[0, 0].numpy(), cmap="gray", vmin=0, vmax=1.4, extent=(-0.5, S - 0.5, S - 0.5, -0.5))
    for pos, colour in tracks:  # pos [K, 2] (x, y)
        ax.plot(pos[:, 0], pos[:, 1], "-", color=colour, lw=1.5)
        ax.plot(pos[:, 0], pos[:, 1], "o", color=colour, ms=4)
        ax.plot(pos[K // 2, 0], pos[K // 2, 1], "s", color="red", ms=7)
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def panels(steps: int):
    """The image and the four panels' (title, tracks): straight strips, random init, then x- / y-morph
    after a ``steps``-step fit to the curve."""
    torch.manual_seed(0)
    img, horiz, vert = synthetic_image()
    feats = neighbourhood_features(img)
    sx, sy = SnakeConv(K * K, 1, K, morph=0), SnakeConv(K * K, 1, K, morph=1)
    for m in (sx, sy):
        m.eval()
    pts_x, pts_y = pick(horiz, 1, (9, 18, 42)), pick(vert, 0, (27, 34, 42))  # away from the crossing

    def tracks(m: SnakeConv, pts, colour: str):
        with torch.no_grad():
            pos = m.sample_positions(feats)[0]  # [K, S, S, 2]
        return [(pos[:, i, j].numpy(), colour) for i, j in pts]

    straight = [SnakeConv(K * K, 1, K, morph=mm) for mm in (0, 1)]
    for m in straight:
        with torch.no_grad():
            m.offset_conv.weight.zero_()
            m.offset_conv.bias.zero_()
        m.eval()
    blue = "tab:blue"
    out = [
        ("(a) straight strip (offsets 0)", tracks(straight[0], pts_x, blue) + tracks(straight[1], pts_y, blue)),
        ("(b) random init, x- and y-morph", tracks(sx, pts_x, "tab:green") + tracks(sy, pts_y, "tab:green")),
    ]
    hx = fit(sx, feats, img, horiz, steps)
    hy = fit(sy, feats, img, vert, steps)
    sx.eval()
    sy.eval()
    out += [
        (f"(c) x-morph after {steps}-step fit", tracks(sx, pts_x, "tab:green")),
        (f"(d) y-morph after {steps}-step fit", tracks(sy, pts_y, "tab:green")),
    ]
    print(
        f"mean sampled intensity on the curve: x-morph {hx[0]:.3f} -> {hx[-1]:.3f}, "
        f"y-morph {hy[0]:.3f} -> {hy[-1]:.3f}"
    )
    return img, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "lsconv_positions.png"))
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(2)
    img, figure_panels = panels(args.steps)
    fig, axes = plt.subplots(2, 2, figsize=(8, 8.4), dpi=80)
    for ax, (title, tr) in zip(axes.flat, figure_panels):
        draw(ax, img, tr, title)
    fig.suptitle(
        f"SnakeConv sampling positions, K = {K} (red square: kernel centre; hmpe/models/lsconv.py)", fontsize=11
    )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
