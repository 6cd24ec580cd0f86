"""LSConv vs DSConv vs a 3x3 conv block at the HGNetv2-B0 stage-3 / stage-4 sizes (640 input).

Usage:  python -m benchmarks.lsconv_bench [--rounds 15] [--inner 3] [--threads 2,1] [--no-backbone]

Reports, per size, relative to the plain 3x3 ConvBNAct block with the same channels:
  * GFLOPs from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate, checked
    below against a hand count; only convolutions and matmuls are counted, so the bilinear sampling
    arithmetic of the snake path is not in the figure);
  * activation bytes saved for backward (``saved_tensors_hooks``, train mode): the K-fold deformed
    tensor of the snake path shows up here;
  * CPU latency of an inference forward (eval, no_grad) and of a training step (forward + backward),
    measured interleaved (A, B, C, A, B, C, ...) so that load from other processes on a shared machine
    hits every block alike; each entry is the median over rounds of the mean of ``--inner`` calls;
    once per thread count in ``--threads`` (default 2, then 1).
Then parameters and GFLOPs of the HGNetv2-B0 backbone (the ``hmpe-n`` backbone) at 640 x 640 with
``strip_conv`` None / dsconv / lsconv (stages 3 and 4, K = 9).

Writes the markdown to stdout and to ``benchmarks/results/lsconv.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from hmpe.engine.deploy import backends
from hmpe.engine.deploy.bench import environment
from hmpe.models.lsconv import DSConv, LSConv, SnakeConv, StripBlock, build_strip_block
from benchmarks._common import command_line, load_avg, utc_stamp

ROOT = Path(__file__).resolve().parents[1]

# HGNetv2-B0 (public config): stage3 in 256 / mid 64 / out 512 at stride 16, stage4 in 512 / mid 128 /
# out 1024 at stride 32; light blocks with a 5x5 depthwise conv. At 640 input: 40 x 40 and 20 x 20.
SIZES = {"stage 3 (B0, stride 16, 640 px)": (64, 40), "stage 4 (B0, stride 32, 640 px)": (128, 20)}


class ConvBNAct(nn.Sequential):
    """Reference: plain kxk conv + BN + ReLU with the same channels."""

    def __init__(self, c: int, k: int = 3, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(c, c, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class LightConv(nn.Sequential):
    """HGNetv2's LightConvBNAct (1x1 conv + BN, 5x5 depthwise + BN + ReLU): the layer LSConv replaces."""

    def __init__(self, c: int, k: int = 5) -> None:
        super().__init__(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), ConvBNAct(c, k, groups=c))


def blocks(c: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "ConvBNAct 3x3 (reference)": lambda: ConvBNAct(c, 3),
        "LightConvBNAct 1x1+dw5x5 (replaced layer)": lambda: LightConv(c, 5),
        "SnakeConv x-morph only (K=9)": lambda: SnakeConv(c, c, 9, morph=0),
        "StripBlock (linear path only)": lambda: StripBlock(c, 9),
        "DSConv (K=9)": lambda: DSConv(c, 9),
        "LSConv (K=9, gather sampler, default)": lambda: LSConv(c, 9, sampler="gather"),
        "LSConv (K=9, grid_sample sampler)": lambda: LSConv(c, 9, sampler="grid_sample"),
    }


def gflops(m: nn.Module, x: Tensor) -> float:
    m.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    return fc.get_total_flops() / 1e9


def check_flop_convention() -> None:
    """FlopCounterMode must count 2 per multiply-accumulate (the field's GFLOPs)."""
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    macs = 16 * 8 * 9 * 10 * 12
    got = gflops(conv, torch.randn(1, 8, 10, 12)) * 1e9
    if got != 2 * macs:
        raise RuntimeError(f"FlopCounterMode counted {got} for {macs} MACs; expected 2 x MACs")


