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


def load_for_inference(weights: str | Path, device: torch.device, fuse: bool = True):
    """Checkpoint -> (model in eval mode with EMA weights when present, postprocessor, ckpt).

    ``fuse`` (default): deploy mode (:meth:`hmpe.models.detector.DetectionModel.fuse`, same outputs,
    inference only); ``False`` keeps the trained structure (e.g. to inspect or fine-tune it)."""
    from hmpe.models.detector import build_model, build_postprocessor

    ckpt = load_checkpoint(weights)
    model = build_model(ckpt["model_cfg"], len(ckpt["names"]))
    state = (ckpt.get("ema") or {}).get("module") or ckpt["model"]
    model.load_state_dict(state)
    model.to(device).eval()
    if fuse:
        model.fuse()
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
        if kwargs.get("slice"):  # full images, tiled (hmpe.engine.slicing); conf defaults to 0.001 here
            from hmpe.engine.slicing import evaluate_sliced, model_predict_fn

            metrics = evaluate_sliced(model_predict_fn(model, self._post, self.device, tcfg["imgsz"]), ds, evaluator,
                                      int(kwargs["slice"]), tcfg["imgsz"], overlap=kwargs.get("overlap", 0.2),
                                      batch=tcfg["batch"], conf=kwargs.get("conf", 0.001),
                                      merge=kwargs.get("merge", "nms"), merge_iou=kwargs.get("merge_iou", 0.5),
                                      full_image=kwargs.get("full_image", False))
        else:
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

    # ------------------------------------------------------------------ export
    def export(self, format: str = "onnx", imgsz: int | None = None, opset: int = 17, gather_sampling: bool = False,
               out: str | Path | None = None, check: bool = True, image: str | Path | None = None) -> Path:
        """Export the checkpoint to ONNX or OpenVINO IR (post-processed outputs, dynamic batch; see
        :mod:`hmpe.engine.export`) and, with ``check``, compare the runtime (onnxruntime / OpenVINO) with
        PyTorch (raises ``ExportParityError`` on a mismatch)."""
        fmt = str(format).lower()
        if fmt not in ("onnx", "openvino"):
            raise ValueError(f"format={format!r}: choose onnx or openvino")
        if not self.weights:
            raise ValueError("no weights: train first, or pass a checkpoint (Detector('best.pt'))")
        from hmpe.engine.export import export_onnx, export_openvino

        fn = export_onnx if fmt == "onnx" else export_openvino
        return fn(self.weights, imgsz=imgsz, opset=opset, gather_sampling=gather_sampling, out=out, check=check,
                  image=image)

    def _predict_sliced(self, path: Path, conf: float, imgsz: int, batch: int, size: int, overlap: float,
                        merge: str, merge_iou: float, full_image: bool) -> Prediction:
        from hmpe.engine.slicing import model_predict_fn, sliced_predict

        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))  # decoded once; tiles are views of it
        except Exception as e:
            raise ValueError(f"{path}: cannot be read as an image ({e})") from None
        fn = model_predict_fn(self._ensure_model(), self._post, self.device, imgsz)
        b, s, l = sliced_predict(fn, image, size, imgsz, overlap, batch, conf, merge, merge_iou,
                                 full_image=full_image)
        return Prediction(str(path), image.shape[1], image.shape[0], b.numpy(), s.numpy(), l.numpy(), self.names)

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(self, source, conf: float = 0.25, imgsz: int | None = None, batch: int = 4,
                save: bool = False, project: str = "runs", name: str | None = None, slice: int | None = None,
                overlap: float = 0.2, merge: str = "nms", merge_iou: float = 0.5,
                full_image: bool = False) -> list[Prediction]:
        """Detections per image, boxes in original-image pixels (score >= ``conf``).

        ``slice=N`` (sliced inference for large images, :mod:`hmpe.engine.slicing`): each image is read once
        and cut into N x N tiles overlapping by ``overlap``; ``batch`` tiles per forward pass; detections are
        merged across tiles (border fragments by intersection-over-smaller, then class-wise NMS at IoU
        ``merge_iou``, or ``merge="wbf"``); ``full_image=True`` adds a pass on the whole image."""
        from hmpe.engine.trainer import increment_run_dir

        model = self._ensure_model()
        imgsz = imgsz or self._ckpt.get("train_cfg", {}).get("imgsz", 640)
        paths = resolve_source(source)
        results: list[Prediction] = []
        if slice:  # one image at a time, its tiles batched
            results = [self._predict_sliced(p, conf, imgsz, batch, int(slice), overlap, merge, merge_iou, full_image)
                       for p in paths]
        for i in range(0, 0 if slice else len(paths), batch):
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

    # ------------------------------------------------------------------ heatmap (DESIGN sec. 7)
    @torch.no_grad()
    def heatmap(self, source, conf: float = 0.25, imgsz: int | None = None, level: int | str = 0,
                save: bool = True, out: str | Path | None = None, project: str = "runs", name: str | None = None,
                dpi: int = 100) -> list[dict]:
        """Heatmap figures (the paper's Figures 1 and 6): one PNG per image of ``source`` with the input and
        its predicted boxes (score >= ``conf``), then ``H_class``, ``H_bbox``, ``H_mixed``, ``Mask`` and the
        masked-PE magnitude ``|PE'|``, each upsampled to the image and with a colour bar.

        level: 0 (stride 8, default), 1, 2, or ``"max"`` (per-pixel max over the levels). Figures go to
        ``out`` or ``<project>/heatmap/<name>`` (exp, exp2, ...). Returns one dict per image: ``path``,
        ``png`` (None when ``save=False``), ``maps`` (name -> [h,w] array on the model's grid) and
        ``prediction`` (:class:`Prediction`). One image at a time, no hooks, no autograd graph.
        """
        from hmpe.engine.trainer import increment_run_dir
        from hmpe.viz.heatmap import detector_heatmaps, fit_for_display, render_heatmap_figure

        model = self._ensure_model()
        if getattr(model, "heatmap", None) is None:
            raise ValueError(f"{self.weights}: model {self._ckpt['model_cfg'].get('name', '?')!r} has no heatmap "
                             f"path (its model config has `heatmap: null`), so there is no heatmap to show; "
                             f"train a model with one, e.g. model=rtdetr-n-heat")
        if level != "max" and not 0 <= int(level) < model.heatmap.num_levels:
            raise ValueError(f"level={level!r}: expected 0..{model.heatmap.num_levels - 1} or max")
        imgsz = imgsz or self._ckpt.get("train_cfg", {}).get("imgsz", 640)
        paths = resolve_source(source)
        run_dir = None
        if save:
            run_dir = Path(out) if out else increment_run_dir(project, "heatmap", name)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir = run_dir
        results = []
        for p in paths:
            try:
                im = Image.open(p).convert("RGB")
            except Exception as e:
                raise ValueError(f"{p}: cannot be read as an image ({e})") from None
            x = resize_for_model(im, imgsz)[None].to(self.device)
            outputs, maps = detector_heatmaps(model, x, level)
            o = self._post(outputs, torch.tensor([im.size], device=self.device))[0]
            keep = o["scores"] >= conf
            pred = Prediction(str(p), im.size[0], im.size[1], o["boxes"][keep].cpu().numpy(),
                              o["scores"][keep].cpu().numpy(), o["labels"][keep].cpu().numpy(), self.names)
            png = None
            if save:
                png = run_dir / f"{p.stem}_heatmap.png"
                image, boxes = fit_for_display(np.asarray(im), pred.boxes)
                lv = ("max over levels" if level == "max"
                      else f"level {level} (stride {model.heatmap.strides[int(level)]})")
                render_heatmap_figure(image, boxes, pred.labels, self.names, maps[0], png, dpi=dpi,
                                      title=f"{p.name}: {len(pred.scores)} detections (conf >= {conf}), "
                                            f"heatmaps at {lv}")
            results.append({"path": str(p), "png": png, "maps": maps[0], "prediction": pred})
            del outputs, maps
        return results


def make_train_config(args: dict) -> tuple[dict, dict]:
    """CLI overrides -> (training config, model overrides)."""
    model_over, train_over = split_overrides(args)
    cfg = apply_overrides(default_train_config(), train_over)
    cfg["_explicit"] = tuple(train_over)
    return cfg, model_over


__all__ = ["Detector", "Prediction", "load_for_inference", "resolve_source", "make_train_config",
           "load_model_config"]
