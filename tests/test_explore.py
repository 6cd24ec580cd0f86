"""``hmpe explore`` (issue 19): the mask recomputed from cached maps, its statistics, the JSON API on a
dataset source (true / false positives and misses), the allow-list of files, and the page in a real
browser (Debian's Chromium driven by playwright; skipped with the reason where either is missing).

An untrained tiny detector with the heatmap path is enough: every number the page shows is compared with
the library's own computation on the same checkpoint, whatever the weights."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import SYNTHETIC_NAMES, tiny_model_cfg
from hmpe.api import Detector
from hmpe.data.synthetic import SyntheticDataset
from hmpe.engine.eval.evaluator import coco_match_image
from hmpe.models.heatmap import HeatmapEmbedding
from hmpe.models.heatmap.mask_stats import mask_statistics, mix_and_mask, object_cells, remask

pytest.importorskip("starlette", reason="hmpe explore needs starlette (pip install 'hmpe[explore]')")
pytest.importorskip("uvicorn", reason="hmpe explore needs uvicorn (pip install 'hmpe[explore]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------------------------------------- units
def test_object_cells_and_mask_statistics():
    cells = object_cells([[0, 0, 32, 16], [60, 60, 61, 61]], (64, 64), (8, 8))  # 8 px cells
    expect = np.zeros((8, 8), bool)
    expect[0:2, 0:4] = True  # centres at 4, 12 (y) and 4..28 (x) lie inside the first box
    expect[7, 7] = True  # the 1 px box owns the cell of its centre
    assert (cells == expect).all()
    mask = np.zeros((8, 8), np.float32)
    mask[0, :] = 1  # 4 of the 9 object cells hot, 4 of the 55 background cells hot
    s = mask_statistics(mask, cells)
    assert s["objects_hot"] == pytest.approx(4 / 9) and s["background_masked"] == pytest.approx(51 / 55)
    assert s["hot"] == pytest.approx(8 / 64) and (s["object_cells"], s["background_cells"]) == (9, 55)
    assert mask_statistics(mask, np.zeros((8, 8), bool))["objects_hot"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        mask_statistics(mask, np.zeros((4, 4), bool))


def test_remask_is_the_modules_own_mask():
    """Re-thresholding cached maps gives exactly what the module computes with that threshold / gate."""
    torch.manual_seed(0)
    heat = HeatmapEmbedding(32, 4, tau=0.05).eval()
    feats = [torch.randn(1, 32, s, s) for s in (16, 8, 4)]
    with torch.no_grad():
        out = heat(feats)
        heat.mask_filter.tau = 0.4
        heat.gate.fill_(1.0)
        ref = heat(feats)
    again = remask(out, 0.4, torch.sigmoid(torch.tensor(1.0)).item())
    for a, b in zip(again.mask, ref.mask):
        assert torch.equal(a, b)
    for a, b in zip(again.h_mixed, ref.h_mixed):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(again.mask, out.mask))  # the threshold mattered
    mixed, mask = mix_and_mask(out.h_class, out.h_bbox, 0.3, 0.5)
    torch.testing.assert_close(mixed[0], 0.3 * out.h_class[0] + 0.7 * out.h_bbox[0])
    assert torch.equal(mask[0], (mixed[0] > 0.5).float())


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_model_cfg()
    cfg["name"], cfg["heatmap"] = "tiny-heat", {"tau": 0.05}
    from hmpe.models.detector import build_model

    model = build_model(cfg, len(SYNTHETIC_NAMES))
    path = tmp_path_factory.mktemp("explore") / "tiny.pt"
    torch.save({"model": model.state_dict(), "model_cfg": cfg, "names": SYNTHETIC_NAMES,
                "train_cfg": {"imgsz": 128}}, path)
    return path


def _images(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ds = SyntheticDataset(n, imgsz=128, seed=3, stream=2, min_size=10, max_size=32, max_objects=4)
    paths = [folder / f"syn{i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.fromarray(ds.render(i)).save(p)
    return paths


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _library_stats(ckpt: Path, image: Path, tau: float, conf: float, boxes=None) -> dict:
    """What the library itself says, by the `hmpe heatmap` path (a fresh forward, level 0)."""
    det = Detector(str(ckpt), device="cpu")
    r = det.heatmap(image, conf=conf, save=False, level=0)[0]
    lam = float(torch.sigmoid(det._ensure_model().heatmap.gate[0].detach()))
    _, mask = mix_and_mask([torch.from_numpy(r["maps"]["H_class"])], [torch.from_numpy(r["maps"]["H_bbox"])],
                           [lam], tau)
    boxes = r["prediction"].boxes if boxes is None else boxes
    return mask_statistics(mask[0], object_cells(boxes, (r["prediction"].width, r["prediction"].height),
                                                 mask[0].shape))


# ---------------------------------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def dataset_server(ckpt, tmp_path_factory):
    """A YOLO dataset of 2 synthetic images (+ a symlink leading out of it) served with ground truth for image
    syn0 made from the model's own detections: one found, one of another class, one nobody finds."""
    tmp = tmp_path_factory.mktemp("explore_data")
    root = tmp / "data"
    paths = _images(root / "images" / "val")
    det = Detector(str(ckpt), device="cpu")
    pred = det.predict(paths[0], conf=0.0, save=False)[0]
    W, H = pred.width, pred.height
    gts = [(int(pred.labels[0]), pred.boxes[0]), ((int(pred.labels[1]) + 1) % 5, pred.boxes[1]),
           (int(pred.labels[0]), np.array([0, 0, W - 1, H - 1]))]
    (root / "labels" / "val").mkdir(parents=True)
    with open(root / "labels" / "val" / "syn0.txt", "w") as f:
        for c, (x1, y1, x2, y2) in gts:
            f.write(f"{c} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}\n")
    (root / "data.yaml").write_text(f"path: {root}\nformat: yolo\nval: images/val\nnames: {SYNTHETIC_NAMES}\n")
    (root / "notes.txt").write_text("not an image")
    (tmp / "secret.png").write_bytes(paths[0].read_bytes())  # a real image outside the source
    (root / "images" / "val" / "link.png").symlink_to(tmp / "secret.png")  # a link leading out of it
    server = det.explore(str(root / "data.yaml"), port=0, block=False, conf=0.0, floor=0.0, scan=True)
    yield server, paths, pred, gts, tmp
    server.stop()


