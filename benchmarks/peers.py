"""hmpe beside what users would pick instead: ultralytics YOLO11n / RT-DETR-L and HF transformers' D-FINE-N.

Part A (default): speed and size, in one run.

    python benchmarks/peers.py [--imgsz 640] [--rounds 20] [--threads 2] [--nc 80]

  Every model is built from its config with random weights -- nothing is downloaded: the offline
  switches of huggingface_hub / transformers / ultralytics are set before they are imported, and
  every socket connection or DNS look-up raises inside the script (``_common.no_network``), so a
  library that tried to fetch anything would fail the run. Rows:

    hmpe-n, hmpe-s, rtdetr-n     hmpe presets (a row whose preset is missing is skipped, with the
                                 reason); any preset or YAML path with dotted overrides works as a
                                 row: ``--models "rtdetr-n:decoder.num_layers=3,hmpe-n"``
    yolo11n                      ultralytics.nn.tasks.DetectionModel("yolo11n.yaml")
    rtdetr-l                     ultralytics.nn.tasks.RTDETRDetectionModel("rtdetr-l.yaml")
    dfine-n                      transformers DFineForObjectDetection with the D-FINE-N config
                                 (HGNetv2-B0 backbone, S4/S5 only (strides 16/32), hidden 128,
                                 3 decoder layers, depth_mult 0.5, hidden_expansion 0.34), as
                                 transformers' own conversion script sets it for ``dfine_n_coco``

  Each model is timed on the raw module forward (``model(x)``, eval mode, ``no_grad``, batch 1, no
  pre/post-processing, no NMS, no BN fusion), interleaved: every round times each model once, in
  a rotated order, so load from other processes hits all alike; figures are the median / p90 over
  rounds, and speed is compared as ratios within this one run. Params and GFLOPs are counted the
  same way for all (``hmpe.engine.bench``: FlopCounterMode on the same raw forward at batch 1,
  2 FLOPs per multiply-accumulate of convs and matmuls). ``--nc`` (default 80, COCO, so the sizes
  can be checked against the published ones) sets every model's class count.
  Writes ``benchmarks/results/peers.md``.

Part B (``--train``): a same-budget training comparison on NWPU VHR-10 (train split -> val split).

    python benchmarks/peers.py --train [--minutes 35] [--imgsz 512] [--batch 8]

  From scratch, the same minutes of this CPU and the same image size for every model:
    hmpe-n    ``hmpe train`` with ``time_limit=MINUTES`` (the trainer sizes the epochs after the
              first one so that the whole schedule fits); its default recipe, overridable with
              ``--hmpe-args key=value ...``.
    yolo11n   ultralytics' own trainer, schedule and mosaic, with a FIXED epoch count that fits the
              minutes (so its schedule and close_mosaic are not cut short): ``--yolo-epochs N``, or
              calibrated by timing one epoch first (the calibration epoch is not counted).
              Trained on a YOLO-format copy written by ``hmpe data convert`` into the work folder.
    dfine-n   a short loop over the HF model and its built-in loss (``outputs.loss``), with hmpe's
              data pipeline and optimiser recipe (AdamW, warm-up + cosine, grad clip, EMA; the
              training keys of ``--hmpe-args`` -- lr, warmup_iters, augment / mosaic -- apply to it
              too), epochs sized after the first one to fit the minutes, like hmpe's trainer.
  All three are scored by hmpe's COCOEvaluator on the same val samples (faster-coco-eval: P, R at
  the best-F1 confidence, mAP50, mAP50-95, AP_small/medium/large); hmpe-n and D-FINE-N see the val
  images through hmpe's eval transform (square resize), YOLO11n through its own letterbox predictor,
  boxes mapped back to original pixels in both cases. Writes ``benchmarks/results/peers_train.md``.

``--smoke``: a tiny run of the chosen part (64 px inputs, 2 rounds; for ``--train`` a few synthetic
images, one epoch each) that checks the whole path in seconds; its markdown goes to the work
folder, not to ``benchmarks/results``. Rows whose package (ultralytics, transformers: ``pip install
hmpe[peers]``) is missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, SkipRow, command_line, default_datasets_env, fmt, header, load_avg,  # noqa: E402
                     load_hmpe_model_config, md_table, no_network, parse_row_spec, set_offline_env,
                     split_top_level, versions)
from _runtimes import RUNTIMES, deploy, export_raw_onnx, runner  # noqa: E402

set_offline_env()  # before torch / ultralytics / transformers are imported anywhere below

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hmpe.engine.backends import interleaved_times  # noqa: E402
from hmpe.engine.export import onnx_to_openvino  # noqa: E402
from hmpe.engine.bench import (count_gflops, count_params, environment, param_split, peak_forward_memory,  # noqa: E402
                               percentile)

PEER_NAMES = ("yolo11n", "rtdetr-l", "dfine-n")
DEFAULT_MODELS = "hmpe-n,hmpe-s,rtdetr-n,yolo11n,rtdetr-l,dfine-n"
DEFAULT_TRAIN_MODELS = "hmpe-n,yolo11n,dfine-n"


def have(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


def require(pkg: str) -> None:
    if not have(pkg):
        raise SkipRow(f"{pkg} is not installed (pip install 'hmpe[peers]')")


# ------------------------------------------------------------------------------------------------
# model builders (random weights, from configs)
# ------------------------------------------------------------------------------------------------
@dataclass
class Built:
    name: str
    source: str
    model: nn.Module
    forward: Callable | None = None  # forward(model, x); None = model(x)
    levels: str = ""
    notes: list[str] = field(default_factory=list)


def dfine_n_config(num_labels: int, num_queries: int = 300):
    """transformers' DFineConfig sized as D-FINE-N (``dfine_n_coco`` in transformers' conversion script).

    ``num_queries`` below 300 only for smoke runs on tiny inputs (fewer tokens than queries)."""
    from transformers import DFineConfig

    c = DFineConfig()
    b = c.backbone_config  # HGNetV2Config
    b.hidden_sizes = [128, 256, 512, 1024]
    b.layer_type = "basic"
    b.embedding_size = 32
    b.stem_channels = [3, 16, 16]
    b.stage_in_channels = [16, 64, 256, 512]
    b.stage_mid_channels = [16, 32, 64, 128]
    b.stage_out_channels = [64, 256, 512, 1024]
    b.stage_num_blocks = [1, 1, 2, 1]
    b.stage_downsample = [False, True, True, True]
    b.stage_light_block = [False, False, True, True]
    b.stage_kernel_size = [3, 3, 5, 5]
    b.stage_numb_of_layers = [3, 3, 3, 3]
    b.out_indices = [3, 4]  # S4, S5 only: strides 16 and 32
    b.use_learnable_affine_block = True
    c.num_feature_levels = 2
    c.feat_strides = [16, 32]
    c.encoder_in_channels = [512, 1024]
    c.encode_proj_layers = [1]
    c.d_model = 128
    c.encoder_hidden_dim = 128
    c.encoder_ffn_dim = 512
    c.decoder_ffn_dim = 512
    c.decoder_in_channels = [128, 128]
    c.decoder_n_points = [6, 6]
    c.decoder_layers = 3
    c.depth_mult = 0.5
    c.hidden_expansion = 0.34
    c.num_labels = num_labels
    c.num_queries = num_queries
    # from-scratch training as D-FINE's own recipe has it: trainable backbone BatchNorm (transformers'
    # default freezes it, which suits fine-tuning pretrained weights only) and a 0.01 class prior for the
    # score-head biases (transformers' default is 1 / (num_labels + 1))
    c.freeze_backbone_batch_norms = False
    c.initializer_bias_prior_prob = 0.01
    c.id2label = {i: f"class{i}" for i in range(num_labels)}
    c.label2id = {v: k for k, v in c.id2label.items()}
    return c


def hf_forward(model, x):
    return model(pixel_values=x)


SMOKE_QUERIES = 16  # tiny smoke inputs have fewer encoder tokens than 300 queries


def build(spec: str, nc: int, smoke: bool = False) -> Built:
    """One row: a peer name or an hmpe preset / YAML with overrides (``model:key=value,...``)."""
    if spec == "yolo11n":
        require("ultralytics")
        from ultralytics.nn.tasks import DetectionModel

        return Built(spec, f"ultralytics {_v('ultralytics')} DetectionModel('yolo11n.yaml')",
                     DetectionModel("yolo11n.yaml", nc=nc, verbose=False), levels="P3,P4,P5 (8/16/32)")
    if spec == "rtdetr-l":
        require("ultralytics")
        from ultralytics.nn.tasks import RTDETRDetectionModel

        return Built(spec, f"ultralytics {_v('ultralytics')} RTDETRDetectionModel('rtdetr-l.yaml')",
                     RTDETRDetectionModel("rtdetr-l.yaml", nc=nc, verbose=False), levels="S3,S4,S5 (8/16/32)")
    if spec == "dfine-n":
        require("transformers")
        from transformers import DFineForObjectDetection

        return Built(spec, f"transformers {_v('transformers')} DFineForObjectDetection (D-FINE-N config)",
                     DFineForObjectDetection(dfine_n_config(nc, SMOKE_QUERIES if smoke else 300)), hf_forward,
                     levels="S4,S5 (16/32)")
    from hmpe.models.detector import build_model

    model, over = parse_row_spec(spec)
    cfg = load_hmpe_model_config(model, over)
    m = build_model(cfg, nc)
    strides = ",".join(str(s) for s in m.backbone.out_strides)
    return Built(spec, f"hmpe {_v('hmpe')} preset/YAML {model}" + (f" + {over}" if over else ""), m,
                 levels=f"strides {strides}")


def _v(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------------------------------------
# Part A: speed and size, interleaved
# ------------------------------------------------------------------------------------------------
def run_speed(args) -> dict:
    started_load = load_avg()
    nc = args.nc
    specs = [s.strip() for s in _split_models(args.models)]
    built: list[Built] = []
    skipped: list[tuple[str, str]] = []
    attempts: list[str] = []
    with no_network(attempts):
        for spec in specs:
            try:
                torch.manual_seed(0)
                b = build(spec, nc, args.smoke)
                b.model.eval()
                built.append(b)
                print(f"built {spec}: {count_params(b.model) / 1e6:.2f}M params", flush=True)
            except SkipRow as e:
                skipped.append((spec, str(e)))
                print(f"skipped {spec}: {e}", flush=True)
        if not built:
            raise SystemExit("peers.py: no model could be built")
        h = w = args.imgsz
        x = torch.rand(1, 3, h, w)
        info = {}
        for b in built:
            info[b.name] = {
                "params": count_params(b.model), "split": peer_split(b),
                "gflops": count_gflops(b.model, x, b.forward),
                "peak_mem_mb": peak_forward_memory(b.model, x, b.forward),
            }
        deployed, onnx, backend_skipped = _prepare_backends(built, x, args)
        results = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            fns = _runners(built, x, onnx, args.backends, threads)
            with torch.no_grad():
                times = interleaved_times(fns, args.warmup, args.rounds)
            results[threads] = {k: {"median_ms": statistics.median(v) * 1e3, "p90_ms": percentile(v, 0.9) * 1e3,
                                    "times_ms": [t * 1e3 for t in v]} for k, v in times.items()}
    if attempts:
        raise SystemExit(f"peers.py: network access was attempted: {attempts}")
    env = environment()
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": env["cpu"],
              "logical_cpus": env["logical_cpus"], "versions": versions(), "command": command_line(),
              "backends": args.backends, "deployed": deployed, "backend_skipped": backend_skipped,
              "imgsz": args.imgsz, "nc": nc, "rounds": args.rounds, "warmup": args.warmup,
              "models": [{"name": b.name, "source": b.source, "levels": b.levels, **info[b.name]} for b in built],
              "latency": {str(t): v for t, v in results.items()}, "skipped": skipped,
              "load_start": started_load, "load_end": load_avg()}
    md = speed_markdown(report, built, args)
    out = Path(args.out) if args.out else (Path(args.workdir) / "peers.md" if args.smoke else RESULTS / "peers.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    print(md)
    print(f"written to {out}")
    report["markdown"] = str(out)
    return report


def _prepare_backends(built: list[Built], x, args) -> tuple[dict, dict, list]:
    """``--fuse``: each library's deploy fusion; other backends than torch: one raw ONNX file per model."""
    deployed = {b.name: deploy(b.name, b.model) if args.fuse else "as built" for b in built}
    onnx, skipped = {}, []
    if any(k != "torch" for k in args.backends):
        folder = Path(args.workdir) / "onnx"
        for b in built:
            try:
                onnx[b.name] = export_raw_onnx(b.model, b.forward, x, folder / f"{b.name}.onnx")
                if "openvino" in args.backends:  # this run's graph, never an IR left by an earlier run
                    onnx_to_openvino(onnx[b.name], onnx[b.name].with_suffix(".xml"))
            except Exception as e:  # a peer whose graph does not export: its torch row stays
                skipped.append((b.name, f"ONNX export failed: {type(e).__name__}: {str(e)[:300]}"))
                print(f"{b.name}: {skipped[-1][1]}", flush=True)
    return deployed, onnx, skipped


