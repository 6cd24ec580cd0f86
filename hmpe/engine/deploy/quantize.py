"""INT8 post-training quantization of the exported graphs, and the fp32-vs-INT8 check on a dataset.

    hmpe export weights=best.pt format=onnx int8=true [data=DATA calib_images=300 val_images=N out=best_int8.onnx]
    hmpe export weights=best.pt format=openvino int8=true [data=DATA ...]     # NNCF: pip install 'hmpe[int8]'

:func:`export_int8` first writes the fp32 file exactly as ``int8=false`` does (with its parity check against
PyTorch), then quantizes it, calibrated on ``calib_images`` training images of ``data`` (evenly spaced over the
split; the checkpoint's own preprocessing, :class:`~hmpe.data.preprocess.Preprocess`, batch 1):

* ``format=onnx``: ONNX Runtime static quantization in the QDQ format (:func:`quantize_onnx`). Only the nodes
  in :data:`ORT_INT8_OPS` (convolutions and matrix products, where the time goes) get QuantizeLinear /
  DequantizeLinear pairs: weights int8, symmetric, per output channel, in 7 bits ([-64, 64]); activations
  uint8, per tensor, MinMax ranges (uint8 activations with int8 weights: the pairing ONNX Runtime recommends for
  x86 CPUs). The 7-bit weights (``reduce_range``) are for x86 CPUs without VNNI (AVX2, AVX-512 without VNNI):
  their 8-bit dot products add pairs of uint8 x int8 products into int16, which saturate with full-range
  weights (docs/method.md, "INT8"). One file then runs alike on every x86 CPU.
* ``format=openvino``: NNCF post-training quantization of the IR (:func:`quantize_openvino`), transformer
  model type: SmoothQuant ahead of the MatMuls, then int8 inputs for the convolutions, matrix products, the
  attention's query-key product and the concatenations between them; activation ranges the min / max over
  all calibration images, as for ONNX Runtime.

Everything else computes in fp32: normalisations, softmax, activations, the heatmap mask's threshold, the sigmoid
scores and the top-K post-processing (an op that reads a tensor a quantized node also reads may get its 8-bit
copy). The deformable sampling and the selections (:data:`FP32_TYPES`: ``GridSample``, or the gathers of
``gather_sampling=true``, whose sub-pixel locations 8 bits would snap to a coarse grid; the query selection's
gathers and top-k) read fp32 inputs in both graphs. The INT8 graph has the fp32 graph's input and outputs
(names, shapes, dtypes) and its metadata, plus ``quantization``.

The check (:func:`int8_check`) runs both files in their runtime over the val split (``val_images`` of them,
evenly spaced; default all) with the same preprocessing and scores them with
:class:`~hmpe.engine.eval.evaluator.COCOEvaluator`.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hmpe.data.dataset import build_dataset
from hmpe.data.formats import DataError, load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.engine.checkpoint import checkpoint_data_config, load_checkpoint
from hmpe.engine.deploy.export import export_onnx, export_openvino, export_size, runtime_session
from hmpe.engine.eval.evaluator import COCOEvaluator
from hmpe.utils.config import default_train_config

__all__ = ["FP32_TYPES", "ORT_INT8_OPS", "MissingExtraError", "SplitImages", "export_int8", "int8_check", "int8_paths",
           "quantize_onnx", "quantize_openvino", "require_int8", "runtime_map50", "runtime_metrics"]

#: ONNX op types that ONNX Runtime quantizes (their inputs and weights); every other node stays fp32
ORT_INT8_OPS = ("Conv", "MatMul", "Gemm")
#: op types that read fp32 inputs in both INT8 graphs: the deformable sampling and the selections
FP32_TYPES = ("GridSample", "Gather", "GatherElements", "TopK")


class MissingExtraError(ImportError, ValueError):
    """A package that an INT8 export needs is not installed (the message names the pip extra; a ValueError
    too, so the command line prints it as one line, exit status 1)."""


def require_int8(fmt: str) -> None:
    """Raise :class:`MissingExtraError` unless the runtime and quantizer of ``format=fmt int8=true`` import."""
    needs = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino", "nncf")}[fmt]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"format={fmt} int8=true needs {', '.join(missing)}: pip install 'hmpe[int8]'")


def int8_paths(weights: Path, fmt: str, out: str | Path | None) -> tuple[Path, Path]:
    """``(int8 file, fp32 file)``: ``out`` (default ``<stem>_int8.onnx`` / ``<stem>_int8_openvino/<stem>_int8.xml``
    beside the checkpoint) and the fp32 export beside it (its name without ``_int8``, else with ``_fp32``)."""
    stem = weights.stem
    default = (f"{stem}_int8.onnx" if fmt == "onnx" else f"{stem}_int8_openvino/{stem}_int8.xml")
    q = Path(out) if out else weights.parent / default
    if q.suffix != (".onnx" if fmt == "onnx" else ".xml"):
        raise ValueError(f"out={q}: format={fmt} writes a {'.onnx' if fmt == 'onnx' else '.xml'} file")
    base = q.stem[: -len("_int8")] if q.stem.endswith("_int8") else f"{q.stem}_fp32"
    return q, q.with_name(base + q.suffix)


class SplitImages(Sequence):
    """``n`` images of a dataset split, evenly spaced over it, preprocessed on access: ``[i] -> float32
    [1,3,imgsz,imgsz]`` (re-iterable: the quantizers read them more than once; nothing is held in memory)."""

    def __init__(self, data_cfg: dict, split: str, pre: Preprocess, n: int | None = None):
        self.dataset = build_dataset(data_cfg, split, transforms=pre.transform)
        total = len(self.dataset)
        if total == 0:
            raise ValueError(f"data {data_cfg.get('_source')}: the {split} split has no images")
        count = total if n is None else max(1, min(int(n), total))
        self.indices = np.unique(np.linspace(0, total - 1, count).round().astype(int)).tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset[self.indices[i]][0][None].numpy()

    def item(self, i: int) -> tuple[np.ndarray, dict]:
        image, target = self.dataset[self.indices[i]]
        return image[None].numpy(), target


def quantize_onnx(fp32: str | Path, out: str | Path, calib: Sequence[np.ndarray]) -> Path:
    """fp32 ONNX file -> QDQ INT8 ONNX file at ``out`` (module docstring), ranges from the ``calib`` inputs
    (``float32 [1,3,H,W]`` each); the fp32 file's metadata is copied."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hmpe-int8-") as tmp:
        prep = Path(tmp) / "prep.onnx"  # shapes inferred and constants folded: the quantizer sees every tensor
        quant_pre_process(str(fp32), str(prep))
        quantize_static(str(prep), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(ORT_INT8_OPS), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, reduce_range=True)
    src, proto = onnx.load(str(fp32), load_external_data=False), onnx.load(str(out))
    _fp32_sampling_and_selection(proto.graph)
    del proto.metadata_props[:]
    for e in src.metadata_props:
        proto.metadata_props.add().CopyFrom(e)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "quantization", (f"int8 QDQ (onnxruntime static): {', '.join(ORT_INT8_OPS)}; "
                                              f"{len(calib)} calibration images")
    onnx.save(proto, str(out))
    return out