def saved_activation_bytes(m: nn.Module, x: Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (distinct storages), train mode."""
    m.train()
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.layout == torch.strided and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    xi = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(xi).sum()
    return sum(seen.values())


def interleaved_times(fns: list[Callable[[], object]], rounds: int, inner: int) -> list[float]:
    """Median over rounds of the mean seconds per call of each function: hmpe's interleaved timing (rotated order,
    two warm-up samples each: allocator, oneDNN primitive caches) with ``inner`` calls per timed sample."""
    batched = {str(i): (lambda f=f: [f() for _ in range(inner)]) for i, f in enumerate(fns)}
    times = backends.interleaved_times(batched, warmup=2, runs=rounds)
    return [statistics.median(times[str(i)]) / inner for i in range(len(fns))]


def bench_size(c: int, hw: int, rounds: int, inner: int, threads: list[int]) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(1, c, hw, hw)
    mods = {name: make() for name, make in blocks(c).items()}
    rows = []
    for name, m in mods.items():
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in m.parameters()),
                "gflops": gflops(m, x),
                "saved": saved_activation_bytes(m, x),
            }
        )

    def infer(m: nn.Module) -> Callable[[], object]:
        def f() -> object:
            with torch.no_grad():
                return m(x)

        return f

    def train_step(m: nn.Module) -> Callable[[], object]:
        xt = x.clone().requires_grad_(True)

        def f() -> object:
            m.zero_grad(set_to_none=True)
            m(xt).square().mean().backward()

        return f

    for n in threads:
        torch.set_num_threads(n)
        for m in mods.values():
            m.eval()
        t_inf = interleaved_times([infer(m) for m in mods.values()], rounds, inner)
        for m in mods.values():
            m.train()
        t_train = interleaved_times([train_step(m) for m in mods.values()], max(3, rounds // 2), inner)
        for r, ti, tt in zip(rows, t_inf, t_train):
            r[("infer", n)], r[("train", n)] = ti, tt
    return rows


def backbone_rows(threads: list[int], imgsz: int = 640, rounds: int = 5) -> list[dict] | None:
    try:
        from hmpe.models.rtdetr.backbone import HGNetv2
    except ImportError:
        return None
    variants = {"none (baseline)": None, "dsconv": "dsconv", "lsconv": "lsconv"}
    x = torch.rand(1, 3, imgsz, imgsz)
    rows, nets = [], []
    for label, kind in variants.items():
        cfg = None if kind is None else {"kind": kind, "stages": [3, 4], "kernel_size": 9}
        try:
            net = HGNetv2("B0", return_idx=(1, 2, 3), strip_conv=cfg, strip_factory=build_strip_block).eval()
        except TypeError:
            return None
        nets.append(net)
        rows.append({"name": label, "params": sum(p.numel() for p in net.parameters()), "gflops": gflops(net, x)})

    def infer(net: nn.Module) -> Callable[[], object]:
        def f() -> object:
            with torch.no_grad():
                return net(x)

        return f

    for n in threads:
        torch.set_num_threads(n)
        times = interleaved_times([infer(net) for net in nets], rounds, 1)
        for r, t in zip(rows, times):
            r[("infer", n)] = t
    return rows


def render(results: dict[str, list[dict]], bb: list[dict] | None, args: argparse.Namespace) -> str:
    return "\n".join(_header_lines(args) + _block_lines(results, args.threads) + _backbone_lines(bb, args.threads))


def _header_lines(args: argparse.Namespace) -> list[str]:
    threads = args.threads
    return [
        "# LSConv benchmark",
        "",
        f"- date: {utc_stamp()}",
        f"- CPU: {environment()['cpu']} ({os.cpu_count()} logical CPUs), torch.set_num_threads(n) for n in {threads}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `{command_line()}`",
        f"- load average before / after the run: {args.load_before} / {load_avg()} (the machine is shared:",
        "  absolute times are noisy, the interleaved ratios are the figure to read; with 2 threads on a",
        "  loaded 2-core box every parallel region waits for a descheduled thread, so the 1-thread ratios",
        "  are the steadier ones)",
        "- GFLOPs: FlopCounterMode (2 x MACs, convs and matmuls only; the sampling arithmetic is not counted).",
        "  Saved act.: bytes of the tensors autograd keeps for backward (train mode, distinct storages;",
        "  mostly activations, plus weight copies where an op saves one).",
        f"- Latency: batch 1, median over {args.rounds} interleaved rounds (train: {max(3, args.rounds // 2)}) "
        f"of the mean of {args.inner} calls; infer = eval forward under no_grad, train = forward + backward.",
        "",
    ]


def _block_lines(results: dict[str, list[dict]], threads: list[int]) -> list[str]:
    lines = []
    for size, rows in results.items():
        c, hw = SIZES[size]
        ref = rows[0]
        head = "| block | params | GFLOPs | x3x3 | saved act. (MB) | x3x3 |"
        sep = "| --- | ---: | ---: | ---: | ---: | ---: |"
        for n in threads:
            head += f" infer {n}T (ms) | x3x3 | train {n}T (ms) | x3x3 |"
            sep += " ---: | ---: | ---: | ---: |"
        lines += [f"## {size}: [1, {c}, {hw}, {hw}]", "", head, sep]
        for r in rows:
            line = (
                f"| {r['name']} | {r['params']:,} | {r['gflops']:.4f} | {r['gflops'] / ref['gflops']:.2f} | "
                f"{r['saved'] / 2**20:.2f} | {r['saved'] / ref['saved']:.1f} |"
            )
            for n in threads:
                ti, tt = r[("infer", n)], r[("train", n)]
                line += (
                    f" {ti * 1e3:.2f} | {ti / ref[('infer', n)]:.1f} | {tt * 1e3:.2f} | {tt / ref[('train', n)]:.1f} |"
                )
            lines.append(line)
        lines.append("")
    return lines


def _backbone_lines(bb: list[dict] | None, threads: list[int]) -> list[str]:
    lines = []
    if bb is not None:
        base = bb[0]
        head = "| strip_conv | params (M) | x base | GFLOPs | x base |"
        sep = "| --- | ---: | ---: | ---: | ---: |"
        for n in threads:
            head += f" infer {n}T (ms) | x base |"
            sep += " ---: | ---: |"
        lines += [
            "## HGNetv2-B0 backbone (the hmpe-n backbone), 640 x 640, batch 1",
            "",
            "Strip block in place of the last light conv (mid -> mid) of the last HG block of stages 3 and 4 "
            "(K = 9); backbone returns S3, S4, S5. Latency: median of 5 interleaved rounds.",
            "",
            head,
            sep,
        ]
        for r in bb:
            line = (
                f"| {r['name']} | {r['params'] / 1e6:.3f} | {r['params'] / base['params']:.3f} | {r['gflops']:.3f} | "
                f"{r['gflops'] / base['gflops']:.3f} |"
            )
            for n in threads:
                line += f" {r[('infer', n)] * 1e3:.1f} | {r[('infer', n)] / base[('infer', n)]:.2f} |"
            lines.append(line)
        lines.append("")
    else:
        lines += ["(backbone rows skipped: `hmpe.models.rtdetr.backbone.HGNetv2` with `strip_conv` not available)", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts to time with")
    ap.add_argument("--no-backbone", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lsconv.md"))
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in str(args.threads).split(",")]
    args.load_before = load_avg()
    torch.set_num_threads(args.threads[0])
    check_flop_convention()
    gc.disable()  # no collector pauses inside the timed loops (nothing cyclic is created)
    try:
        results = {size: bench_size(c, hw, args.rounds, args.inner, args.threads) for size, (c, hw) in SIZES.items()}
        bb = None if args.no_backbone else backbone_rows(args.threads)
    finally:
        gc.enable()
    md = render(results, bb, args)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
