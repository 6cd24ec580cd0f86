"""ONNX / OpenVINO export with post-processing inside the graph, and a parity check in the runtime.

    hmpe export weights=best.pt format=onnx [imgsz=... opset=17 gather_sampling=false out=best.onnx]
    hmpe export weights=best.pt format=openvino [imgsz=... out=best_openvino/best.xml]

The exported graph (:class:`ExportWrapper`) takes ``images float32 [B,3,imgsz,imgsz]`` in [0,1], made by the
checkpoint's own preprocessing (:class:`hmpe.data.preprocess.Preprocess`: a square resize, or a letterbox for
models trained with ``augment.keep_ratio=true``; the model's metadata ``preprocess`` / ``keep_ratio`` say which;
no mean/std) and returns, already post-processed:

* ``boxes  float32 [B,K,4]`` xyxy in pixels of the network input (``imgsz`` x ``imgsz``; original-image
  pixels by :meth:`Preprocess.to_original`),
* ``scores float32 [B,K]`` sorted descending,
* ``labels int64   [B,K]`` class indices (0..C-1; the names are in the model's metadata ``names``),

with ``K = min(num_top_queries, queries x classes)`` (RT-DETR: top-K over query x class, no NMS). The
batch axis is dynamic; the spatial size is fixed at export (the anchors are constants of the graph).
Non-tensor model outputs (the HMPE ``heatmap`` entry) are not part of the graph's outputs.

``gather_sampling=true`` replaces every ``F.grid_sample`` (decoder deformable attention, LSConv/DSConv
built with ``sampler="grid_sample"``) with gather-based bilinear sampling
(:func:`hmpe.models.rtdetr.sampling.grid_sample_gather`) for runtimes without ``GridSample``; the switch is
scoped to the export (:func:`hmpe.models.rtdetr.sampling.gather_sampling`).

The exporter is the TorchScript one (``dynamo=False``): the dynamo exporter needs onnxscript, which
is not a dependency. The model is exported in deploy mode (``DetectionModel.fuse()``: BatchNorm folded
into the convs). After writing the file the exporter runs it with onnxruntime on batch 1 and
batch 3 and compares the top detections with PyTorch's (:func:`parity_check`); a disagreement raises
:class:`ExportParityError`.

``format=openvino`` (:func:`export_openvino`) converts that ONNX graph with ``openvino.convert_model``
and writes the OpenVINO IR (``.xml`` + ``.bin``, the metadata in the IR's ``rt_info``), then runs the
same parity check with the OpenVINO CPU runtime (f32 inference precision).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from hmpe.data.images import load_image
from hmpe.data.preprocess import Preprocess
from hmpe.engine.checkpoint import load_for_inference
from hmpe.models.rtdetr.sampling import gather_sampling as gather_ctx
from hmpe.utils.config import default_train_config
from hmpe.utils.keytypes import parse_hw
from hmpe.utils.shipped import shipped_datasets

__all__ = ["BACKENDS", "ExportWrapper", "ExportParityError", "compare_detections", "export_onnx", "export_openvino",
           "onnx_to_openvino", "openvino_at_batch", "openvino_cpu_config", "parity_check", "runtime_session",
           "write_onnx"]

OUTPUT_NAMES = ("boxes", "scores", "labels")


class ExportParityError(RuntimeError):
    """The runtime's (onnxruntime's, OpenVINO's) detections differ from PyTorch's beyond the tolerance."""


class ExportWrapper(nn.Module):
    """``images [B,3,H,W]`` -> ``(boxes [B,K,4] xyxy input pixels, scores [B,K], labels [B,K])``."""

    def __init__(self, model: nn.Module, postprocessor: nn.Module, imgsz: int | tuple[int, int]):
        super().__init__()
        h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
        self.model = model
        self.postprocessor = postprocessor
        # (w, h) of the input; [1,2] broadcasts over the batch (no batch size baked into the graph)
        self.register_buffer("input_size", torch.tensor([[float(w), float(h)]]), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images)
        heads = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}  # tensors only
        return self.postprocessor.forward_batched(heads, self.input_size)


def export_size(ckpt: dict, imgsz=None) -> tuple[int, int]:
    """``(h, w)`` of an export: ``imgsz`` (one size, ``HxW`` or ``[h, w]``), default the checkpoint's training
    size."""
    return parse_hw(imgsz if imgsz is not None else default_train_config(ckpt.get("train_cfg"))["imgsz"])


def compare_detections(ref: tuple[Tensor, ...], got: tuple[Tensor, ...], imgsz: tuple[int, int],
                       top: int = 20) -> dict:
    """Top-``top`` detections of ``ref`` (boxes, scores, labels per batch) against ``got``.

    Each reference detection is matched to the detection of ``got`` (same image, same label, any rank:
    near-tied scores may swap places) with the nearest box. Returns the maxima over images and
    detections of: ``box`` (L_inf distance / input size, i.e. normalised), ``score`` and ``unmatched``
    (reference detections with no same-label counterpart), plus the raw element-wise differences
    ``raw_box_px`` and ``raw_score`` of the two sorted outputs (informative only)."""
    rb, rs, rl = (torch.as_tensor(t) for t in ref)
    gb, gs, gl = (torch.as_tensor(t) for t in got)
    if rb.shape != gb.shape or rs.shape != gs.shape:
        raise ExportParityError(f"output shapes differ: PyTorch {tuple(rb.shape)} vs the runtime's {tuple(gb.shape)}")
    scale = torch.tensor([imgsz[1], imgsz[0], imgsz[1], imgsz[0]], dtype=torch.float32)
    box_err = score_err = 0.0
    unmatched = 0
    for b in range(rb.shape[0]):
        n = min(top, rs.shape[1])
        for i in range(n):
            same = gl[b] == rl[b, i]
            if not bool(same.any()):
                unmatched += 1
                continue
            d = ((gb[b][same] - rb[b, i]).abs() / scale).amax(-1)
            j = int(d.argmin())
            box_err = max(box_err, float(d[j]))
            score_err = max(score_err, abs(float(gs[b][same][j] - rs[b, i])))
        # the ranked score lists must agree too (catches a detection missing from got's top)
        score_err = max(score_err, float((gs[b, :n] - rs[b, :n]).abs().max()) if n else 0.0)
    return {"box": box_err, "score": score_err, "unmatched": unmatched,
            "raw_box_px": float((gb - rb).abs().max()) if rb.numel() else 0.0,
            "raw_score": float((gs - rs).abs().max()) if rs.numel() else 0.0}


def _input_batch(batch: int, imgsz: tuple[int, int], image: str | Path | None, seed: int,
                 pre: Preprocess | None = None) -> Tensor:
    if image is not None:
        arr = load_image(image)
        if imgsz[0] == imgsz[1]:  # the checkpoint's own preprocessing (resize or letterbox)
            x = (pre if pre is not None and pre.imgsz == imgsz[0] else Preprocess(imgsz[0]))(arr)
        else:  # a rectangular export input: the image squashed to H x W
            x = torch.nn.functional.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255,
                                                size=imgsz, mode="bilinear", antialias=True)[0]
        # the real image, then flipped / brightened copies so the batch entries differ
        variants = [x, x.flip(-1), (x * 0.8 + 0.1), x.flip(-2)]
        return torch.stack([variants[i % len(variants)] for i in range(batch)])
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *imgsz, generator=g)


BACKENDS = ("onnxruntime", "openvino")


def runtime_session(path: str | Path, backend: str = "onnxruntime", threads: int | None = None,
                    outputs: Sequence[str] | None = OUTPUT_NAMES):
    """An exported file -> ``run(images np.float32 [B,3,H,W]) -> (boxes, scores, labels)`` numpy arrays
    (``outputs``: these output names in this order; ``None``: every output of the graph).

    ``backend``: ``"onnxruntime"`` (an ``.onnx`` file) or ``"openvino"`` (an ``.xml`` IR or an ``.onnx``
    file, compiled for the CPU); ``threads`` caps the runtime's threads (default: its own choice)."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        names = list(outputs) if outputs is not None else None
        return lambda x: tuple(sess.run(names, {name: x}))
    if backend == "openvino":
        return _openvino_session(path, threads, outputs)
    raise ValueError(f"backend={backend!r}: choose from {', '.join(BACKENDS)}")