def _fp32_sampling_and_selection(graph) -> None:
    """Nodes of :data:`FP32_TYPES` read the fp32 tensor again, not its 8-bit copy: ONNX Runtime's QDQ pass hands
    every consumer of a quantized activation the DequantizeLinear output (e.g. the query selection's
    GatherElements reads the memory that the encoder-output projection also reads). The other consumers keep the
    shared copy: giving them the fp32 tensor too would stop the producers' fusion with their QuantizeLinear, which
    made the whole graph slower than fp32."""
    producer = {o: n for n in graph.node for o in n.output}
    fp32_of = {}  # DequantizeLinear output -> the activation its QuantizeLinear read
    for n in graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            fp32_of[n.output[0]] = q.input[0]
    for n in graph.node:
        if n.op_type in FP32_TYPES:
            for i, name in enumerate(n.input):
                n.input[i] = fp32_of.get(name, name)


def quantize_openvino(fp32_xml: str | Path, out: str | Path, calib: Sequence[np.ndarray]) -> Path:
    """fp32 OpenVINO IR -> INT8 IR at ``out`` by NNCF (module docstring), ranges from the ``calib`` inputs
    (``float32 [1,3,H,W]`` each); :data:`FP32_TYPES` stay fp32."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    out = Path(out)
    model = ov.Core().read_model(str(fp32_xml))
    scope = nncf.IgnoredScope(types=list(FP32_TYPES), validate=False)  # validate: gather_sampling has no GridSample
    # activation ranges: the min / max over all calibration images, as ONNX Runtime's MinMax. NNCF's default
    # (averaged per-image extremes, clipping the rarer large values) cost hmpe-n 0.01 mAP50 on NWPU VHR-10 val,
    # the global extremes 0.001 (docs/method.md, "INT8")
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.WARNING)  # not a line per node left fp32; the progress bars stay
    try:
        q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib),
                          model_type=nncf.ModelType.TRANSFORMER, ignored_scope=scope, advanced_parameters=advanced)
    finally:
        log.setLevel(level)
    q.set_rt_info(f"int8 (NNCF {nncf.__version__}, transformer, min-max ranges); {len(calib)} calibration images",
                  ["model_info", "quantization"])
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return out


@torch.no_grad()
def runtime_metrics(path: str | Path, backend: str, images: SplitImages, pre: Preprocess,
                    max_dets: int = 100) -> dict:
    """The :class:`~hmpe.engine.eval.evaluator.COCOEvaluator` metrics (``mAP50``, ``mAP50_95``, ``AP_small``, ...,
    ``AP_small_input`` at the input ``pre`` makes) of an exported file run by ``backend`` over ``images``, boxes
    mapped back to original pixels."""
    ds = images.dataset
    evaluator = COCOEvaluator([ds.samples[i] for i in images.indices], ds.names, max_dets=max(10, int(max_dets)),
                              input_scale=pre.input_scale)
    run = runtime_session(path, backend)
    for i in range(len(images)):
        x, target = images.item(i)
        boxes, scores, labels = run(x)
        w, h = (int(v) for v in target["orig_size"])
        pred = {"boxes": pre.to_original(torch.from_numpy(boxes[0]), w, h), "scores": scores[0], "labels": labels[0]}
        evaluator.update([target["image_id"]], [pred])
    return evaluator.compute()


def runtime_map50(path: str | Path, backend: str, images: SplitImages, pre: Preprocess, max_dets: int = 100) -> float:
    """mAP50 of an exported file run by ``backend`` over ``images`` (:func:`runtime_metrics`)."""
    return float(runtime_metrics(path, backend, images, pre, max_dets)["mAP50"])


def int8_check(fp32: Path, int8: Path, backend: str, data_cfg: dict, pre: Preprocess, val_images: int | None = None,
               max_dets: int = 100, verbose: bool = True) -> tuple[float, float]:
    """``(mAP50 fp32, mAP50 int8)`` of the two files on the val split of ``data_cfg``; prints the line."""
    images = SplitImages(data_cfg, "val", pre, val_images)
    ref, got = (runtime_map50(p, backend, images, pre, max_dets) for p in (fp32, int8))
    if verbose:
        print(f"int8 check on {_data_name(data_cfg)} val ({len(images)} images): mAP50 fp32 {ref:.3f} -> "
              f"int8 {got:.3f} ({got - ref:+.3f})")
    return ref, got


def _int8_data(ckpt: dict, data, weights: Path) -> dict:
    """The dataset of the calibration and the check: ``data``, else the checkpoint's; a one-line refusal."""
    why = "int8=true calibrates on the dataset's train images and compares fp32 with INT8 mAP50 on its val split"
    try:
        cfg = load_data_config(data) if data else checkpoint_data_config(ckpt, weights)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise ValueError(f"{why}, but no dataset is available ({e}); pass data=PATH/TO/data.yaml") from None
    if list(cfg["names"]) != list(ckpt["names"]):
        raise ValueError(f"data {cfg.get('_source')}: classes {list(cfg['names'])} differ from the checkpoint's "
                         f"{list(ckpt['names'])}; {why}: pass the dataset the model was trained for")
    return cfg