def _runners(built: list[Built], x, onnx: dict, backends: list[str], threads: int) -> dict:
    """``{label: fn}``: ``name`` for the PyTorch forward, ``name@runtime`` for an exported one."""
    fns, xn = {}, x.numpy()
    for b in built:
        fns[b.name] = (lambda b=b: _call(b, x))
        for rt in (k for k in backends if k != "torch" and b.name in onnx):
            fns[f"{b.name}@{rt}"] = (lambda run: lambda: run(xn))(runner(onnx[b.name], rt, threads))
    return fns


def peer_split(b: Built) -> dict[str, int]:
    """backbone / encoder / decoder (or head) parameters, as far as each library's structure allows."""
    m = b.model
    if b.name in ("yolo11n", "rtdetr-l"):  # ultralytics: a flat layer list, the head is the last layer
        layers = list(m.model)
        head = "decoder (RTDETRDecoder)" if b.name == "rtdetr-l" else "head (Detect)"
        return {"backbone + neck/encoder": sum(count_params(l) for l in layers[:-1]), head: count_params(layers[-1]),
                "total": count_params(m)}
    if b.name == "dfine-n":  # HF: model.backbone, model.encoder_input_proj + model.encoder, the rest decodes
        core = m.model
        bb = count_params(core.backbone)
        enc = count_params(core.encoder) + count_params(core.encoder_input_proj)
        total = count_params(m)
        return {"backbone": bb, "encoder": enc, "decoder (+ query selection, heads)": total - bb - enc,
                "total": total}
    return param_split(m)


