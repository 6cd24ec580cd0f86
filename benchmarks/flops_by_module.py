"""GFLOPs of one forward per module of an hmpe model: where a preset's compute goes.

    python -m benchmarks.flops_by_module hmpe-n [backbone.width=0.5 ...] [--nc 10] [--imgsz 640] [--depth 3]
        [--min-share 0.02]

Same convention as ``hmpe bench`` (FlopCounterMode, batch 1, 2 FLOPs per multiply-accumulate of convs and
matmuls). Prints the total, then every module down to ``--depth`` dots below the model whose share of the
total is at least ``--min-share``, in forward order, and last the compute outside every top-level module
entry: the encoder (input projection, AIFI, CCFM), whose parts the detector calls one by one. ``decoder``
is the whole ``RTDETRDecoder`` (input projection, query selection, layers, heads).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import load_hmpe_model_config


@torch.no_grad()
def flops_by_module(model: torch.nn.Module, imgsz: int) -> tuple[float, dict[str, float]]:
    """(total GFLOPs, {module path relative to the model: GFLOPs}) for one eval forward at batch 1."""
    model.eval()
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, imgsz, imgsz))
    prefix = type(model).__name__ + "."  # the counter names modules from the model's class
    parts = {name[len(prefix):]: sum(counts.values()) / 1e9 for name, counts in fc.get_flop_counts().items()
             if name.startswith(prefix)}
    return fc.get_total_flops() / 1e9, parts


def main(argv: list[str] | None = None) -> dict[str, float]:
    from hmpe.models.detector import build_model
    from hmpe.utils.config import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="preset name or model YAML")
    ap.add_argument("overrides", nargs="*", help="dotted model keys, e.g. backbone.width=0.5 decoder.num_queries=200")
    ap.add_argument("--nc", type=int, default=10, help="classes (10: NWPU VHR-10; 80: COCO, as benchmarks.peers)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--depth", type=int, default=3,
                    help="module levels below the model to list (1: backbone, decoder; 3: encoder.fpn_blocks.1)")
    ap.add_argument("--min-share", type=float, default=0.02, help="hide modules below this share of the total")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_cfg = load_hmpe_model_config(args.model, parse_overrides(args.overrides))
    total, parts = flops_by_module(build_model(model_cfg, args.nc), args.imgsz)
    print(f"{' '.join([args.model, *args.overrides])}: {total:.2f} GFLOPs at {args.imgsz}x{args.imgsz}, batch 1, {args.nc} classes")
    for name, g in parts.items():
        if name.count(".") < args.depth and g >= args.min_share * total:
            print(f"  {name:50s} {g:7.2f}  {g / total:6.1%}")
    # the detector calls the encoder's parts one by one, so the encoder has no entry of its own at the top
    rest = total - sum(g for name, g in parts.items() if "." not in name)
    print(f"  {'(not in a top-level module: the encoder)':50s} {rest:7.2f}  {rest / total:6.1%}")
    return parts


if __name__ == "__main__":
    main()
