"""Drawing detections on images (PIL, no GUI)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def class_colour(c: int) -> tuple[int, int, int]:
    h = (c * 0.618033988749895) % 1.0  # golden-ratio hues stay distinct for many classes
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
                    names: list[str], width: int = 2) -> Image.Image:
    """Return a copy of ``image`` with xyxy ``boxes`` drawn and labelled ``name score``."""
    im = image.copy()
    d = ImageDraw.Draw(im)
    for i, (b, c) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        col = class_colour(int(c))
        x1, y1, x2, y2 = (float(v) for v in b)
        d.rectangle([x1, y1, x2, y2], outline=col, width=width)
        text = names[int(c)] if int(c) < len(names) else str(int(c))
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        tw = d.textlength(text)
        ty = max(0.0, y1 - 11)
        d.rectangle([x1, ty, x1 + tw + 4, ty + 11], fill=col)
        d.text((x1 + 2, ty), text, fill=(0, 0, 0))
    return im
