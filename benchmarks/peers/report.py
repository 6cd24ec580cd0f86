"""Reports of the peers benchmark: the markdown tables of Part A (speed, runtimes) and Part B (training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from benchmarks._common import fmt, header, md_table, size_counts_note
from benchmarks.peers.models import Built

# issue 33's latency targets: fused torch hmpe-n / D-FINE-N, best deployed hmpe-n / best deployed YOLO11n
TORCH_VS_DFINE = 1.0
DEPLOYED_VS_YOLO = 1.2


def write_report(out: Path, md: str, data: dict) -> None:
    """``out`` (markdown) and the same name with ``.json`` beside it; the markdown is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(md)
    print(f"written to {out}")


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
             "round times every model once, in a rotated order"
             + (f", each timed call after {args.settle} untimed call(s) of the same model" if args.settle else "")
             + "); median and p90 over rounds; "
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
            # issue 8: rtdetr-l; issue 33 replaced issue 8's D-FINE-N target (1.2) by TORCH_VS_DFINE
            for peer, limit in (("rtdetr-l", 0.5), ("dfine-n", TORCH_VS_DFINE)):
                if peer in names:
                    r = lat["hmpe-n"]["median_ms"] / lat[peer]["median_ms"]
                    lines.append(f"- hmpe-n (torch{', fused' if args.fuse else ''}) / {peer} (torch) latency "
                                 f"({t} threads): {r:.2f} (target <= {limit}: {'met' if r <= limit else 'NOT met'})")
        if lines:
            out += ["", "Targets (rtdetr-l: issue 8; dfine-n: issue 33):", "", *lines]
    if len(args.backends) > 1:
        out += ["", *backend_markdown(report, args)]
    if report["skipped"]:
        out += ["", "Skipped rows:", ""] + [f"- {s}: {why}" for s, why in report["skipped"]]
    return "\n".join(out) + "\n"


def backend_markdown(report: dict, args) -> list[str]:
    """Per-runtime latency table (same interleaved rounds) and issue 33's deployment target."""
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
        if "hmpe-n" in names and "yolo11n" in names:
            r = best["hmpe-n"][0] / best["yolo11n"][0]
            out.append(f"- hmpe-n best deployed ({best['hmpe-n'][1]}) / YOLO11n best deployed ({best['yolo11n'][1]}) "
                       f"({t} threads): {r:.2f} (target <= {DEPLOYED_VS_YOLO}: "
                       f"{'met' if r <= DEPLOYED_VS_YOLO else 'NOT met'})")
        out.append("")
    if report["backend_skipped"]:
        out += ["Not exported:", ""] + [f"- {n}: {why}" for n, why in report["backend_skipped"]] + [""]
    return out


METRIC_KEYS = ("precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_medium", "AP_large", "AP_small_input")


def plain_metrics(m: dict) -> dict:
    """The detection metrics, the objects per size bucket (``n_small``, ... ``n_large_input``) and, for heatmap
    models, the mask diagnostics (``mask_bg_masked/S5``, ...)."""
    return {k: float(v) for k, v in m.items() if k in METRIC_KEYS or k.startswith(("mask_", "n_"))}


def train_markdown(report: dict, args, data) -> str:
    extra = [f"data: {data if isinstance(data, str) else 'synthetic (smoke)'}, train split -> scored on the val "
             f"split by hmpe's COCOEvaluator (faster-coco-eval; P and R at the best-F1 confidence, max 100 "
             f"detections per image)",
             f"budget: {args.minutes} min of this CPU per model, from scratch, {args.imgsz} px, batch {args.batch}, "
             f"{args.workers} data workers, torch threads {torch.get_num_threads()}",
             "hmpe-n: hmpe's trainer with time_limit; yolo11n: ultralytics' trainer with a fixed epoch count "
             "fitted to the budget (its own schedule and mosaic); dfine-n: HF D-FINE-N with its built-in loss, trained "
             "by hmpe's Trainer (ModelParts: the same loop, data pipeline, optimiser recipe and time_limit)"]
    note = size_counts_note([(name, r["metrics"]) for name, r in report["results"].items()])
    extra += [note] if note else []
    out = [header("Peers: same-budget training" + (" (SMOKE)" if args.smoke else ""), extra,
                  report["load_start"]), ""]
    cols = ["model", "params (M)", "epochs", "train min", "P", "R", "mAP50", "mAP50-95", "AP_S", "AP_M", "AP_L",
            "AP_S in"]
    rows = []
    for name, r in report["results"].items():
        m = r["metrics"]
        rows.append([name, f"{r['params'] / 1e6:.2f}", r["epochs"], f"{r['train_min']:.1f}"]
                    + [fmt(float(m[k])) if k in m else "n/a" for k in METRIC_KEYS])
    out.append(md_table(cols, rows))
    if report["skipped"]:
        out += ["", "Skipped rows:", ""] + [f"- {s}: {why}" for s, why in report["skipped"]]
    return "\n".join(out) + "\n"