def openvino_cpu_config(threads: int | None) -> dict:
    """The CPU plugin's compile config of every hmpe OpenVINO session: ``threads`` (None: its own choice) and f32
    inference precision (the plugin's default is bf16 on CPUs with AMX / AVX512-BF16)."""
    config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def openvino_at_batch(model, batch: int):
    """An OpenVINO ``ov.Model`` whose dynamic batch axis (input 0, axis 0) is fixed at ``batch``: a reshaped copy;
    ``model`` itself when that axis is static (or the rank unknown)."""
    import openvino as ov

    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape[0].is_static:
        return model
    static, fixed = model.clone(), ov.PartialShape(shape)
    fixed[0] = batch
    static.reshape({static.input(0): fixed})
    return static


def _openvino_session(path: str | Path, threads: int | None, outputs: Sequence[str] | None):
    """:func:`runtime_session` for OpenVINO. A file whose batch dimension is dynamic (``hmpe export``'s) is
    compiled once per batch size it is called with, at that size: the CPU plugin's dynamic-shape kernels take
    longer per image than a static compile of the same graph (BENCHMARKS.md section 28)."""
    import openvino as ov

    config = openvino_cpu_config(threads)
    core = ov.Core()
    model = core.read_model(str(path))
    compiled_by_batch: dict[int, tuple] = {}

    def compiled_for(batch: int) -> tuple:
        if batch not in compiled_by_batch:
            compiled = core.compile_model(openvino_at_batch(model, batch), "CPU", config)
            outs = [compiled.output(n) for n in outputs] if outputs is not None else list(compiled.outputs)
            compiled_by_batch[batch] = compiled, outs
        return compiled_by_batch[batch]

    def run(x):
        compiled, outs = compiled_for(int(x.shape[0]))
        res = compiled(x)
        return tuple(res[o] for o in outs)

    return run