def _call(b: Built, x):
    return b.forward(b.model, x) if b.forward is not None else b.model(x)


def _split_models(text: str) -> list[str]:
    """Comma-separated rows; commas inside ``[...]``/``{...}`` or after ``:`` within a row stay."""
    rows = split_top_level(text)
    merged: list[str] = []  # a piece that is key=value continues the override list of the row before
    for r in (r.strip() for r in rows if r.strip()):
        if merged and ":" in merged[-1] and "=" in r.split(":")[0]:
            merged[-1] += "," + r
        else:
            merged.append(r)
    return merged


def speed_markdown(report: dict, built: list[Built], args) -> str:
    ref = "hmpe-n" if any(b.name == "hmpe-n" for b in built) else built[0].name
    threads = list(report["latency"])
    extra = [f"input {args.imgsz}x{args.imgsz}, batch 1, {args.nc} classes for every model, random weights "
             f"built from configs (nothing downloaded; every socket connection is refused inside the run)",
             "latency: raw module forward (`model(x)`; HF: `model(pixel_values=x)`), eval mode, no_grad, "
             "no pre/post-processing, no NMS; "
             + ("deploy fusion: " + "; ".join(f"{k}: {v}" for k, v in report["deployed"].items()) + "; "
                if args.fuse else "no BN fusion; ") +
             f"{args.warmup} untimed warm-up calls per model, then {args.rounds} interleaved rounds (each "
             "round times every model once, in a rotated order); median and p90 over rounds; "
             f"torch threads: {', '.join(threads)}",
             "GFLOPs: FlopCounterMode on the same raw forward, batch 1, 2 FLOPs per multiply-accumulate of "
             "convs and matmuls (element-wise ops, softmax and grid_sample not counted, for every model alike)",
             "peak act.: MB of tensors alive at once during one forward (weights and input excluded)",
             "the machine is shared: absolute times depend on its load, the ratios measured in this one run "
             "are the figure to read" + (" (run under `nice -n 10`)" if os.nice(0) > 0 else "")]
    out = [header(f"Peers: speed and size at {args.imgsz} px" + (" (SMOKE)" if args.smoke else ""), extra,
                  report["load_start"]), ""]
    cols = ["model", "built from", "levels", "params (M)", "GFLOPs"]
    for t in threads:
        cols += [f"median ms ({t}T)", f"p90 ms ({t}T)", f"x {ref} ({t}T)"]
    cols += ["peak act. (MB)"]
    rows = []
    for m in report["models"]:
        row = [m["name"], m["source"], m["levels"], f"{m['params'] / 1e6:.2f}", f"{m['gflops']:.2f}"]
        for t in threads:
            lat = report["latency"][t]
            row += [f"{lat[m['name']]['median_ms']:.1f}", f"{lat[m['name']]['p90_ms']:.1f}",
                    f"{lat[m['name']]['median_ms'] / lat[ref]['median_ms']:.2f}"]
        row.append(f"{m['peak_mem_mb']:.0f}")
        rows.append(row)
    out.append(md_table(cols, rows, "lll" + "r" * (len(cols) - 3)))
    split_rows = []
    for m in report["models"]:
        parts = {k: v for k, v in m["split"].items() if k != "total"}
        split_rows.append([m["name"], ", ".join(f"{k} {v / 1e6:.2f}M ({v * 4 / 2**20:.2f} MB)"
                                                for k, v in parts.items())])
    out += ["", "Parameter split (MB = fp32 weights, 2**20 bytes):", "",
            md_table(["model", "split"], split_rows, "ll")]
    names = {m["name"] for m in report["models"]}
    if "hmpe-n" in names:
        lines = []
        for t in threads:
            lat = report["latency"][t]
            for peer, limit in (("rtdetr-l", 0.5), ("dfine-n", 1.2)):
                if peer in names:
                    r = lat["hmpe-n"]["median_ms"] / lat[peer]["median_ms"]
                    lines.append(f"- hmpe-n / {peer} latency ({t} threads): {r:.2f} (target <= {limit}: "
                                 f"{'met' if r <= limit else 'NOT met'})")
        if lines:
            out += ["", "Targets (issue 8):", "", *lines]
    if len(args.backends) > 1:
        out += ["", *backend_markdown(report, args)]
    if report["skipped"]:
        out += ["", "Skipped rows:", ""] + [f"- {s}: {why}" for s, why in report["skipped"]]
    return "\n".join(out) + "\n"


