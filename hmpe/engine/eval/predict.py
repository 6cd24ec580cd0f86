"""What a prediction is and where it comes from and goes to: :class:`Prediction` (one image's detections),
:func:`resolve_source` (the images a source names), :func:`detections` (model outputs -> predictions),
:func:`capped` (the ``max_det`` cap, never silent) and :func:`output_names` (one output file per input, no
clash). Used by :class:`hmpe.api.Detector` and the explorer."""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmpe.data.images import IMAGE_SUFFIXES

__all__ = ["PREDICT_MAX_DET", "Prediction", "capped", "detections", "output_names", "resolve_source"]


@dataclass
class Prediction:
    """Detections for one image, in original-image pixels."""

    path: str
    width: int
    height: int
    boxes: np.ndarray  # (K,4) xyxy
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,)
    names: list[str]

    def top(self, k: int) -> "Prediction":
        """The ``k`` highest-scoring detections (all when ``k`` <= 0)."""
        if k <= 0 or len(self.scores) <= k:
            return self
        order = np.argsort(-self.scores, kind="stable")[:k]
        return dataclasses.replace(self, boxes=self.boxes[order], scores=self.scores[order], labels=self.labels[order])

    def to_json(self) -> dict:
        return {
            "image": self.path, "width": self.width, "height": self.height,
            "detections": [
                {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                 "label": int(c), "name": self.names[int(c)]}
                for b, s, c in zip(self.boxes, self.scores, self.labels)
            ],
        }


def resolve_source(source: str | Path | list) -> list[Path]:
    """A file, a folder (its images), a glob pattern, or a list of those -> image paths."""
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in resolve_source(s)]
    s = str(source)
    if "://" in s and s.split("://", 1)[0].isalpha():  # http://, https://, s3://, ...
        raise FileNotFoundError(f"source {s}: URLs are not read (hmpe never downloads); download the image first "
                                f"and pass its path")
    p = Path(s)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"source {s}: no images found (a file, a folder or a glob pattern)")
    return files


def detections(outputs: dict, postprocessor, sizes: torch.Tensor, paths: list, shapes: list[tuple[int, int]],
               conf: float, names: list[str]) -> list[Prediction]:
    """Model ``outputs`` for a batch -> one :class:`Prediction` per image: ``postprocessor`` maps the boxes to
    ``sizes`` ([B,2] (w, h), from :meth:`Preprocess.post_sizes`), detections below ``conf`` are dropped;
    ``shapes``: the original (width, height) of each image."""
    out = []
    for p, (w, h), o in zip(paths, shapes, postprocessor(outputs, sizes)):
        keep = o["scores"] >= conf
        out.append(Prediction(str(p), w, h, o["boxes"][keep].cpu().numpy(), o["scores"][keep].cpu().numpy(),
                              o["labels"][keep].cpu().numpy(), names))
    return out


#: Detections kept per image by a whole-image :meth:`Detector.predict` when ``max_det`` is not given
#: (the ``max_det`` key's null); a sliced prediction keeps every merged detection.
PREDICT_MAX_DET = 100


def capped(pred: Prediction, cap: int) -> Prediction:
    """``pred.top(cap)``, with a warning on stderr when the cap drops detections (never silently)."""
    if 0 < cap < len(pred.scores):
        print(f"warning: {pred.path}: {len(pred.scores)} detections, kept the max_det={cap} highest; "
              f"pass max_det=0 for all", file=sys.stderr)
    return pred.top(cap)


def output_names(paths: list[Path], suffix: str) -> list[str]:
    """One output file name per input (``suffix`` after the name's base), all different: the stem
    (``a.jpg`` -> ``a`` + suffix) where no other input shares it; else the file name with its dot as ``_``
    (``a.png`` -> ``a_png``); else the path below the inputs' common folder (``x/a.png`` -> ``x_a_png``);
    a base taken already gets ``_2``, ``_3``, ... in input order. Deterministic for a given input list."""
    stems = Counter(p.stem for p in paths)
    names = Counter(p.name for p in paths)
    clashing = [os.path.abspath(p) for p in paths if names[p.name] > 1]
    root = os.path.commonpath(clashing) if len(set(clashing)) > 1 else ""
    out, used = [], set()
    for p in paths:
        if stems[p.stem] == 1:
            base = p.stem
        elif names[p.name] == 1 or not root:
            base = p.name.replace(".", "_")
        else:
            base = Path(os.path.relpath(os.path.abspath(p), root)).as_posix().replace("/", "_").replace(".", "_")
        name, k = base + suffix, 2
        while name in used:
            name, k = f"{base}_{k}{suffix}", k + 1
        used.add(name)
        out.append(name)
    return out
