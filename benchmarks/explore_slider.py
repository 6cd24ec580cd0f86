"""How fast `hmpe explore` answers its sliders (issue 19: each update under 300 ms for a 640 px image, 2 cores).

Usage:  python -m benchmarks.explore_slider --weights best.pt --image IMG [--side 640] [--threads 2]
                                            [--moves 20] [--chromium /usr/bin/chromium] [--out FILE]

The image is resized so that its longer side is ``--side`` px and explored at ``imgsz = --side``: the maps
are then on an 80 x 80 grid at stride 8 and the overlays are ``side`` px wide. The explorer runs in this
process (torch with ``--threads`` threads), Debian's Chromium loads the page (headless, driven by
playwright), and the mask-threshold slider is clicked to ``--moves`` positions, then the gate slider (learned
gate off) to as many; then the level and the class of H_class are chosen a few times. One update = the page's own measure: from the slider's input event to the new mask,
|PE'| and H_mixed overlays decoded and the statistics written (``#update-ms``), which includes the
server's part (re-mask, maps, upsampling, colouring, PNG encoding: ``server_ms``). The first forward of the
image (model, post-processing, the maps) is timed once.

Writes the markdown to stdout and to ``benchmarks/results/explore_slider.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks._common import RESULTS, header, load_avg, md_table

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _move(page, slider: str, frac: float) -> tuple[float, float]:
    """Click ``slider`` at ``frac`` of its width; wait for the page's update; (page ms, server ms)."""
    seq = int(page.evaluate("document.body.dataset.seq || 0"))
    before = page.input_value(slider)
    box = page.locator(slider).bounding_box()
    page.mouse.click(box["x"] + frac * box["width"], box["y"] + box["height"] / 2)
    if page.input_value(slider) == before:  # the click landed on the current value: no input event, step instead
        page.keyboard.press("ArrowRight" if float(before) < 0.5 else "ArrowLeft")
    page.wait_for_function(f"document.body.dataset.seq > {seq} && !document.querySelector('#status').textContent",
                           timeout=60_000)
    text = page.inner_text("#update-ms")  # "123 (server 45.6)"
    total, server = re.match(r"(\d+) \(server ([\d.]+)\)", text).groups()
    return float(total), float(server)


def _select(page, select: str, value: str) -> tuple[float, float]:
    """Choose ``value`` in the ``select`` element; wait for the page's update; (page ms, server ms)."""
    seq = int(page.evaluate("document.body.dataset.seq || 0"))
    page.select_option(select, value)
    page.wait_for_function(f"document.body.dataset.seq > {seq} && !document.querySelector('#status').textContent",
                           timeout=60_000)
    total, server = re.match(r"(\d+) \(server ([\d.]+)\)", page.inner_text("#update-ms")).groups()
    return float(total), float(server)


def _summary(name: str, v: list[float]) -> list:
    v = sorted(v)
    return [name, len(v), f"{statistics.median(v):.0f}", f"{v[int(0.9 * (len(v) - 1))]:.0f}", f"{v[-1]:.0f}"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--out", default=str(RESULTS / "explore_slider.md"))
    ap.add_argument("--screenshot", default="runs/explore_slider/page.png", help="the page's last state (PNG)")
    return ap


def _drive(url: str, args, tmp: Path) -> tuple[float, dict[str, list[tuple[float, float]]]]:
    """The page in headless Chromium: (first load s, {control: [(page ms, server ms)] per update})."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=args.chromium,
                                                    args=FLAGS, viewport={"width": 1600, "height": 1200})
        page = ctx.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("document.body.dataset.seq >= 1", timeout=300_000)
        first = time.perf_counter() - t0
        fracs = [0.05 + 0.9 * ((k * 7) % args.moves) / args.moves for k in range(args.moves)]
        moves = {"tau": [_move(page, "#tau", fr) for fr in fracs]}
        page.click("#gate-learned")
        page.wait_for_function("!document.querySelector('#status').textContent")
        moves["gate"] = [_move(page, "#gate", fr) for fr in fracs]
        moves["levels"] = [_select(page, "#level", v) for v in ["1", "2", "max", "0"]]  # all five maps re-rendered
        moves["classes"] = [_select(page, "#cls", str(c)) for c in range(4)]  # H_class of that class, then re-mask
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.screenshot, full_page=True)
        ctx.close()
    return first, moves


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hmpe.api import Detector

    torch.set_num_threads(args.threads)
    start_load = load_avg()
    tmp = Path(tempfile.mkdtemp(prefix="explore_bench_"))
    im = Image.open(args.image).convert("RGB")
    f = args.side / max(im.size)
    im = im.resize((round(im.width * f), round(im.height * f)), Image.BILINEAR)
    (tmp / "img").mkdir()
    im.save(tmp / "img" / (Path(args.image).stem + ".png"))
    server = Detector(args.weights, device="cpu").explore(str(tmp / "img"), port=0, block=False, imgsz=args.side)
    try:
        first, m = _drive(server.url, args, tmp)
    finally:
        server.stop()
    rows = [_summary("mask threshold: page update", [t for t, _ in m["tau"]]),
            _summary("mask threshold: server part", [s for _, s in m["tau"]]),
            _summary("gate: page update", [t for t, _ in m["gate"]]),
            _summary("gate: server part", [s for _, s in m["gate"]]),
            _summary("level (1, 2, max, 0): page update", [t for t, _ in m["levels"]]),
            _summary("H_class of a chosen class (4 classes): page update", [t for t, _ in m["classes"]])]
    text = header("hmpe explore: slider update time", [
        f"image: {args.image} resized to {im.width}x{im.height}, imgsz {args.side}, weights {args.weights}",
        f"torch threads: {args.threads}; Chromium: {args.chromium} (headless, same machine)",
        f"first load of the page, including the image's one forward: {first:.2f} s"], started_load=start_load)
    text += "\n" + md_table(["slider", "updates", "median ms", "p90 ms", "max ms"], rows)
    text += f"\nscreenshot of the last state: {args.screenshot}\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