def backend_markdown(report: dict, args) -> list[str]:
    """Per-runtime latency table (same interleaved rounds) and the deployment targets of issue 18."""
    names = [m["name"] for m in report["models"]]
    out = ["Runtimes (raw forward exported to ONNX, opset 17, batch 1; ONNX Runtime CPU provider; OpenVINO IR "
           "converted from the same ONNX file, CPU plugin, f32; each runtime with the thread count of the column; "
           "timed in the same interleaved rounds as the PyTorch rows):", ""]
    for t, lat in report["latency"].items():
        best = {n: min((lat[k]["median_ms"], k.partition("@")[2] or "torch") for k in lat
                       if k.partition("@")[0] == n) for n in names}
        rows = [[n] + [f"{lat[k]['median_ms']:.1f}" if k in lat else "n/a"
                       for k in (n if b == "torch" else f"{n}@{b}" for b in args.backends)]
                + [f"{best[n][0]:.1f} ({best[n][1]})"] for n in names]
        out += [f"{t} threads, median ms:", "",
                md_table(["model", *args.backends, "best deployed"], rows), ""]
        if "hmpe-n" in names and "dfine-n" in names:
            r = lat["hmpe-n"]["median_ms"] / lat["dfine-n"]["median_ms"]
            out.append(f"- hmpe-n (torch{', fused' if args.fuse else ''}) / D-FINE-N (torch) ({t} threads): {r:.2f} "
                       f"(target <= 1.0: {'met' if r <= 1.0 else 'NOT met'})")
        if "hmpe-n" in names and "yolo11n" in names:
            r = best["hmpe-n"][0] / best["yolo11n"][0]
            out.append(f"- hmpe-n best deployed ({best['hmpe-n'][1]}) / YOLO11n best deployed ({best['yolo11n'][1]}) "
                       f"({t} threads): {r:.2f} (target <= 1.5: {'met' if r <= 1.5 else 'NOT met'})")
        out.append("")
    if report["backend_skipped"]:
        out += ["Not exported:", ""] + [f"- {n}: {why}" for n, why in report["backend_skipped"]] + [""]
    return out


