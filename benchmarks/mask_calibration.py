"""What the heatmap mask keeps and drops on a trained checkpoint, for several thresholds at once (issue 16).

    python -m benchmarks.mask_calibration --weights runs/train/hmpe-n/weights/last.pt [--data nwpu-vhr10]
        [--imgsz 512] [--split val] [--thresholds absolute:0,0.05,0.1,0.2 quantile:0.3,0.4,0.5,0.6]
        [--score-pool sum mean] [--threads 1] [--out benchmarks/results/mask_calibration.md]

The backbone, the input projection and the heatmap module run once per image (and per ``--score-pool``: how the
Grad-CAM++ score is pooled changes the class maps, not any trained weight); every threshold is then applied to
the same mixed maps (:func:`hmpe.models.heatmap.mask_stats.remask`), so the table costs about one validation pass per
score pooling. Per threshold and level: the fraction of background cells masked and of object cells kept hot,
pooled over the split's images (:class:`hmpe.models.heatmap.mask_stats.MaskStatsAccumulator`, the statistics the
trainer logs as ``mask_bg_masked/S*`` / ``mask_obj_hot/S*``). Target (issue 16): at the attention levels at
least 30 % of background cells masked with at least 95 % of object cells hot.

The masks of a threshold the model was not trained with are what that threshold would keep on these maps; the
detector's accuracy under it is a training question (the ablation rows), not measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hmpe.data.dataset import build_dataset, collate_fn
from hmpe.data.formats import load_data_config
from hmpe.data.preprocess import Preprocess
from hmpe.engine.checkpoint import checkpoint_data_config, load_for_inference
from hmpe.models.heatmap.mask_stats import TAU_MODES, MaskStatsAccumulator, level_names, remask, target_boxes_xyxy
from benchmarks._common import RESULTS, default_datasets_env, header, load_avg, md_table, provenance

TARGET_BG, TARGET_OBJ = 0.30, 0.95


def parse_thresholds(items: list[str]) -> list[tuple[str, float]]:
    """``["absolute:0,0.05", "quantile:0.4"]`` -> ``[("absolute", 0.0), ("absolute", 0.05), ("quantile", 0.4)]``."""
    out = []
    for item in items:
        mode, _, taus = item.partition(":")
        if mode not in TAU_MODES or not taus:
            raise SystemExit(f"--thresholds {item!r}: write MODE:TAU[,TAU...] with MODE one of {', '.join(TAU_MODES)}")
        out += [(mode, float(t)) for t in taus.split(",")]
    return out


@torch.no_grad()
def calibrate(model, loader, thresholds: list[tuple[str, float]], score_pool: str) -> dict:
    """{(mode, tau): {"mask_bg_masked/S5": f, "mask_obj_hot/S5": f, ...}} over ``loader`` with ``score_pool``."""
    model.heatmap.score_pool = score_pool
    stats = {t: MaskStatsAccumulator() for t in thresholds}
    levels = None
    for images, targets in loader:
        feats = model.encoder.project(model.backbone(images))
        heat = model.heatmap(feats, image_size=images.shape[-2:])
        hw = tuple(images.shape[-2:])
        boxes, levels = target_boxes_xyxy(targets, hw), level_names(heat.strides)
        for (mode, tau), acc in stats.items():
            acc.update(remask(heat, tau, mode=mode).mask, boxes, hw)
    return {t: acc.summary(levels) for t, acc in stats.items()}


def markdown(rows: list[dict], args, trained: dict, started_load: str) -> str:
    levels = sorted({k.split("/")[1] for r in rows for k in r["stats"]})
    extra = [f"weights: `{args.weights}` (trained with score_pool {trained['score_pool']}, tau_mode "
             f"{trained['tau_mode']}, tau {trained['tau']}); data {args.data} [{args.split}] at {args.imgsz} px",
             "per level: background cells masked / object cells kept hot, pooled over the images; target: "
             f">= {TARGET_BG:.0%} masked with >= {TARGET_OBJ:.0%} hot at the attention levels"]
    cols = ["score pool", "mode", "tau"] + [f"{lv} bg masked / obj hot" for lv in levels]
    table = [[r["score_pool"], r["mode"], f"{r['tau']:g}"]
             + [f"{r['stats'].get(f'mask_bg_masked/{lv}', float('nan')):.3f} / "
                f"{r['stats'].get(f'mask_obj_hot/{lv}', float('nan')):.3f}" for lv in levels] for r in rows]
    return header("Heatmap mask calibration", extra, started_load) + "\n" + md_table(cols, table, "lll" + "r" * len(levels))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mask_calibration", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="a checkpoint of a model with a heatmap path")
    p.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    p.add_argument("--split", default="val")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--thresholds", nargs="+", default=["absolute:0,0.05,0.1,0.2", "quantile:0.3,0.4,0.5,0.6"])
    p.add_argument("--score-pool", nargs="+", default=["sum", "mean"], choices=["sum", "mean"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "mask_calibration.md", help="markdown; JSON beside it")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started_load = load_avg()
    thresholds = parse_thresholds(args.thresholds)
    model, _, ckpt = load_for_inference(args.weights, torch.device("cpu"), fuse=False)
    if model.heatmap is None:
        raise SystemExit(f"{args.weights}: this model has no heatmap path, so no mask to calibrate")
    args.imgsz = args.imgsz or ckpt.get("train_cfg", {}).get("imgsz", 640)
    data_cfg = load_data_config(args.data) if args.data else checkpoint_data_config(ckpt, args.weights)
    args.data = args.data or data_cfg["_source"]
    ds = build_dataset(data_cfg, args.split, transforms=Preprocess(args.imgsz).transform)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=False, num_workers=0, collate_fn=collate_fn)
    heat = model.heatmap
    trained = {"score_pool": heat.score_pool, "tau_mode": heat.mask_filter.mode, "tau": heat.mask_filter.tau}
    rows = []
    for pool in args.score_pool:
        for (mode, tau), stats in calibrate(model, loader, thresholds, pool).items():
            rows.append({"score_pool": pool, "mode": mode, "tau": tau, "stats": stats})
    md = markdown(rows, args, trained, started_load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    record = {**provenance(), "weights": str(args.weights), "imgsz": args.imgsz, "trained": trained, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(md)
    return rows


if __name__ == "__main__":
    default_datasets_env()
    main()