def _data_name(cfg: dict) -> str:
    """A dataset as the printed lines name it: a YAML by its stem, a config given as a mapping by its format."""
    source = str(cfg.get("_source", ""))
    if source.endswith((".yaml", ".yml")):
        return Path(source).stem
    return source if source and not source.startswith("<") else str(cfg.get("format"))


def _size_mb(path: Path) -> float:
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files) / 2**20


def export_int8(weights: str | Path, format: str = "onnx", data=None, calib_images: int = 300,
                val_images: int | None = None, imgsz=None, opset: int = 17, gather_sampling: bool = False,
                out: str | Path | None = None, check: bool = True, image: str | Path | None = None,
                verbose: bool = True) -> Path:
    """Checkpoint -> INT8 ONNX file or OpenVINO IR (module docstring); returns its path. The fp32 export is
    written beside it (:func:`int8_paths`). ``check``: the fp32 parity check and :func:`int8_check`."""
    fmt = str(format).lower()
    require_int8(fmt)
    if int(calib_images) < 1:
        raise ValueError(f"calib_images={calib_images}: at least 1 calibration image is needed")
    weights = Path(weights)
    ckpt = load_checkpoint(weights)
    data_cfg = _int8_data(ckpt, data, weights)
    size = export_size(ckpt, imgsz)
    if size[0] != size[1]:
        raise ValueError(f"imgsz={imgsz}: int8=true calibrates on the checkpoint's square preprocessing; use one size")
    pre = Preprocess.from_train_cfg(ckpt.get("train_cfg"), size[0])
    q_path, fp32_path = int8_paths(weights, fmt, out)
    fn = export_onnx if fmt == "onnx" else export_openvino
    fn(weights, imgsz=size[0], opset=opset, gather_sampling=gather_sampling, out=fp32_path, check=check,
       image=image, verbose=verbose)
    calib = SplitImages(data_cfg, "train", pre, calib_images)
    quantize = quantize_onnx if fmt == "onnx" else quantize_openvino
    quantize(fp32_path, q_path, calib)
    if verbose:
        print(f"quantized {fp32_path} ({_size_mb(fp32_path):.1f} MB) -> {q_path} ({_size_mb(q_path):.1f} MB, int8; "
              f"calibrated on {len(calib)} train images of {_data_name(data_cfg)})")
    if check:
        max_dets = default_train_config(ckpt.get("train_cfg"))["max_dets"]
        int8_check(fp32_path, q_path, "onnxruntime" if fmt == "onnx" else "openvino", data_cfg, pre, val_images,
                   max_dets, verbose)
    return q_path