def test_explore_dataset_matches_and_statistics(ckpt, dataset_server):
    server, paths, pred, gts, _ = dataset_server
    url = server.url
    info = json.loads(_get(url + "api/info")[1])
    assert info["has_gt"] and info["images"] == ["link.png", "syn0.png", "syn1.png"]
    s = json.loads(_get(url + "api/detections/1")[1])
    assert len(s["gts"]) == 3 and {d["status"] for d in s["detections"]} <= {"tp", "fp", "ignored"}
    # misses at several confidences = an independent COCO matching of the detections above each
    scores = sorted({d["score"] for d in s["detections"]})
    expected_misses = {}  # conf -> misses by the independent matching
    for conf in [0.0, scores[len(scores) // 2], scores[-1], 1.1]:
        found = 0
        for c in range(5):
            keep = (pred.labels == c) & (pred.scores >= conf)
            g = np.array([b for cc, b in gts if cc == c]).reshape(-1, 4)
            if keep.any() and len(g):
                found += int(coco_match_image(pred.boxes[keep], pred.scores[keep], g, np.zeros(len(g), bool),
                                              0.5, max_det=100)[1].sum())
        assert server.session.misses(1, conf) == 3 - found, conf
        expected_misses[conf] = 3 - found
    assert server.session.misses(1, 0.0) <= 2  # the first box is its own detection: found
    other = next(c for c in range(5) if c not in {g[0] for g in gts})  # a class without ground truth: all FP
    fake = {"boxes": np.array([[0, 0, 10, 10]], np.float32), "scores": np.array([0.9]), "labels": np.array([other])}
    assert server.session._summarise(1, fake, W=128, H=128)["detections"][0]["status"] == "fp"
    # mask statistics of the page = the library's, against the ground-truth cells
    for tau in (0.05, 0.5):
        got = json.loads(_get(url + f"api/maps/1?tau={tau}&level=0")[1])
        assert set(got["maps"]) == {"H_class", "H_bbox", "H_mixed", "Mask", "|PE'|"}
        ref = _library_stats(ckpt, paths[0], tau, 0.0, boxes=np.array([b for _, b in gts]))
        assert got["stats"] == pytest.approx(ref), tau
    assert _get(url + "api/maps/1?level=max&cls=2&gate=0.3")[0] == 200
    assert _get(url + "api/maps/1?level=7")[0] == 400
    assert _get(url + "api/maps/9")[0] == 404
    server._threads[-1].join(timeout=30)  # the background scan: every image ranked by its misses
    rank = json.loads(_get(url + "api/ranking?conf=0")[1])
    assert rank["scanned"] == 3
    assert {"index": 1, "name": "syn0.png", "misses": expected_misses[0.0]} in rank["images"]


def test_explore_refuses_other_files(dataset_server):
    server, _, _, _, tmp = dataset_server
    url = server.url
    assert _get(url + "image/syn1.png")[0] == 200  # the source's images, by their name in the source
    for bad in ["image/link.png", "image/notes.txt", "image/..%2Fsecret.png", "image/%2Fetc%2Fpasswd",
                "image/../secret.png", f"image/{tmp / 'secret.png'}", "image/..%2F..%2F..%2Fsecret.png",
                "image/..%2Fdata.yaml"]:
        status, body = _get(url + bad)
        assert status in (403, 404), (bad, status)
        assert b"PNG" not in body and b"JFIF" not in body
    assert _get(url + "api/detections/0")[0] == 403  # the link's forward is refused as well
    assert _get(url + "api/info", host="evil.example")[0] == 400  # DNS rebinding: foreign Host refused
    for name in (str(tmp / "secret.png"), "../secret.png", "link.png"):
        with pytest.raises(PermissionError):
            server.session.resolve(name)


def test_explore_indices_outside_the_source_are_404_and_403s_name_no_local_path(dataset_server):
    server, _, _, _, tmp = dataset_server
    url, n = server.url, len(server.session.images)
    for route in ("api/detections", "api/maps"):
        for i in (n, 99, -1, "x"):  # past the end, negative (no wrapping to the last image), not a number
            status, body = _get(url + f"{route}/{i}")
            assert status == 404, (route, i, status, body)
            assert json.loads(body)["error"].startswith("image index") and b"\n" not in body
    for bad in ("image/notes.txt", "image/link.png", "api/detections/0"):  # link.png leads out of the source
        status, body = _get(url + bad)
        message = json.loads(body)["error"]
        assert status == 403 and str(tmp) not in message and "the source" in message, (bad, status, message)


def test_explore_cli_checks_keys(ckpt, capsys):
    from hmpe.cli import main

    assert main(["explore", "source=x", f"weights={ckpt}", "prot=1"]) == 2  # before the model loads
    assert "unknown key 'prot' in hmpe explore; did you mean 'port'?" in capsys.readouterr().err
    assert main(["explore", f"weights={ckpt}"]) == 2
    assert "a SOURCE is required; usage: hmpe explore" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- browser
def test_explore_page_in_chromium(ckpt, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")
    paths = _images(tmp_path / "images", 2)
    server = Detector(str(ckpt), device="cpu").explore(str(tmp_path / "images"), port=0, block=False)
    shot = tmp_path / "explore.png"
    try:
        with sync_api.sync_playwright() as pw:
            try:
                browser = pw.chromium.launch_persistent_context(  # a fresh profile (--user-data-dir)
                    str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                    viewport={"width": 1400, "height": 1000})
            except sync_api.Error as err:
                pytest.skip(f"{CHROMIUM} does not start under playwright here: {str(err).splitlines()[0]}")
            try:
                page = browser.new_page()
                page.route(lambda u: not u.startswith(server.url), lambda route: route.abort())  # loopback only
                page.goto(server.url)
                page.wait_for_function("document.body.dataset.seq >= 1", timeout=20_000)
                before = page.get_attribute("#bg-masked", "data-value")
                assert page.inner_text("#stats-tau") == "0.05"
                box = page.locator("#tau").bounding_box()
                page.mouse.click(box["x"] + 0.6 * box["width"], box["y"] + box["height"] / 2)  # move the slider
                tau = page.inner_text("#tau-value")
                assert 0.4 < float(tau) < 0.8
                page.wait_for_function(f"document.querySelector('#stats-tau').textContent === '{tau}'",
                                       timeout=20_000)
                shown = page.get_attribute("#bg-masked", "data-value")
                assert shown != before
                ref = _library_stats(ckpt, paths[0], float(tau), 0.25)
                assert float(shown) == pytest.approx(ref["background_masked"], abs=1e-9)
                assert page.inner_text("#bg-masked") == f"{ref['background_masked']:.4f}"
                assert page.locator("[data-map] .ov").count() == 5
                seq = int(page.evaluate("document.body.dataset.seq"))
                page.click("#next")
                page.wait_for_function(f"document.querySelector('#image').value === '1' && "
                                       f"document.body.dataset.seq > {seq}", timeout=20_000)
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        server.stop()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_explore_slider_benchmark_smoke(ckpt, tmp_path, monkeypatch):
    """python -m benchmarks.explore_slider end to end (2 moves per slider, 128 px), so that it does not rot."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")
    from benchmarks import explore_slider

    image = _images(tmp_path / "img", 1)[0]
    out = tmp_path / "slider.md"
    monkeypatch.setattr("sys.argv", ["explore_slider.py", "--weights", str(ckpt), "--image", str(image), "--side",
                                     "128", "--threads", "1", "--moves", "2", "--chromium", CHROMIUM,
                                     "--out", str(out)])
    assert explore_slider.main() == 0  # it sets torch's threads; conftest puts them back
    text = out.read_text()
    assert "| mask threshold: page update | 2 |" in text and "| gate: server part | 2 |" in text
