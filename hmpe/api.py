"""Python API: ``Detector(...).train() / .val() / .predict()``.

    from hmpe import Detector
    det = Detector("rtdetr-n")
    det.train(data="synthetic", epochs=5)
    metrics = det.val()
    results = det.predict("images/", conf=0.3)
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmpe.engine.checkpoint import load_checkpoint
from hmpe.utils.config import apply_overrides, default_train_config, load_model_config, split_overrides

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


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


def load_for_inference(weights: str | Path, device: torch.device):
    """Checkpoint -> (model in eval mode with EMA weights when present, postprocessor, ckpt)."""
    from hmpe.models.detector import build_model, build_postprocessor

    ckpt = load_checkpoint(weights)
    model = build_model(ckpt["model_cfg"], len(ckpt["names"]))
    state = (ckpt.get("ema") or {}).get("module") or ckpt["model"]
    model.load_state_dict(state)
    model.to(device).eval()
    return model, build_postprocessor(ckpt["model_cfg"], len(ckpt["names"])), ckpt


def resize_for_model(img: Image.Image, imgsz: int) -> torch.Tensor:
    """PIL RGB -> float [3,imgsz,imgsz] in [0,1], the same square resize as validation."""
    im = img.convert("RGB").resize((imgsz, imgsz), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Detector:
    """A detector: a preset / model YAML to train, or a checkpoint to evaluate and predict with."""

    def __init__(self, model: str = "rtdetr-n", weights: str | None = None, device: str = "auto", **overrides):
        if str(model).endswith(".pt"):
            model, weights = None, model
        self.model_name = model
        self.weights = str(weights) if weights else None
        self.device_spec = device
        self.overrides = overrides
        self._model = None
        self._post = None
        self._ckpt = None
        self.metrics: dict = {}
        self.run_dir: Path | None = None

    # ------------------------------------------------------------------ train
    def train(self, data: str = "synthetic", **kwargs) -> dict:
        from hmpe.engine.trainer import train

        cfg = default_train_config()
        model_over, train_over = split_overrides({**self.overrides, **kwargs})
        cfg.update(train_over)
        cfg["data"] = data
        cfg["device"] = self.device_spec if "device" not in kwargs else kwargs["device"]
        if self.model_name:
            cfg["model"] = self.model_name
        if self.weights:
            cfg["weights"] = self.weights
        trainer, metrics = train(cfg, model_over)
        self.run_dir = trainer.run_dir
        best = trainer.weights_dir / "best.pt"
        self.weights = str(best if best.exists() else trainer.weights_dir / "last.pt")
        self._model = None
        self.metrics = metrics
        return metrics

    # ------------------------------------------------------------------ shared
    def _ensure_model(self):
        from hmpe.engine.trainer import select_device

        if self._model is None:
            if not self.weights:
                raise ValueError("no weights: train first, or pass a checkpoint (Detector('best.pt'))")
            self.device = select_device(self.device_spec)
            self._model, self._post, self._ckpt = load_for_inference(self.weights, self.device)
        return self._model

    @property
    def names(self) -> list[str]:
        self._ensure_model()
        return list(self._ckpt["names"])

    # ------------------------------------------------------------------ val
    def val(self, data: str | None = None, **kwargs) -> dict:
        from torch.utils.data import DataLoader

        from hmpe.data.dataset import build_dataset, collate_fn
        from hmpe.data.formats import load_data_config
        from hmpe.data.transforms import build_transforms
        from hmpe.engine.evaluator import COCOEvaluator
        from hmpe.engine.trainer import evaluate, increment_run_dir

        model = self._ensure_model()
        tcfg = {**default_train_config(), **self._ckpt.get("train_cfg", {}), **kwargs}
        data = data or tcfg["data"]
        split = kwargs.get("split", "val")
        ds = build_dataset(load_data_config(data), split, transforms=build_transforms(False, tcfg["imgsz"]),
                           skip_bad=tcfg.get("skip_bad", False))
        if list(ds.names) != self.names:
            raise ValueError(f"data {data}: classes {list(ds.names)} differ from the checkpoint's {self.names}")
        loader = DataLoader(ds, batch_size=tcfg["batch"], shuffle=False, num_workers=tcfg["workers"],
                            collate_fn=collate_fn)
        evaluator = COCOEvaluator(ds.samples, self.names, max_dets=tcfg["max_dets"])
        metrics = evaluate(model, loader, self._post, evaluator, self.device)
        run_dir = increment_run_dir(tcfg["project"], "val", kwargs.get("name"), kwargs.get("exist_ok", False))
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluator.plot(run_dir)
        with open(run_dir / "metrics.json", "w") as f:
            json.dump({k: v for k, v in metrics.items()}, f, indent=2, default=float)
        print(evaluator.summary_table())
        print(f"results saved to {run_dir}")
        self.run_dir = run_dir
        self.metrics = metrics
        return metrics

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(self, source, conf: float = 0.25, imgsz: int | None = None, batch: int = 4,
                save: bool = False, project: str = "runs", name: str | None = None) -> list[Prediction]:
        from hmpe.engine.trainer import increment_run_dir

        model = self._ensure_model()
        imgsz = imgsz or self._ckpt.get("train_cfg", {}).get("imgsz", 640)
        paths = resolve_source(source)
        results: list[Prediction] = []
        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            ims = []
            for p in chunk:
                try:
                    ims.append(Image.open(p).convert("RGB"))
                except Exception as e:
                    raise ValueError(f"{p}: cannot be read as an image ({e})") from None
            x = torch.stack([resize_for_model(im, imgsz) for im in ims]).to(self.device)
            sizes = torch.tensor([im.size for im in ims], device=self.device)  # (w, h)
            outs = self._post(model(x), sizes)
            for p, im, o in zip(chunk, ims, outs):
                keep = o["scores"] >= conf
                results.append(Prediction(str(p), im.size[0], im.size[1], o["boxes"][keep].cpu().numpy(),
                                          o["scores"][keep].cpu().numpy(), o["labels"][keep].cpu().numpy(),
                                          self.names))
        if save:
            run_dir = increment_run_dir(project, "predict", name)
            run_dir.mkdir(parents=True, exist_ok=True)
            from hmpe.viz.draw import draw_detections

            for r in results:
                draw_detections(Image.open(r.path).convert("RGB"), r.boxes, r.labels, r.scores,
                                r.names).save(run_dir / (Path(r.path).stem + ".jpg"))
            with open(run_dir / "predictions.json", "w") as f:
                json.dump([r.to_json() for r in results], f, indent=1)
            self.run_dir = run_dir
        return results


def make_train_config(args: dict) -> tuple[dict, dict]:
    """CLI overrides -> (training config, model overrides)."""
    model_over, train_over = split_overrides(args)
    cfg = apply_overrides(default_train_config(), train_over)
    cfg["_explicit"] = tuple(train_over)
    return cfg, model_over


__all__ = ["Detector", "Prediction", "load_for_inference", "resolve_source", "make_train_config",
           "load_model_config"]
