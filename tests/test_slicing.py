"""Sliced inference: tile grid, lazy batched tiling, cross-tile merging, and the model plumbing."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from helpers import tiny_data
from hmpe.engine.eval.slicing import (
    box_ios,
    cut_flags,
    merge_detections,
    sliced_predict,
    tile_grid,
    tile_starts,
)

COLOURS = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}


def test_tile_starts_and_grid():
    assert tile_starts(2000, 640, 0.2) == [0, 512, 1024, 1360]
    assert tile_starts(1600, 640, 0.2) == [0, 512, 960]
    assert tile_starts(640, 640, 0.2) == [0] and tile_starts(300, 640, 0.2) == [0]
    tiles = tile_grid(2000, 1600, 640, 0.2)
    assert len(tiles) == 12 and tiles[0] == (0, 0, 640, 640) and tiles[-1] == (1360, 960, 2000, 1600)
    cover = np.zeros((1600, 2000), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 == 640 and y1 - y0 == 640  # full-size tiles: the last ones are moved back
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    for length in (641, 1000, 1151, 5000):  # neighbours overlap by at least overlap * size
        s = tile_starts(length, 640, 0.2)
        assert all(b - a <= 512 for a, b in zip(s, s[1:])) and s[-1] + 640 == length
    assert tile_grid(300, 200, 640) == [(0, 0, 300, 200)]
    with pytest.raises(ValueError):
        tile_starts(1000, 640, 1.0)


def test_cut_flags_only_on_inner_tile_sides():
    boxes = torch.tensor([[0.0, 10, 20, 30],  # on the image's left border: not cut
                          [600, 10, 640, 30],  # touches the tile's right side, inside the image: cut
                          [100, 100, 200, 200]])
    assert cut_flags(boxes, (0, 0, 640, 640), 2000, 1600, 2.0).tolist() == [False, True, False]
    assert cut_flags(boxes, (0, 0, 640, 640), 640, 640, 2.0).tolist() == [False, False, False]


def test_box_ios():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 10, 10], [0, 0, 20, 20], [20, 20, 30, 30]])
    torch.testing.assert_close(box_ios(a, b), torch.tensor([[1.0, 1.0, 0.0]]))


# ------------------------------------------------------------------------- stub detector on a synthetic image
# 2000 x 1600, tiles of 640 with overlap 0.2: x tiles start at 0, 512, 1024, 1360; y tiles at 0, 512, 960.
# Inner tile sides: x = 512, 640, 1024, 1152, 1360, 1664; y = 512, 640, 960, 1152.
OBJECTS = [  # x1, y1, x2, y2, label
    (600, 100, 680, 160, 0),  # across x = 640: a fragment in tile 0, whole in tile 1
    (540, 300, 620, 360, 1),  # inside the x overlap strip: whole in two tiles
    (480, 200, 560, 240, 2),  # across x = 512
    (610, 610, 670, 670, 0),  # across a four-tile corner (x = 640, y = 640)
    (450, 800, 700, 860, 1),  # wider than the overlap: cut in both tiles that see it -> union
    (1340, 1000, 1400, 1050, 2),  # across the moved-back last column (x = 1360), in two tile rows
    (1800, 1130, 1860, 1190, 0),  # across y = 1152
    (1950, 300, 2000, 350, 1),  # on the image border: never a fragment
    (300, 1400, 340, 1440, 2),  # inside one tile
    (620, 1300, 660, 1340, 2),  # across x = 640 ...
    (662, 1300, 700, 1340, 2),  # ... and a separate same-class neighbour 2 px away
]


def _scene(objects=OBJECTS, size=(1600, 2000)) -> np.ndarray:
    img = np.zeros((*size, 3), np.uint8)
    for x1, y1, x2, y2, c in objects:
        img[y1:y2, x1:x2] = COLOURS[c]
    return img


class StubDetector:
    """A 'perfect' detector that sees only its input: one box per connected region of a class colour
    (so objects cut by the tile border come back as fragments). Records the batch sizes it got."""

    def __init__(self, k: int = 16):
        self.k = k
        self.batches = []

    def __call__(self, x: torch.Tensor):
        self.batches.append(x.shape[0])
        B = x.shape[0]
        boxes, scores, labels = torch.zeros(B, self.k, 4), torch.zeros(B, self.k), torch.zeros(B, self.k, dtype=torch.long)
        for b in range(B):
            img = x[b].numpy()
            n = 0
            for c, rgb in COLOURS.items():
                on = np.ones(img.shape[1:], bool)
                for ch, v in enumerate(rgb):
                    on &= (img[ch] > 0.5) if v else (img[ch] < 0.5)
                lab, _ = ndimage.label(on)
                for sl in ndimage.find_objects(lab):
                    ys, xs = sl
                    boxes[b, n] = torch.tensor([xs.start, ys.start, xs.stop, ys.stop], dtype=torch.float32)
                    scores[b, n], labels[b, n] = 0.9, c
                    n += 1
        return boxes, scores, labels


def _match_once(boxes, labels, objects, tol=1.0):
    assert len(boxes) == len(objects), f"{len(boxes)} detections for {len(objects)} objects:\n{boxes}"
    gt = torch.tensor([o[:4] for o in objects], dtype=torch.float32)
    used = set()
    for (x1, y1, x2, y2, c), g in zip(objects, gt):
        d = (boxes - g).abs().amax(1)
        hits = [i for i in range(len(boxes)) if d[i] <= tol and int(labels[i]) == c]
        assert len(hits) == 1, f"object {(x1, y1, x2, y2, c)} found {len(hits)} times"
        used.add(hits[0])
    assert len(used) == len(objects)


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_objects_across_tile_borders_come_back_once(merge):
    stub = StubDetector()
    boxes, scores, labels = sliced_predict(stub, _scene(), size=640, imgsz=640, overlap=0.2, batch=5, conf=0.25,
                                           merge=merge)
    _match_once(boxes, labels, OBJECTS)
    assert sum(stub.batches) == 12 and max(stub.batches) <= 5  # tiles are batched, 5 at most at once
    assert bool((scores[:-1] >= scores[1:]).all())


def test_without_fragment_handling_plain_nms_duplicates():
    """Why step (a) exists: class-wise NMS alone keeps the border fragments (IoU with the whole box < 0.5)."""
    b, _, _ = sliced_predict(StubDetector(), _scene(), 640, 640, 0.2, batch=12, merge="nms",
                             merge_ios=1.01)  # an IoS above 1 is never reached: no fragment handling
    assert len(b) > len(OBJECTS)


def test_tiles_are_resized_to_the_model_input():
    """slice (1000) != imgsz (640): the stub sees down-scaled tiles; boxes come back in full-image pixels."""
    objects = [(900, 500, 1100, 700, 1), (100, 100, 300, 260, 0)]
    stub = StubDetector()
    boxes, _, labels = sliced_predict(stub, _scene(objects, (1600, 2000)), size=1000, imgsz=640, overlap=0.25,
                                      batch=4, conf=0.25)
    _match_once(boxes, labels, objects, tol=3.0)  # resampling blurs the edges by a pixel or two


def test_full_image_pass_absorbs_fragments_of_large_objects():
    big = [(200, 1200, 1300, 1500, 0)]  # 1100 px wide: every tile that sees it cuts it
    stub = StubDetector()
    b, _, _ = sliced_predict(stub, _scene(big), 640, 640, 0.2, batch=12)
    assert len(b) > 1  # the documented limitation
    b, _, l = sliced_predict(StubDetector(), _scene(big), 640, 640, 0.2, batch=12, full_image=True)
    _match_once(b, l, big, tol=5.0)  # the whole-image pass is ~3x down-scaled


def test_merge_detections_keeps_separate_objects():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1])
    tiles = torch.tensor([0, 1, 0, 1])
    cut = torch.zeros(4, dtype=torch.bool)
    b, s, l = merge_detections(boxes, scores, labels, tiles, cut)
    assert l.tolist() == [0, 0, 1] and s.tolist() == pytest.approx([0.9, 0.7, 0.6])  # class-wise NMS
    with pytest.raises(ValueError, match="merge"):
        merge_detections(boxes, scores, labels, tiles, cut, method="soft")


# ------------------------------------------------------------------------- the real model path (plumbing)
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from test_export import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("slice") / "tiny.pt", imgsz=96)


def test_detector_predict_sliced_plumbing(tiny_ckpt, tmp_path):
    from hmpe.api import Detector
    from hmpe.cli import main

    rng = np.random.default_rng(0)
    path = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (250, 330, 3), dtype=np.uint8)).save(path)
    det = Detector(weights=str(tiny_ckpt), device="cpu")
    calls = []
    model = det._ensure_model()
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    (p,) = det.predict(path, conf=0.0, slice=128, overlap=0.2, batch=4, save=False)
    assert (p.width, p.height) == (330, 250)
    # 3 x 3 tiles of 128 px (x starts 0, 102, 202; y 0, 102, 122), 4 per forward pass, resized to 96
    assert [tuple(s) for s in calls] == [(4, 3, 96, 96), (4, 3, 96, 96), (1, 3, 96, 96)]
    assert len(p.boxes) > 0
    assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 2] <= 330).all() and (p.boxes[:, 3] <= 250).all()
    assert (p.scores[:-1] >= p.scores[1:]).all()
    assert main(["predict", str(path), f"weights={tiny_ckpt}", "slice=128", "conf=0.01", "device=cpu",
                 f"project={tmp_path / 'runs'}"]) == 0
    assert (tmp_path / "runs" / "predict" / "exp" / "predictions.json").is_file()


def test_detector_val_sliced_on_full_images(tiny_ckpt, tmp_path):
    from hmpe.api import Detector

    det = Detector(weights=str(tiny_ckpt), device="cpu")
    data = tiny_data(num_train=2, num_val=2, imgsz=200, overfit=False)
    metrics = det.val(data=data, slice=96, overlap=0.2, project=str(tmp_path / "runs"))
    assert "mAP50" in metrics and 0.0 <= metrics["mAP50"] <= 1.0
    assert (tmp_path / "runs" / "val" / "exp" / "metrics.json").is_file()


def test_evaluate_sliced_reports_sizes_at_the_tile_scale():
    """Sliced evaluation feeds ``size`` tiles at ``imgsz``: the ``*_input`` figures take each object at
    ``imgsz / size`` of its native size, whatever input scale the evaluator was built with."""
    from types import SimpleNamespace

    from hmpe.data.types import Sample
    from hmpe.engine.eval.evaluator import COCOEvaluator
    from hmpe.engine.eval.slicing import evaluate_sliced

    a = np.array(OBJECTS, np.float64)
    sample = Sample(1, "scene", 2000, 1600, a[:, :4], a[:, 4].astype(np.int64))
    ds = SimpleNamespace(samples=[sample], image_loader=lambda s: _scene())
    ev = COCOEvaluator([sample], ["a", "b", "c"], input_scale=1.0)
    m = evaluate_sliced(StubDetector(), ds, ev, size=1280, imgsz=640, batch=4, progress=False)
    areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    assert m["n_small"] == int((areas <= 32**2).sum()) == 0
    assert m["n_small_input"] == int((areas * 0.5**2 <= 32**2).sum()) == 8
    assert m["AP_small_input"] > 0  # the stub finds them
