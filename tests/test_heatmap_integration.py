"""The heatmap path inside the detector, end to end (issue 4): a short synthetic training run makes
``H_mixed`` hot on held-out objects, the trainer writes per-epoch heatmap figures, ``hmpe heatmap``
renders figures with the image's aspect and colour bars, memory stays flat over many images, and with
the path switched off the model is exactly the baseline.

One tiny detector with the heatmap path is trained once for the whole module (about 20-30 s on two idle
cores); the other tests reuse it and its checkpoint.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SYNTHETIC_NAMES, tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.cli import main as cli_main
from hmpe.data.synthetic import SyntheticDataset
from hmpe.engine.train.trainer import Trainer
from hmpe.models.detector import build_model
from hmpe.utils.config import apply_overrides, load_model_config
from test_heatmap import _colourbar_count, _live_objects

NUM_TRAIN, EPOCHS = 32, 10  # batch 4: 80 steps over 32 distinct images (8 images x 40 epochs: 3.0-5.0x)
NUM_VAL = 16  # held-out images (the val stream of the synthetic data, not the training images)
LEVEL = 0  # the ratio is asserted on the stride-8 level: the tiny data's objects (10-32 px) live there
MAP_NAMES = ["H_class", "H_bbox", "H_mixed", "Mask", "PE'"]
COLOUR_BARS = len(MAP_NAMES) - 1  # the binary mask has a legend instead


def tiny_heat_cfg(**heat) -> dict:
    cfg = tiny_model_cfg()
    cfg["name"] = "tiny-heat"
    cfg["heatmap"] = {"tau": 0.05, **heat}  # the module's defaults (cam_weights: gradcam++, bbox_heat: quality, ...)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """128 px images, batch 4: a second intra-op thread gains little when idle and, on a loaded 2-core
    machine, makes every parallel region wait (spinning) for a descheduled thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _one_thread):
    tmp = tmp_path_factory.mktemp("heat")
    cfg = tiny_train_cfg(tmp, data=tiny_data(num_train=NUM_TRAIN, num_val=NUM_VAL, overfit=False), epochs=EPOCHS,
                         val_interval=EPOCHS // 2, heatmaps_per_epoch=2)
    trainer = Trainer(cfg, tiny_heat_cfg())
    trainer.fit()
    return trainer


def _inside_outside(h: torch.Tensor, boxes_cxcywh: torch.Tensor, imgsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of a [H,W] map at cells whose centre lies inside any ground-truth box, and the others."""
    H, W = h.shape
    sy, sx = imgsz / H, imgsz / W
    yy, xx = torch.meshgrid((torch.arange(H) + 0.5) * sy, (torch.arange(W) + 0.5) * sx, indexing="ij")
    inside = torch.zeros(H, W, dtype=torch.bool)
    for cx, cy, w, bh in (boxes_cxcywh * imgsz).tolist():
        inside |= (xx > cx - w / 2) & (xx < cx + w / 2) & (yy > cy - bh / 2) & (yy < cy + bh / 2)
    return h[inside], h[~inside]


def test_h_mixed_hot_inside_heldout_boxes(trained):
    model = trained.model.eval()
    ins, outs = {l: [] for l in range(3)}, {l: [] for l in range(3)}
    with torch.no_grad():
        for i in range(len(trained.val_set)):
            x, t = trained.val_set[i]
            heat = model(x[None])["heatmap"]
            for l in range(3):
                a, b = _inside_outside(heat.h_mixed[l][0, 0], t["boxes"], x.shape[-1])
                ins[l].append(a), outs[l].append(b)
    ratios = {l: float(torch.cat(ins[l]).mean() / torch.cat(outs[l]).mean()) for l in range(3)}
    assert sum(len(v) for v in ins[LEVEL]) > 0
    print("mean H_mixed inside / outside ground-truth boxes, held-out images, by level:",
          {l: round(r, 2) for l, r in ratios.items()})
    # pooled over the held-out images: mean H_mixed in cells inside boxes vs all other cells
    assert ratios[LEVEL] >= 3.0, ratios


def test_trainer_writes_heatmap_figures_per_validated_epoch(trained):
    folder = trained.run_dir / "heatmaps"
    written = sorted(p.name for p in folder.glob("*.png"))
    assert written == sorted(f"epoch{e}_{i}.png" for e in (EPOCHS // 2, EPOCHS) for i in (0, 1)), written
    rgb = np.asarray(Image.open(folder / f"epoch{EPOCHS}_0.png").convert("RGB"))
    assert _colourbar_count(rgb) == COLOUR_BARS


def _write_images(folder, n=2):
    """Synthetic test-stream images as PNG: one square, one 2:1 with a magenta frame (to find its panel)."""
    folder.mkdir(parents=True, exist_ok=True)
    sq = SyntheticDataset(n, imgsz=128, seed=3, stream=2, min_size=10, max_size=32, max_objects=4)
    wide = SyntheticDataset(1, imgsz=(96, 192), seed=3, stream=2, min_size=10, max_size=32, max_objects=4)
    paths = []
    for i in range(n - 1):
        paths.append(folder / f"square{i}.png")
        Image.fromarray(sq.render(i)).save(paths[-1])
    im = wide.render(0).copy()
    im[:4], im[-4:], im[:, :4], im[:, -4:] = (255, 0, 255), (255, 0, 255), (255, 0, 255), (255, 0, 255)
    paths.append(folder / "wide.png")
    Image.fromarray(im).save(paths[-1])
    return paths


def test_heatmap_cli_end_to_end(trained, tmp_path, capsys):
    weights = trained.weights_dir / "last.pt"
    paths = _write_images(tmp_path / "images")
    out = tmp_path / "figs"
    assert cli_main(["heatmap", str(tmp_path / "images"), f"weights={weights}", f"out={out}", "conf=0.2"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == sorted(f"{p.stem}_heatmap.png" for p in paths)
    rgb = np.asarray(Image.open(out / "wide_heatmap.png").convert("RGB"))
    magenta = (rgb[..., 0] > 245) & (rgb[..., 1] < 10) & (rgb[..., 2] > 245)
    ys, xs = np.nonzero(magenta)  # the input panel's frame (the overlays blend it with the colour map)
    aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    assert abs(aspect - 2.0) < 0.05, aspect
    assert _colourbar_count(rgb) == COLOUR_BARS
    for p in pngs:
        assert _colourbar_count(np.asarray(Image.open(p).convert("RGB"))) == COLOUR_BARS
    # level=max and the default run folder runs/heatmap/<name>
    assert cli_main(["heatmap", str(paths[0]), f"weights={weights}", "level=max", f"project={tmp_path / 'runs'}",
                     "name=m"]) == 0
    assert (tmp_path / "runs" / "heatmap" / "m" / f"{paths[0].stem}_heatmap.png").is_file()
    assert "saved to" in capsys.readouterr().out


def test_heatmap_cli_refuses_model_without_heatmap_path(trained, tmp_path, capsys):
    cfg = tiny_model_cfg()
    model = build_model(cfg, len(SYNTHETIC_NAMES))
    ckpt = tmp_path / "baseline.pt"
    torch.save({"model": model.state_dict(), "model_cfg": cfg, "names": SYNTHETIC_NAMES,
                "train_cfg": {"imgsz": 128}}, ckpt)
    img = _write_images(tmp_path / "images")[0]
    assert cli_main(["heatmap", str(img), f"weights={ckpt}", f"out={tmp_path / 'o'}"]) == 1
    err = capsys.readouterr().err
    assert "no heatmap path" in err and "rtdetr-n-heat" in err, err
    assert cli_main(["heatmap", str(img), f"weights={trained.weights_dir / 'last.pt'}", "level=7"]) == 2  # typed


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_heatmap_memory_flat_over_many_images(trained, tmp_path):
    from hmpe.api import Detector

    img = _write_images(tmp_path / "images")[-1]
    det = Detector(weights=str(trained.weights_dir / "last.pt"), device="cpu")
    out = tmp_path / "figs"
    for _ in range(3):  # warm-up: imports, matplotlib caches, allocator
        det.heatmap(img, out=out, dpi=30)
        det.heatmap(img, save=False)
    tensors0, objects0 = _live_objects()
    rss0 = _rss_mb()
    for _ in range(15):  # model forward, heatmaps, post-process: no graph, no hook survives a call
        r = det.heatmap(img, save=False)
    del r
    tensors1, objects1 = _live_objects()
    for _ in range(5):  # the figures (matplotlib Agg, no pyplot): nothing accumulates either
        det.heatmap(img, out=out, dpi=30)
    tensors2, objects2 = _live_objects()
    grown = _rss_mb() - rss0
    assert tensors1 <= tensors0 and tensors2 <= tensors0, (tensors0, tensors1, tensors2)
    assert objects1 - objects0 < 100 and objects2 - objects0 < 100, (objects0, objects1, objects2)
    assert grown < 30, f"RSS grew by {grown:.1f} MB over 20 heatmap calls"
    for mod in det._model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.nn.modules.module._global_backward_hooks
    assert all(p.grad is None for p in det._model.parameters())


def test_heatmap_switched_off_is_the_baseline():
    base = build_model(load_model_config("rtdetr-n"), 10)
    heat_cfg = load_model_config("rtdetr-n-heat")
    names = [k for k, _ in base.named_parameters()]
    buffers = [k for k, _ in base.named_buffers()]
    for off in ({"heatmap": None}, {"heatmap.enabled": False}):
        m = build_model(apply_overrides(heat_cfg, off), 10)
        assert [k for k, _ in m.named_parameters()] == names
        assert [k for k, _ in m.named_buffers()] == buffers
    on = [k for k, _ in build_model(heat_cfg, 10).named_parameters()]
    assert [k for k in on if not k.startswith("heatmap.")] == names
    assert any(k.startswith("heatmap.probe.") for k in on) and "heatmap.gate" in on


def test_mask_calibration_matches_the_logged_diagnostics(trained, tmp_path):
    """benchmarks.mask_calibration at the model's own threshold reproduces the mask statistics the trainer
    logged at its last validation (same EMA weights, split and size); a higher quantile masks more."""
    import csv
    import json

    from benchmarks import mask_calibration

    with open(trained.run_dir / "results.csv", newline="") as f:
        logged = list(csv.DictReader(f))[-1]
    rows = mask_calibration.main(["--weights", str(trained.run_dir / "weights" / "last.pt"), "--threads", "1",
                                  "--thresholds", "absolute:0.05", "quantile:0.3,0.6", "--score-pool", "sum",
                                  "--out", str(tmp_path / "calibration.md")])
    own = next(r for r in rows if r["mode"] == "absolute")["stats"]
    for level in ("S3", "S4", "S5"):
        for kind in ("bg_masked", "obj_hot"):
            assert own[f"mask_{kind}/{level}"] == pytest.approx(float(logged[f"val/mask_{kind}/{level}"]), abs=1e-5)
        q3, q6 = (next(r for r in rows if r["tau"] == t)["stats"] for t in (0.3, 0.6))
        assert q6[f"mask_bg_masked/{level}"] >= q3[f"mask_bg_masked/{level}"]
        assert q6[f"mask_obj_hot/{level}"] <= q3[f"mask_obj_hot/{level}"]
    assert "S5 bg masked / obj hot" in (tmp_path / "calibration.md").read_text()
    assert {"date", "cpu", "versions"} <= set(json.loads((tmp_path / "calibration.json").read_text()))