def parity_check(onnx_path: str | Path, wrapper: nn.Module, imgsz: tuple[int, int], batches=(1, 3),
                 image: str | Path | None = None, tol: float = 1e-3, top: int = 20, verbose: bool = True,
                 backend: str = "onnxruntime", pre: Preprocess | None = None) -> dict:
    """Run the exported file with ``backend`` (onnxruntime or openvino, CPU) and ``wrapper`` with PyTorch
    on the same input for each batch size; raise :class:`ExportParityError` when a top detection differs
    by more than ``tol`` (boxes: of the normalised input size; scores: absolute) or has no counterpart."""
    run = runtime_session(onnx_path, backend)
    worst: dict = {"box": 0.0, "score": 0.0, "unmatched": 0, "raw_box_px": 0.0, "raw_score": 0.0}
    for n, bs in enumerate(batches):
        x = _input_batch(bs, imgsz, image, seed=n, pre=pre)
        with torch.no_grad():
            ref = tuple(t.cpu() for t in wrapper(x))
        got = tuple(torch.from_numpy(a) for a in run(x.numpy()))
        diff = compare_detections(ref, got, imgsz, top)
        worst = {k: max(worst[k], diff[k]) for k in worst}
        if diff["box"] > tol or diff["score"] > tol or diff["unmatched"]:
            raise ExportParityError(
                f"{onnx_path}: {backend} disagrees with PyTorch at batch {bs}: max box diff {diff['box']:.3e} "
                f"(normalised), max score diff {diff['score']:.3e}, {diff['unmatched']} unmatched top detections "
                f"(tolerance {tol})")
    if verbose:  # the verdict first, in words; the numbers after it
        print(f"parity check PASSED: {backend} matches PyTorch on batch sizes {', '.join(map(str, batches))} "
              f"(top {top} detections: boxes within {worst['box']:.1e} of the input size, scores within "
              f"{worst['score']:.1e}, all matched; tolerance {tol})")
        print(f"  for information: compared slot by slot over all outputs, low-score detections with near-equal "
              f"scores can swap places, which shows as {worst['raw_box_px']:.1f} px / score {worst['raw_score']:.1e} "
              f"there; the matched comparison above is the check")
    return worst


def write_onnx(model: nn.Module, postprocessor: nn.Module, size: tuple[int, int], out: str | Path,
               opset: int = 17, gather_sampling: bool = False, meta: dict | None = None) -> tuple[Path, nn.Module]:
    """An eval-mode detector -> ONNX file at ``out`` (graph of :class:`ExportWrapper`, dynamic batch,
    ``meta`` as metadata properties); returns the path and the wrapper (the PyTorch reference)."""
    import onnx

    if int(opset) < 17:
        raise ValueError(f"opset={opset}: 17 or newer is required (LayerNormalization, GridSample is 16+)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model, postprocessor, size).eval()
    dummy = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))  # batch 2: nothing folds to 1
    dyn = {"images": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}}
    with gather_ctx(model, enabled=bool(gather_sampling)), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints (static spatial sizes by design)
        torch.onnx.export(wrapper, (dummy,), str(out), opset_version=int(opset), dynamo=False,
                          input_names=["images"], output_names=list(OUTPUT_NAMES), dynamic_axes=dyn,
                          do_constant_folding=True)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    if gather_sampling and "GridSample" in {n.op_type for n in proto.graph.node}:
        raise RuntimeError(f"{out}: gather_sampling=true but the graph still has GridSample nodes")
    for k, v in (meta or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(out))
    return out, wrapper


def onnx_to_openvino(onnx_path: str | Path, out: str | Path) -> Path:
    """ONNX file -> OpenVINO IR ``out`` (``.xml`` + ``.bin``, fp32 weights), metadata into ``rt_info``."""
    import onnx
    import openvino as ov

    out = Path(out)
    if out.suffix != ".xml":
        raise ValueError(f"out={out}: an OpenVINO IR path ends in .xml (its weights go to the .bin beside it)")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    ov_model = ov.convert_model(str(onnx_path))
    for e in proto.metadata_props:
        ov_model.set_rt_info(e.value, ["model_info", e.key])
    ov.save_model(ov_model, str(out), compress_to_fp16=False)  # fp32 weights: parity with PyTorch
    return out