# ------------------------------------------------------------------------------------------------
# Part B: same-budget training on NWPU VHR-10
# ------------------------------------------------------------------------------------------------
def smoke_data() -> dict:
    return {"format": "synthetic", "num_train": 8, "num_val": 4, "imgsz": 96, "seed": 0, "overfit": False,
            "min_size": 8, "max_size": 32, "max_objects": 4, "negative_fraction": 0.0,
            "names": ["circle", "square", "triangle", "cross", "ring"]}


def val_dataset(data, imgsz: int):
    from hmpe.data.dataset import build_dataset
    from hmpe.data.formats import load_data_config
    from hmpe.data.preprocess import Preprocess

    return build_dataset(load_data_config(data), "val", transforms=Preprocess(imgsz).transform)


def score_detr_like(model: nn.Module, data, imgsz: int, batch: int, workers: int, forward=None) -> dict:
    """Evaluate a model returning pred_logits / pred_boxes with hmpe's evaluator on the val split."""
    from torch.utils.data import DataLoader

    from hmpe.data.dataset import collate_fn
    from hmpe.engine.evaluator import COCOEvaluator
    from hmpe.engine.trainer import evaluate
    from hmpe.models.postprocess import PostProcessor

    ds = val_dataset(data, imgsz)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate_fn)

    class Adapter(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            o = forward(self.m, x) if forward else self.m(x)
            if hasattr(o, "pred_boxes") and hasattr(o, "logits"):  # HF ModelOutput (dict-like, other keys)
                return {"pred_logits": o.logits, "pred_boxes": o.pred_boxes}
            return o

    ev = COCOEvaluator(ds.samples, list(ds.names), max_dets=100)
    return evaluate(Adapter(model), loader, PostProcessor(len(ds.names), 300), ev, torch.device("cpu"))


def score_yolo(weights: Path, data, imgsz: int, batch: int) -> dict:
    """YOLO predictions (its own letterbox + NMS, conf 0.001, max 100 per image) scored by hmpe's evaluator."""
    import numpy as np
    from ultralytics import YOLO

    from hmpe.engine.evaluator import COCOEvaluator

    ds = val_dataset(data, imgsz)
    ev = COCOEvaluator(ds.samples, list(ds.names), max_dets=100)
    model = YOLO(str(weights))
    for i in range(0, len(ds), batch):
        idx = list(range(i, min(i + batch, len(ds))))
        ims = [np.ascontiguousarray(ds.load(j)[0].permute(1, 2, 0).numpy()[:, :, ::-1]) for j in idx]  # RGB->BGR
        res = model.predict(ims, imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False)
        ev.update([int(ds.samples[j].image_id) for j in idx],
                  [{"boxes": r.boxes.xyxy.cpu(), "scores": r.boxes.conf.cpu(), "labels": r.boxes.cls.long().cpu()}
                   for r in res])
    return ev.compute()


def train_hmpe(spec: str, args, data, workdir: Path) -> dict:
    from hmpe.engine.trainer import Trainer
    from hmpe.utils.config import apply_overrides, default_train_config, parse_overrides, split_overrides

    model, over = parse_row_spec(spec)
    model_cfg = load_hmpe_model_config(model, over)
    cfg = default_train_config()
    cfg.update(model=model, data=data, imgsz=args.imgsz, batch=args.batch, workers=args.workers, device="cpu",
               epochs=args.max_epochs, time_limit=args.minutes, val_interval=10**6, project=str(workdir),
               name=spec.replace(":", "_").replace("/", "_"), exist_ok=True, seed=args.seed, heatmaps_per_epoch=0)
    model_extra, train_extra = split_overrides(parse_overrides(args.hmpe_args))
    cfg.update(train_extra)
    if args.smoke:
        cfg.update(epochs=1, time_limit=None, augment=False, warmup_iters=2)
    model_cfg = apply_overrides(model_cfg, model_extra)
    t0 = time.time()
    trainer = Trainer(cfg, model_cfg)
    metrics = trainer.fit()
    return {"metrics": metrics, "epochs": trainer.epochs, "train_min": (time.time() - t0) / 60,
            "params": count_params(trainer.model), "run_dir": str(trainer.run_dir)}


def ultralytics_data_yaml(data, workdir: Path) -> Path:
    """A YOLO-format copy (``hmpe data convert``) and an ultralytics data YAML with an absolute path."""
    import yaml

    from hmpe.data.tools import data_convert

    out = workdir / "yolo-data"
    if not (out / "data.yaml").exists():
        data_convert(data, "yolo", out, splits=["train", "val"])
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    ul = {"path": str(out.resolve()), "train": cfg["train"], "val": cfg["val"],
          "names": {i: n for i, n in enumerate(cfg["names"])}}
    path = workdir / "ultralytics-data.yaml"
    path.write_text(yaml.safe_dump(ul, sort_keys=False))
    return path


def _ultralytics_no_font_fetch() -> None:
    """ultralytics' dataset check fetches a plotting font from the web even with plots off
    (``check_det_dataset`` -> ``check_font``); nothing is plotted here, so that check is a no-op."""
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.checks as checks

    def no_font(*_args, **_kwargs):
        return None

    data_utils.check_font = no_font
    checks.check_font = no_font


def _ultralytics_threads(n: int) -> None:
    """ultralytics' select_device sets torch threads to min(8, cores - 1) on CPU (1 on a 2-core box);
    give it the same thread count as the other models."""
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = n


def train_yolo(args, data, workdir: Path) -> dict:
    require("ultralytics")
    import csv

    from ultralytics import YOLO

    _ultralytics_no_font_fetch()
    _ultralytics_threads(args.threads[0])

    data_yaml = ultralytics_data_yaml(data, workdir)
    common = dict(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, device="cpu", workers=args.workers,
                  pretrained=False, amp=False, plots=False, val=False, project=str(workdir / "ultralytics"),
                  exist_ok=True, seed=args.seed, deterministic=False, verbose=False)
    # deterministic=False: ultralytics' default switches torch's deterministic algorithms on process-wide
    epochs, calib = args.yolo_epochs, None
    if not epochs:
        if args.smoke:
            epochs = 1
        else:  # one timed epoch with the same settings, then as many epochs as fit the minutes
            t0 = time.time()
            YOLO("yolo11n.yaml").train(epochs=1, name="yolo11n-calibration", **common)
            calib = time.time() - t0
            rows = list(csv.DictReader(open(workdir / "ultralytics" / "yolo11n-calibration" / "results.csv")))
            epoch_s = float(rows[-1].get("time", calib)) if rows else calib
            epochs = max(1, int(args.minutes * 60 // epoch_s))
            print(f"yolo11n: one epoch took {epoch_s:.0f} s -> {epochs} epochs in {args.minutes} min", flush=True)
    t0 = time.time()
    model = YOLO("yolo11n.yaml")
    model.train(epochs=epochs, name="yolo11n", **common)
    minutes = (time.time() - t0) / 60
    weights = workdir / "ultralytics" / "yolo11n" / "weights" / "last.pt"
    metrics = score_yolo(weights, data, args.imgsz, args.batch)
    params = sum(p.numel() for p in YOLO(str(weights)).model.parameters())
    return {"metrics": metrics, "epochs": epochs, "train_min": minutes, "params": params,
            "run_dir": str(weights.parent.parent), "calibration_s": calib}


def train_dfine(args, data, workdir: Path) -> dict:
    """A short loop over the HF D-FINE-N and its built-in loss, hmpe's data pipeline and recipe."""
    require("transformers")
    from torch.utils.data import DataLoader
    from transformers import DFineForObjectDetection

    from hmpe.data.dataset import build_dataset, collate_fn
    from hmpe.data.formats import load_data_config
    from hmpe.data.transforms import build_pipeline
    from hmpe.engine.optim import ModelEMA, lr_factor
    from hmpe.engine.trainer import seed_everything
    from hmpe.utils.config import default_train_config, parse_overrides, split_overrides

    d = default_train_config()
    d.update(split_overrides(parse_overrides(args.hmpe_args))[1])  # the same recipe as hmpe-n's row
    seed_everything(args.seed)
    data_cfg = load_data_config(data)
    tr_t, _, mosaic = build_pipeline(False if args.smoke else d.get("augment", True), args.imgsz)
    train_set = build_dataset(data_cfg, "train", transforms=tr_t, mosaic=mosaic)
    nc = len(train_set.names)
    gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        collate_fn=collate_fn, drop_last=len(train_set) > args.batch, generator=gen)
    model = DFineForObjectDetection(dfine_n_config(nc, SMOKE_QUERIES if args.smoke else 300))
    model.train()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": d["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=d["lr"])
    ema = ModelEMA(model, d["ema_decay"], d["ema_warmup"])
    epochs = 1 if args.smoke else args.max_epochs
    it, t_start, epoch = 0, time.time(), 0
    warmup = 2 if args.smoke else d["warmup_iters"]
    log = []
    while epoch < epochs:
        gen.manual_seed(args.seed + epoch)
        t0, losses = time.time(), []
        for images, targets in loader:
            total = epochs * len(loader)
            f = lr_factor(it, total, min(warmup, total // 2), d["schedule"], d["final_lr_factor"], d["milestones"])
            for g in opt.param_groups:
                g["lr"] = d["lr"] * f
            labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
            out = model(pixel_values=images, labels=labels)
            loss = out.loss
            if not torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                it += 1
                continue
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), d["clip_grad"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model)
            losses.append(loss.item())
            it += 1
        log.append({"epoch": epoch + 1, "loss": statistics.fmean(losses) if losses else float("nan"),
                    "time_s": time.time() - t0})
        print(f"dfine-n epoch {epoch + 1}/{epochs}: loss {log[-1]['loss']:.3f} ({log[-1]['time_s']:.0f} s)",
              flush=True)
        if epoch == 0 and not args.smoke:
            epochs = max(1, int(args.minutes * 60 // max(time.time() - t_start, 1e-6)))
            print(f"dfine-n: first epoch took {time.time() - t_start:.0f} s -> {epochs} epochs in all", flush=True)
        epoch += 1
    minutes = (time.time() - t_start) / 60
    run_dir = workdir / "dfine-n"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": ema.module.state_dict(), "log": log}, run_dir / "last.pt")
    eval_model = ema.module.eval()
    metrics = score_detr_like(eval_model, data, args.imgsz, args.batch, args.workers, hf_forward)
    return {"metrics": metrics, "epochs": epochs, "train_min": minutes, "params": count_params(model),
            "run_dir": str(run_dir)}


def run_train(args) -> dict:
    started_load = load_avg()
    torch.set_num_threads(args.threads[0])
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = smoke_data() if args.smoke else args.data
    results, skipped = {}, []
    attempts: list[str] = []
    with no_network(attempts):
        for spec in _split_models(args.models):
            print(f"=== training {spec} ({args.minutes} min budget, {args.imgsz} px)", flush=True)
            try:
                if spec == "yolo11n":
                    results[spec] = train_yolo(args, data, workdir)
                elif spec == "dfine-n":
                    results[spec] = train_dfine(args, data, workdir)
                elif spec in PEER_NAMES:
                    raise SkipRow(f"{spec} has no training recipe in this script (yolo11n, dfine-n, hmpe presets)")
                else:
                    results[spec] = train_hmpe(spec, args, data, workdir)
            except SkipRow as e:
                skipped.append((spec, str(e)))
                print(f"skipped {spec}: {e}", flush=True)
            gc.collect()
    if attempts:
        raise SystemExit(f"peers.py: network access was attempted: {attempts}")
    report = {"results": results, "skipped": skipped, "load_start": started_load, "load_end": load_avg()}
    md = train_markdown(report, args, data)
    out = Path(args.out) if args.out else (workdir / "peers_train.md" if args.smoke else RESULTS / "peers_train.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} | {"metrics": _plain_metrics(v["metrics"])}
         for k, v in results.items()} | {"_skipped": skipped}, indent=1, default=str))
    print(md)
    print(f"written to {out}")
    report["markdown"] = str(out)
    return report


METRIC_KEYS = ("precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_medium", "AP_large")


def _plain_metrics(m: dict) -> dict:
    return {k: float(m[k]) for k in METRIC_KEYS if k in m}


def train_markdown(report: dict, args, data) -> str:
    extra = [f"data: {data if isinstance(data, str) else 'synthetic (smoke)'}, train split -> scored on the val "
             f"split by hmpe's COCOEvaluator (faster-coco-eval; P and R at the best-F1 confidence, max 100 "
             f"detections per image)",
             f"budget: {args.minutes} min of this CPU per model, from scratch, {args.imgsz} px, batch {args.batch}, "
             f"{args.workers} data workers, torch threads {torch.get_num_threads()}",
             "hmpe-n: hmpe's trainer with time_limit; yolo11n: ultralytics' trainer with a fixed epoch count "
             "fitted to the budget (its own schedule and mosaic); dfine-n: HF D-FINE-N with its built-in loss in "
             "a short loop using hmpe's data pipeline and optimiser recipe"]
    out = [header("Peers: same-budget training" + (" (SMOKE)" if args.smoke else ""), extra,
                  report["load_start"]), ""]
    cols = ["model", "params (M)", "epochs", "train min", "P", "R", "mAP50", "mAP50-95", "AP_S", "AP_M", "AP_L"]
    rows = []
    for name, r in report["results"].items():
        m = r["metrics"]
        rows.append([name, f"{r['params'] / 1e6:.2f}", r["epochs"], f"{r['train_min']:.1f}"]
                    + [fmt(float(m[k])) if k in m else "n/a" for k in METRIC_KEYS])
    out.append(md_table(cols, rows))
    if report["skipped"]:
        out += ["", "Skipped rows:", ""] + [f"- {s}: {why}" for s, why in report["skipped"]]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="Part B: same-budget training comparison on NWPU")
    p.add_argument("--smoke", action="store_true", help="tiny run of the chosen part (seconds)")
    p.add_argument("--models", default=None,
                   help=f"comma-separated rows (default A: {DEFAULT_MODELS}; B: {DEFAULT_TRAIN_MODELS}); "
                        "hmpe rows may carry overrides: 'rtdetr-n:decoder.num_layers=3'")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default A: 640, B: 512; smoke: 64)")
    p.add_argument("--nc", type=int, default=80, help="Part A: classes of every model (default 80, COCO)")
    p.add_argument("--rounds", type=int, default=20, help="Part A: interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="Part A: untimed calls per model first")
    p.add_argument("--threads", default="2", help="torch thread counts, e.g. '2' or '2,1' (Part B: the first)")
    p.add_argument("--backends", default="torch",
                   help="Part A: runtimes, e.g. 'torch,onnxruntime,openvino' (each model exported as raw ONNX)")
    p.add_argument("--fuse", action="store_true",
                   help="Part A: each library's inference fusion first (hmpe / ultralytics fuse(); HF has none)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--minutes", type=float, default=35.0, help="Part B: CPU minutes per model")
    p.add_argument("--data", default="nwpu-vhr10", help="Part B: dataset YAML or shipped name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=1000, help="Part B: cap before the time budget sizes it")
    p.add_argument("--yolo-epochs", type=int, default=0, help="Part B: fixed YOLO epochs (0: calibrate)")
    p.add_argument("--hmpe-args", nargs="*", default=[], help="Part B: key=value overrides for hmpe train")
    p.add_argument("--workdir", default=None, help="runs and converted data (default: a temp dir outside the repo)")
    p.add_argument("--out", default=None, help="markdown output (default benchmarks/results/peers[_train].md)")
    a = p.parse_args(argv)
    a.models = a.models or (DEFAULT_TRAIN_MODELS if a.train else DEFAULT_MODELS)
    if a.smoke:
        a.imgsz = a.imgsz or 64
        a.rounds = min(a.rounds, 2)
        a.warmup = min(a.warmup, 1)
        a.minutes = min(a.minutes, 0.1)
        a.batch = min(a.batch, 4)
        a.workers = 0
    a.imgsz = a.imgsz or (512 if a.train else 640)
    a.threads = [int(t) for t in str(a.threads).split(",") if t.strip()]
    a.backends = ["torch"] + [b for b in (k.strip().lower() for k in a.backends.split(",")) if b and b != "torch"]
    bad = [b for b in a.backends if b not in RUNTIMES]
    if bad:
        p.error(f"--backends {','.join(bad)}: choose from {', '.join(RUNTIMES)}")
    a.workdir = a.workdir or tempfile.mkdtemp(prefix="hmpe-peers-")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(a.workdir) / "ultralytics-config"))
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run_train(args) if args.train else run_speed(args)


if __name__ == "__main__":
    default_datasets_env()
    main()
