"""Python API: ``Detector(...).train() / .val() / .predict()``.

    from hmpe import Detector
    det = Detector("rtdetr-n")
    det.train(data="synthetic", epochs=5)
    metrics = det.val()
    results = det.predict("images/", conf=0.3)
    det.save_pretrained("shared/")            # config.json + model.safetensors (no pickle)
    Detector.from_pretrained("shared/").predict("images/")
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.images import load_image
from hmpe.data.formats import DataError, format_note, load_data_config
from hmpe.data.geo import raster_sources
from hmpe.data.preprocess import Preprocess
from hmpe.engine.checkpoint import (PRETRAINED_CONFIG, checkpoint_data_config, load_checkpoint,
                                    load_for_inference, resolve_weights, save_pretrained, shipped_name,
                                    shipped_weights)
from hmpe.engine.deploy.export import export_onnx, export_openvino
from hmpe.engine.deploy.quantize import export_int8
from hmpe.engine.deploy.runtime import is_exported, load_exported
from hmpe.engine.eval.evaluator import COCOEvaluator
from hmpe.engine.eval.predict import PREDICT_MAX_DET, Prediction, capped, detections, output_names, resolve_source
from hmpe.engine.eval.raster import RASTER_WINDOW, predict_raster, write_geojson
from hmpe.engine.eval.slicing import evaluate_sliced, model_predict_fn, sliced_predict
from hmpe.engine.train.trainer import evaluate, train
from hmpe.utils.config import apply_overrides, default_train_config, load_model_config, split_overrides
from hmpe.utils.keys import TASKS, check_task_args, defaults
from hmpe.utils.runtime import create_run_dir, increment_run_dir, select_device
from hmpe.viz.draw import draw_detections
from hmpe.viz.heatmap import detector_heatmaps, fit_for_display, render_heatmap_figure


def key_defaults(task: str, keep: tuple[str, ...] = ()):
    """Method decorator: an argument left ``None`` that is a key of ``hmpe TASK`` takes the key's default from
    the key table (:func:`hmpe.utils.keys.defaults`), so each default is stated once, there; ``keep``: keys
    whose ``None`` the method resolves itself (``overlap``: a tile-trained checkpoint's ``tile_overlap`` first)."""
    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def resolved(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            table = defaults(task)
            for k, v in bound.arguments.items():
                if v is None and k in table and k not in keep:
                    bound.arguments[k] = table[k]
            return fn(*bound.args, **bound.kwargs)

        resolved.key_task, resolved.key_keep = task, keep  # read by tests/test_defaults_agree.py
        return resolved
    return wrap


class Detector:
    """A detector: a preset / model YAML to train, or a checkpoint (a ``.pt`` or a :meth:`save_pretrained`
    folder) to evaluate and predict with; or an ``hmpe export`` file (``.onnx``, OpenVINO ``.xml``) to predict
    and evaluate with in its runtime (:mod:`hmpe.engine.deploy.runtime`)."""

    def __init__(self, model: str | None = "rtdetr-n", weights: str | None = None, device: str = "auto",
                 **overrides):
        if model is not None and (str(model).endswith(".pt") or is_exported(model) or str(model) in shipped_weights()
                                  or (Path(str(model)) / PRETRAINED_CONFIG).is_file()):
            model, weights = None, model
        self.model_name = model
        self.weights = str(resolve_weights(weights)) if weights else None  # a shipped name -> its folder
        self.device_spec = device
        self.overrides = overrides
        self._model = None
        self._post = None
        self._ckpt = None
        self.metrics: dict = {}
        self.run_dir: Path | None = None
        self.skipped: list[str] = []  # unreadable inputs of the last predict()

    # ------------------------------------------------------------------ train
    @key_defaults("train")
    def train(self, data: str | None = None, **kwargs) -> dict:
        check_task_args("train", {"data": data, **self.overrides, **kwargs})
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

    # ------------------------------------------------------------------ shareable weights
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto") -> Detector:
        """A folder written by :meth:`save_pretrained` (``config.json`` + ``model.safetensors``; no pickle)."""
        return cls(model=None, weights=str(path), device=device)

    def save_pretrained(self, out_dir: str | Path, half: bool = False) -> Path:
        """Write ``out_dir/config.json`` (model config, class names, training config) and
        ``out_dir/model.safetensors`` (the weights inference uses; ``half``: in fp16, half the size) -
        :func:`hmpe.engine.checkpoint.save_pretrained`."""
        if not self.weights:
            raise ValueError("no weights: train first, or pass a checkpoint (Detector('best.pt'))")
        self._checkpoint_only("save_pretrained")
        path = save_pretrained(load_checkpoint(self.weights), out_dir, half=half)
        print(f"saved {path / PRETRAINED_CONFIG} and the safetensors weights to {path}")
        return path

    # ------------------------------------------------------------------ shared
    def _ensure_model(self):
        if self._model is None:
            if not self.weights:
                raise ValueError("no weights: train first, or pass a checkpoint (Detector('best.pt'))")
            if is_exported(self.weights):  # run by its runtime, on the CPU
                if self.device_spec not in ("auto", "cpu"):
                    raise ValueError(f"device={self.device_spec}: weights={self.weights} is an exported file, run on "
                                     f"the CPU by its runtime; device= applies to checkpoints")
                self.device = torch.device("cpu")
                self._model, self._post, self._ckpt = load_exported(self.weights)
            else:
                self.device = select_device(self.device_spec)
                self._model, self._post, self._ckpt = load_for_inference(self.weights, self.device)
        return self._model

    def _checkpoint_only(self, task: str) -> None:
        """A ValueError when the weights are an exported file, which ``task`` cannot use."""
        if is_exported(self.weights):
            raise ValueError(f"weights={self.weights}: {task} needs the PyTorch checkpoint (.pt, a pretrained folder "
                             f"or a shipped name), not an exported file")

    def preprocess(self, imgsz: int | None = None) -> Preprocess:
        """The checkpoint's own inference preprocessing (resize or letterbox, :mod:`hmpe.data.preprocess`)."""
        self._ensure_model()
        exported_size = self._ckpt.get("exported") and self._ckpt["train_cfg"]["imgsz"]
        if exported_size and imgsz is not None and int(imgsz) != exported_size:
            raise ValueError(f"imgsz={imgsz}: weights={self.weights} was exported at {exported_size} px; export again "
                             f"with imgsz={imgsz} for another size")
        return Preprocess.from_train_cfg(self._ckpt.get("train_cfg"), imgsz)

    @property
    def names(self) -> list[str]:
        self._ensure_model()
        return list(self._ckpt["names"])

    def slicing(self, slice: int | None, overlap: float | None, task: str = "predict") -> tuple[int | None, float]:
        """(tile size or None for whole images, overlap): ``slice=None`` is the checkpoint's training ``tile`` (a
        tile-trained model is used as it was validated, with its ``tile_overlap``), ``0`` the whole image;
        ``overlap=None`` is the key's default."""
        self._ensure_model()
        tcfg = self._ckpt.get("train_cfg") or {}
        if slice is None and tcfg.get("tile"):
            slice, overlap = tcfg["tile"], tcfg.get("tile_overlap") if overlap is None else overlap
        return (int(slice) if slice else None), defaults(task)["overlap"] if overlap is None else float(overlap)

    # ------------------------------------------------------------------ val
    def val(self, data: str | None = None, **kwargs) -> dict:
        check_task_args("val", {"data": data, **kwargs})
        slice, overlap = self.slicing(kwargs.get("slice"), kwargs.get("overlap"), "val")
        if "conf" in kwargs and not slice:
            print("warning: conf= applies to sliced evaluation (slice=N) only; the COCO evaluation scores every "
                  "detection (max_dets per image), so it is ignored here", file=sys.stderr)
        model = self._ensure_model()
        tcfg = {**default_train_config(), **self._ckpt.get("train_cfg", {}), **kwargs}
        opts = {**defaults("val"), **kwargs}
        split = opts["split"]
        if not data and self._ckpt.get("exported"):
            data = self._ckpt["data"]
            if not data:
                raise ValueError(f"weights={self.weights}: an exported file names no dataset but a shipped one; pass "
                                 f"data=DATA")
        data_cfg = load_data_config(data) if data else checkpoint_data_config(self._ckpt, self.weights)
        data = data or data_cfg["_source"]
        print(f"hmpe val: {data} [{split}] ({format_note(data_cfg)})")
        pre = self.preprocess(kwargs.get("imgsz"))
        ds = build_dataset(data_cfg, split, transforms=pre.transform, skip_bad=tcfg["skip_bad"])
        if list(ds.names) != self.names:
            raise ValueError(f"data {data}: classes {list(ds.names)} differ from the checkpoint's {self.names}")
        loader = DataLoader(ds, batch_size=tcfg["batch"], shuffle=False, num_workers=tcfg["workers"],
                            collate_fn=collate_fn)
        evaluator = COCOEvaluator(ds.samples, self.names, max_dets=tcfg["max_dets"], input_scale=pre.input_scale)
        if slice:  # full images, tiled (hmpe.engine.eval.slicing)
            print(f"sliced: {slice} px tiles, overlap {overlap}" + (" (the checkpoint's training tile; slice=0 for "
                                                                    "whole images)" if not kwargs.get("slice") else ""))
            metrics = evaluate_sliced(model_predict_fn(model, self._post, self.device, pre.imgsz), ds, evaluator,
                                      slice, pre, overlap=overlap, batch=tcfg["batch"], conf=opts["conf"],
                                      merge=opts["merge"], merge_iou=opts["merge_iou"], full_image=opts["full_image"])
        else:
            metrics = evaluate(model, loader, self._post, evaluator, self.device, preprocess=pre)
        print(evaluator.summary_table())  # before anything is written: a failing write cannot lose the figures
        self.metrics = metrics
        # under this working directory (or project=), never the checkpoint's own project: that is a folder of
        # the machine and run that trained it
        run_dir = increment_run_dir(opts["project"], "val", opts["name"], opts["exist_ok"])
        create_run_dir(run_dir)
        if opts["plots"]:
            evaluator.plot(run_dir)
        with open(run_dir / "metrics.json", "w") as f:
            json.dump({k: v for k, v in metrics.items()}, f, indent=2, default=float)
        print(f"results saved to {run_dir}")
        self.run_dir = run_dir
        return metrics

    # ------------------------------------------------------------------ export
    @key_defaults("export")
    def export(self, format: str | None = None, imgsz: int | None = None, opset: int | None = None,
               gather_sampling: bool | None = None, out: str | Path | None = None, check: bool | None = None,
               image: str | Path | None = None, half: bool | None = None, int8: bool | None = None,
               data: str | None = None, calib_images: int | None = None, val_images: int | None = None) -> Path:
        """Export the checkpoint to ONNX or OpenVINO IR (post-processed outputs, dynamic batch; see
        :mod:`hmpe.engine.deploy.export`) and, with ``check``, compare the runtime (onnxruntime / OpenVINO) with
        PyTorch (raises ``ExportParityError`` on a mismatch). ``int8``: also an INT8 file, calibrated on
        ``calib_images`` train images of ``data`` (default: the checkpoint's dataset), and with ``check`` its
        mAP50 beside the fp32 file's on ``val_images`` val images (:mod:`hmpe.engine.deploy.quantize`); returns the
        INT8 path. ``format="safetensors"``: :meth:`save_pretrained` into ``out`` (default: ``<weights
        stem>_pretrained/`` beside the checkpoint), in fp16 with ``half``; the other options do not apply (nor
        ``half`` to ONNX / OpenVINO). An argument left ``None`` is the key's default (``hmpe cfg``)."""
        fmt = str(format).lower()
        check_task_args("export", {"format": fmt, "imgsz": imgsz, "opset": opset, "gather_sampling": gather_sampling,
                                   "out": out, "check": check, "image": image, "half": half, "int8": int8,
                                   "data": data, "calib_images": calib_images, "val_images": val_images})
        if not self.weights:
            raise ValueError("no weights: train first, or pass a checkpoint (Detector('best.pt'))")
        self._checkpoint_only("export")
        src = Path(self.weights)
        q = "_int8" if int8 else ""
        if out is None and shipped_name(src):  # shipped weights: write into the working directory, not the package
            out = {"onnx": f"{src.name}{q}.onnx", "openvino": f"{src.name}{q}_openvino/{src.name}{q}.xml",
                   "safetensors": f"{src.name}_pretrained"}[fmt]
        if fmt == "safetensors":
            if int8:
                raise ValueError("int8=true applies to format=onnx or format=openvino, not to format=safetensors")
            return self.save_pretrained(out or src.with_name(f"{src.stem}_pretrained"), half=bool(half))
        if half:
            raise ValueError(f"half=true applies to format=safetensors (fp16 weights), not to format={fmt}")
        if not int8 and (data is not None or val_images is not None):
            raise ValueError("data= and val_images= apply to int8=true (the calibration and the INT8 check)")
        if int8:
            return export_int8(self.weights, fmt, data=data, calib_images=calib_images, val_images=val_images,
                               imgsz=imgsz, opset=opset, gather_sampling=gather_sampling, out=out, check=check,
                               image=image)
        fn = export_onnx if fmt == "onnx" else export_openvino
        return fn(self.weights, imgsz=imgsz, opset=opset, gather_sampling=gather_sampling, out=out, check=check,
                  image=image)

    def _read(self, path: Path, strict: bool) -> np.ndarray | None:
        """Decode one input (:func:`hmpe.data.images.load_image`); unreadable: a warning and None, or with
        ``strict`` an error naming the file."""
        try:
            return load_image(path)
        except DataError as e:
            if strict:
                raise ValueError(f"{e} (strict=true stops at the first unreadable input)") from None
            print(f"warning: {e}; skipped", file=sys.stderr)
            self.skipped.append(str(path))
            return None

    def _predict_arrays(self, paths: list[Path], images: list[np.ndarray], conf: float, pre: Preprocess, batch: int,
                        slice: int | None, overlap: float, merge: str, merge_iou: float, full_image: bool
                        ) -> list[Prediction]:
        model = self._ensure_model()
        out = []
        if slice:  # one image at a time, its tiles batched
            fn = model_predict_fn(model, self._post, self.device, pre.imgsz)
            for p, im in zip(paths, images):
                b, s, l = sliced_predict(fn, im, int(slice), pre, overlap, batch, conf, merge, merge_iou,
                                         full_image=full_image)
                out.append(Prediction(str(p), im.shape[1], im.shape[0], b.numpy(), s.numpy(), l.numpy(), self.names))
            return out
        shapes = [(im.shape[1], im.shape[0]) for im in images]
        x = torch.stack([pre(im) for im in images]).to(self.device)
        sizes = pre.post_sizes(torch.tensor(shapes)).to(self.device)
        return detections(model(x), self._post, sizes, paths, shapes, conf, self.names)

    def _predict_rasters(self, rasters: list[Path], pre: Preprocess, run_dir: Path | None, max_det: int | None,
                         *opts) -> list[Prediction]:
        """GeoTIFF sources (:mod:`hmpe.engine.eval.raster`, options ``slice, window, bands, overlap, batch, conf,
        merge, merge_iou, full_image``): read window by window, never decoded whole nor drawn; every merged
        detection kept unless ``max_det``. With ``run_dir``: a GeoJSON of each georeferenced raster beside
        ``predictions.json`` (``detections.geojson``; ``<name>.geojson`` each when there are several)."""
        if not rasters:
            return []
        fn = model_predict_fn(self._ensure_model(), self._post, self.device, pre.imgsz)
        geojson = dict(zip(rasters, ["detections.geojson"] if len(rasters) == 1 else output_names(rasters, ".geojson")))
        out = []
        for p in rasters:
            r = predict_raster(fn, p, pre, *opts)
            pred = capped(Prediction(str(p), r.info.width, r.info.height, r.boxes, r.scores, r.labels, self.names),
                          int(max_det or 0))
            if run_dir is not None:
                write_geojson(run_dir / geojson[p], r.info, pred.boxes, pred.scores, pred.labels, self.names)
            out.append(pred)
        return out

    def _predict_images(self, paths: list[Path], pre: Preprocess, run_dir: Path | None, cap: int, strict: bool,
                        conf: float, batch: int, *opts) -> list[Prediction]:
        """Image files, ``batch`` decoded at a time (options ``slice, overlap, merge, merge_iou, full_image``);
        with ``run_dir`` each annotated image is written as soon as it is predicted."""
        drawn = dict(zip(paths, output_names(paths, ".jpg")))
        results = []
        for i in range(0, len(paths), batch):
            read = [(p, self._read(p, strict)) for p in paths[i:i + batch]]
            read = [(p, im) for p, im in read if im is not None]
            if not read:
                continue
            preds = self._predict_arrays([p for p, _ in read], [im for _, im in read], conf, pre, batch, *opts)
            preds = [capped(r, cap) for r in preds]
            for (p, im), r in zip(read, preds):
                if run_dir is not None:
                    draw_detections(Image.fromarray(im), r.boxes, r.labels, r.scores,
                                    r.names).save(run_dir / drawn[p])
            results += preds
        return results

    # ------------------------------------------------------------------ predict
    @key_defaults("predict", keep=("overlap",))
    @torch.no_grad()
    def predict(self, source, conf: float | None = None, imgsz: int | None = None, batch: int | None = None,
                save: bool | None = None, project: str | None = None, name: str | None = None,
                slice: int | None = None, overlap: float | None = None, merge: str | None = None,
                merge_iou: float | None = None, full_image: bool | None = None, strict: bool | None = None,
                max_det: int | None = None, bands: list[int] | None = None, window: int = RASTER_WINDOW
                ) -> list[Prediction]:
        """Detections per image, boxes in original-image pixels (score >= ``conf``, highest scores first),
        with the checkpoint's own preprocessing (resize or letterbox, :class:`hmpe.data.preprocess.Preprocess`).
        An argument left ``None`` is the key's default of ``hmpe predict`` (``hmpe cfg``): ``save`` writes the
        annotated images and ``predictions.json`` to ``<project>/predict/<name>`` unless ``save=False``.

        ``max_det``: detections kept per image; ``None`` (default) keeps :data:`PREDICT_MAX_DET` of a whole
        image and every merged detection of a sliced one; ``0`` keeps all. Each forward pass (the image, or
        with ``slice`` each tile) yields at most the model's ``postprocess.num_top_queries``. A cap that drops
        detections prints a warning naming the image and the counts.

        Unreadable inputs (empty, truncated, not an image) are skipped with a warning naming each; their
        paths are in ``self.skipped`` (``strict=True``: the first one is an error). With ``save``, every
        annotated image is written as soon as it is predicted, then ``predictions.json`` (with ``skipped``).

        ``slice=N`` (sliced inference for large images, :mod:`hmpe.engine.eval.slicing`; ``None``: the checkpoint's
        training ``tile`` if it has one, see :meth:`slicing`; ``0``: whole images): each image is read once
        and cut into N x N tiles overlapping by ``overlap``; ``batch`` tiles per forward pass; detections are
        merged across tiles (border fragments by intersection-over-smaller, then class-wise NMS at IoU
        ``merge_iou``, or ``merge="wbf"``); ``full_image=True`` adds a pass on the whole image.

        Saved images are named after their input (``a.png`` -> ``a.jpg``; inputs sharing a stem keep their
        whole file name, ``a_png.jpg``, see :func:`output_names`); ``predictions.json`` names the inputs.
        GeoTIFFs (georeferenced or huge ``.tif``) come first, read window by window: :meth:`_predict_rasters`."""
        check_task_args("predict", {"conf": conf, "imgsz": imgsz, "batch": batch, "save": save, "project": project,
                                    "name": name, "slice": slice, "merge": merge, "merge_iou": merge_iou,
                                    "full_image": full_image, "strict": strict, "max_det": max_det, "bands": bands,
                                    "window": window} | ({"overlap": overlap} if overlap is not None else {}))
        paths = resolve_source(source)  # before the model loads: a missing source or a URL fails at once
        rasters = raster_sources(paths, bands)  # so does a GeoTIFF without rasterio installed
        pre = self.preprocess(imgsz)
        slice, overlap = self.slicing(slice, overlap)
        cap = int(max_det) if max_det is not None else (0 if slice else PREDICT_MAX_DET)
        self.skipped: list[str] = []
        run_dir = increment_run_dir(project, "predict", name) if save else None
        if run_dir is not None:
            create_run_dir(run_dir)
            self.run_dir = run_dir
        results = self._predict_rasters(rasters, pre, run_dir, max_det, slice, window, bands, overlap, batch, conf,
                                        merge, merge_iou, full_image)
        images = [p for p in paths if p not in rasters]
        results += self._predict_images(images, pre, run_dir, cap, strict, conf, batch, slice, overlap, merge,
                                        merge_iou, full_image)
        if run_dir is not None:
            with open(run_dir / "predictions.json", "w") as f:
                json.dump([r.to_json() for r in results] + [{"image": p, "skipped": "unreadable"}
                                                            for p in self.skipped], f, indent=1)
        return results

    # ------------------------------------------------------------------ heatmap
    @key_defaults("heatmap")
    @torch.no_grad()
    def heatmap(self, source, conf: float | None = None, imgsz: int | None = None, level: int | str | None = None,
                save: bool | None = None, out: str | Path | None = None, project: str | None = None,
                name: str | None = None, dpi: int | None = None) -> list[dict]:
        """Heatmap figures (the paper's Figures 1 and 6): one PNG per image of ``source`` with the input and
        its predicted boxes (score >= ``conf``), then ``H_class``, ``H_bbox``, ``H_mixed``, ``Mask`` (a legend and
        the masked fraction) and one channel of the masked PE, each upsampled to the image (see hmpe.viz.heatmap).

        level: 0 (stride 8, default), 1, 2, or ``"max"`` (per-pixel max over the levels). Figures go to
        ``out`` or ``<project>/heatmap/<name>`` (exp, exp2, ...) as ``<stem>_heatmap.png`` (inputs sharing a
        stem: :func:`output_names`). Returns one dict per image: ``path``,
        ``png`` (None when ``save=False``), ``maps`` (name -> [h,w] array on the model's grid) and
        ``prediction`` (:class:`Prediction`). One image at a time, no hooks, no autograd graph. An argument left
        ``None`` is the key's default (``hmpe cfg``).
        """
        check_task_args("heatmap", {"conf": conf, "imgsz": imgsz, "level": level, "save": save, "out": out,
                                    "project": project, "name": name, "dpi": dpi})
        self._checkpoint_only("heatmap")
        model = self._ensure_model()
        if getattr(model, "heatmap", None) is None:
            raise ValueError(f"{self.weights}: model {self._ckpt['model_cfg'].get('name', '?')!r} has no heatmap "
                             f"path (its model config has `heatmap: null`), so there is no heatmap to show; "
                             f"train a model with one, e.g. model=rtdetr-n-heat")
        if level != "max" and not 0 <= int(level) < model.heatmap.num_levels:
            raise ValueError(f"level={level!r}: expected 0..{model.heatmap.num_levels - 1} or max")
        pre = self.preprocess(imgsz)
        paths = resolve_source(source)
        run_dir = None
        if save:
            run_dir = Path(out) if out else increment_run_dir(project, "heatmap", name)
            create_run_dir(run_dir, "choose a writable folder with out=DIR" if out else None)
            self.run_dir = run_dir
        results = []
        for p, png_name in zip(paths, output_names(paths, "_heatmap.png")):
            arr = self._read(p, strict=True)
            h, w = arr.shape[:2]
            outputs, maps = detector_heatmaps(model, pre(arr)[None].to(self.device), level)
            pred = detections(outputs, self._post, torch.tensor([pre.post_size(w, h)], device=self.device), [p],
                              [(w, h)], conf, self.names)[0]
            png = None
            if save:
                png = run_dir / png_name
                image, boxes = fit_for_display(arr, pred.boxes)
                lv = ("max over levels" if level == "max"
                      else f"level {level} (stride {model.heatmap.strides[int(level)]})")
                render_heatmap_figure(image, boxes, pred.labels, self.names, maps[0], png, dpi=dpi,
                                      title=f"{p.name}: {len(pred.scores)} detections (conf >= {conf}), "
                                            f"heatmaps at {lv}")
            results.append({"path": str(p), "png": png, "maps": maps[0], "prediction": pred})
            del outputs, maps
        return results

    # ------------------------------------------------------------------ explore (interactive, in the browser)
    @key_defaults("explore")
    def explore(self, source, port: int | None = None, host: str | None = None, block: bool = True, **kwargs):
        """Serve the heatmap explorer (:mod:`hmpe.explore`, extra ``hmpe[explore]``) for ``source`` (images,
        or a dataset YAML / name: then with ground truth) on ``host:port``, loopback by default. ``block=False``
        returns the running server (``.url``, ``.stop()``). Keys: ``split``, ``conf``, ``imgsz``, ``floor``,
        ``cache``, ``scan``."""
        from hmpe.explore import serve  # the explorer sits above this module: imported on use only

        table = {k.name for k in TASKS["explore"]}  # other keys go to ExploreSession, which names them
        check_task_args("explore", {"port": port, "host": host, **{k: v for k, v in kwargs.items() if k in table}})
        self._checkpoint_only("explore")
        return serve(self, source, host=host, port=port, block=block, **kwargs)


def make_train_config(args: dict) -> tuple[dict, dict, tuple[str, ...]]:
    """CLI overrides -> (training config, model overrides, the training keys given: on resume those of
    epochs / workers / device replace the checkpoint's, see :class:`hmpe.engine.train.trainer.Trainer`)."""
    check_task_args("train", args)
    model_over, train_over = split_overrides(args)
    return apply_overrides(default_train_config(), train_over), model_over, tuple(train_over)


__all__ = ["Detector", "Prediction", "detections", "load_for_inference", "resolve_source", "make_train_config",
           "load_model_config"]