def export_onnx(weights: str | Path, imgsz=None, opset: int = 17, gather_sampling: bool = False,
                out: str | Path | None = None, check: bool = True, image: str | Path | None = None,
                tol: float = 1e-3, verbose: bool = True) -> Path:
    """Checkpoint -> ONNX file with post-processed outputs (see the module docstring); returns its path.

    ``imgsz`` defaults to the checkpoint's training size; ``out`` to the checkpoint path with ``.onnx``;
    ``image`` (optional) is a real image for the parity check (default: random input)."""

    if int(opset) < 17:
        raise ValueError(f"opset={opset}: 17 or newer is required (LayerNormalization, GridSample is 16+)")
    weights = Path(weights)
    model, post, ckpt = load_for_inference(weights, torch.device("cpu"))
    size = export_size(ckpt, imgsz)
    out = Path(out) if out else weights.with_suffix(".onnx")
    pre = Preprocess.from_train_cfg(ckpt.get("train_cfg"), size[0])
    meta = {"names": json.dumps(list(ckpt["names"])), "imgsz": json.dumps(list(size)),
            "preprocess": (f"letterbox: scale the longer side to imgsz, pad bottom/right with {pre.pad_fill}; "
                           f"boxes * max(w, h) / imgsz" if pre.keep_ratio else "resize to imgsz x imgsz"),
            "keep_ratio": str(pre.keep_ratio).lower(), "pad_fill": str(pre.pad_fill),
            "outputs": "boxes xyxy input pixels [B,K,4]; scores [B,K]; labels [B,K]",
            "input": "images float32 [B,3,H,W] RGB in [0,1]",
            "gather_sampling": str(bool(gather_sampling)).lower(), "model": str(ckpt["model_cfg"].get("name", ""))}
    source = (ckpt.get("data_cfg") or {}).get("_source")
    if source in shipped_datasets():  # a name that means the same dataset on every machine; never a path
        meta["data"] = source
    out, wrapper = write_onnx(model, post, size, out, opset, gather_sampling, meta)
    if verbose:
        import onnx

        n_gs = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "GridSample")
        print(f"exported {weights} -> {out} ({out.stat().st_size / 2**20:.1f} MB, opset {opset}, input "
              f"[batch,3,{size[0]},{size[1]}], {'gather' if gather_sampling else 'GridSample'} sampling, "
              f"{n_gs} GridSample nodes)")
    if check:
        # reference: the PyTorch model as it runs normally (grid_sample), so the check covers the swap too
        parity_check(out, wrapper, size, image=image, tol=tol, verbose=verbose, pre=pre)
    return out


def export_openvino(weights: str | Path, imgsz=None, opset: int = 17, gather_sampling: bool = False,
                    out: str | Path | None = None, check: bool = True, image: str | Path | None = None,
                    tol: float = 1e-3, verbose: bool = True) -> Path:
    """Checkpoint -> OpenVINO IR (``.xml`` + ``.bin``) with the same graph and outputs as
    :func:`export_onnx`, converted from its ONNX file; returns the ``.xml`` path.

    ``out`` defaults to ``<checkpoint stem>_openvino/<checkpoint stem>.xml`` next to the checkpoint (the
    ultralytics layout); the intermediate ONNX file is written beside the ``.xml``. With ``check``, the IR
    runs in the OpenVINO CPU runtime on batch 1 and 3 against PyTorch (raises :class:`ExportParityError`)."""
    import openvino as ov


    weights = Path(weights)
    out = Path(out) if out else weights.parent / f"{weights.stem}_openvino" / f"{weights.stem}.xml"
    if out.suffix != ".xml":
        raise ValueError(f"out={out}: an OpenVINO IR path ends in .xml (its weights go to the .bin beside it)")
    onnx_path = export_onnx(weights, imgsz=imgsz, opset=opset, gather_sampling=gather_sampling,
                            out=out.with_suffix(".onnx"), check=False, verbose=verbose)
    onnx_to_openvino(onnx_path, out)
    if verbose:
        mb = (out.stat().st_size + out.with_suffix(".bin").stat().st_size) / 2**20
        print(f"converted {onnx_path} -> {out} (+ .bin, {mb:.1f} MB, OpenVINO {ov.get_version().split('-')[0]})")
    if check:
        model, post, ckpt = load_for_inference(weights, torch.device("cpu"))
        size = export_size(ckpt, imgsz)
        wrapper = ExportWrapper(model, post, size).eval()
        pre = Preprocess.from_train_cfg(ckpt.get("train_cfg"), size[0])
        parity_check(out, wrapper, size, image=image, tol=tol, verbose=verbose, backend="openvino", pre=pre)
    return out
