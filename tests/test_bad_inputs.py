"""Bad inputs through the CLI (in-process ``hmpe.cli.main``): each gives an error naming the file, or a counted
skip; nothing written before is lost."""

import io
from pathlib import Path
import json

import numpy as np
import pytest
from PIL import Image

from helpers import SYNTHETIC_NAMES
from hmpe.cli import main


def _jpeg(w=40, h=32, mode="RGB", **save) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    return _jpeg(exif=exif.tobytes())


GOOD = {  # decodable in every mode a camera or a GIS tool writes: predicted like any RGB image
    "gray.png": lambda: _png(Image.new("L", (40, 32), 128)),
    "rgba.png": lambda: _png(Image.new("RGBA", (40, 32), (10, 200, 30, 128))),
    "sixteen.png": lambda: _png(Image.fromarray(np.full((32, 40), 40000, dtype=np.uint16))),
    "cmyk.jpg": lambda: _jpeg(mode="CMYK"),
    "exif.jpg": _exif_rotated,
}
BAD = {  # not decodable: a warning naming each, counted in the summary, the rest predicted
    "corrupt.jpg": lambda: b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10,
    "truncated.jpg": lambda: _jpeg(200, 160)[:400],
    "empty.png": lambda: b"",
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from test_export import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("bad") / "tiny.pt", imgsz=64)


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in files.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_but_valid_images_are_predicted(name, weights, tmp_path, capsys):
    src = _write(tmp_path / "in", {name: GOOD[name]})
    assert main(["predict", str(src / name), f"weights={weights}", f"project={tmp_path}", "device=cpu"]) == 0
    assert "1 images" in capsys.readouterr().out


def test_unreadable_images_are_skipped_named_and_counted(weights, tmp_path, capsys):
    src = _write(tmp_path / "in", {**BAD, "a_good.png": GOOD["rgba.png"], "z_good.png": GOOD["gray.png"]})
    rc = main(["predict", str(src), f"weights={weights}", f"project={tmp_path}", "name=p", "device=cpu", "batch=2"])
    out, err = capsys.readouterr()
    assert rc == 3  # finished, some inputs skipped
    assert "2 images" in out and "3 skipped" in out
    assert all(n in err and n in out for n in BAD)
    run = tmp_path / "predict" / "p"
    assert sorted(p.name for p in run.glob("*.jpg")) == ["a_good.jpg", "z_good.jpg"]
    saved = json.loads((run / "predictions.json").read_text())
    assert sorted(Path(e["image"]).name for e in saved if e.get("skipped")) == sorted(BAD)


def test_strict_stops_at_the_first_unreadable_and_keeps_what_was_written(weights, tmp_path, capsys):
    src = _write(tmp_path / "in", {"a_good.png": GOOD["rgba.png"], "b_empty.png": BAD["empty.png"]})
    rc = main(["predict", str(src), f"weights={weights}", f"project={tmp_path}", "name=s", "device=cpu", "batch=1",
               "strict=true"])
    assert rc == 1 and "b_empty.png" in capsys.readouterr().err
    assert (tmp_path / "predict" / "s" / "a_good.jpg").is_file()  # written before the error: kept


def _yolo(root, bad_label: str | None, val_images: int = 2) -> str:
    """Two images per split; the second one's label file holds ``bad_label`` (when given)."""
    for split, n in (("train", 2), ("val", val_images)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            (root / "images" / split / f"{i}.png").write_bytes(GOOD["rgba.png"]())
            label = bad_label if i == 1 and bad_label else "0 0.5 0.5 0.2 0.2"
            (root / "labels" / split / f"{i}.txt").write_text(label + "\n")
    names = ", ".join(SYNTHETIC_NAMES)
    (root / "data.yaml").write_text(f"format: yolo\npath: .\ntrain: images/train\nval: images/val\nnames: [{names}]\n")
    return str(root / "data.yaml")


@pytest.mark.parametrize("label", [
    "7 0.5 0.5 0.2 0.2",  # unknown class
    "0 nan 0.5 0.2 0.2",  # NaN
    "0 0.5 0.5 -0.2 0.2",  # negative size
    "0 -0.5 -0.5 0.1 0.1",  # outside the image
], ids=["unknown-class", "nan", "negative", "outside"])
def test_bad_labels_name_the_file_or_are_counted(label, tmp_path, capsys):
    data = _yolo(tmp_path / "d", label)
    assert main(["data", "stats", data]) == 1
    assert "1.txt" in capsys.readouterr().err
    assert main(["data", "stats", data, "skip_bad=true"]) == 0  # counted skips
    assert main(["train", f"data={data}", "epochs=1", f"project={tmp_path / 'runs'}", "device=cpu"]) == 1
    assert "1.txt" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # stopped before any run folder


def test_empty_split_and_missing_dataset_are_named(tmp_path, capsys):
    data = _yolo(tmp_path / "d", None, val_images=0)
    assert main(["train", f"data={data}", "epochs=1", f"project={tmp_path / 'runs'}"]) == 1
    assert "val" in capsys.readouterr().err
    assert main(["train", f"data={tmp_path / 'nowhere.yaml'}", "epochs=1", f"project={tmp_path / 'runs'}"]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err
    (tmp_path / "far.yaml").write_text("format: yolo\npath: /no/such/folder\ntrain: images\nval: images\nnames: [a]\n")
    assert main(["train", f"data={tmp_path / 'far.yaml'}", "epochs=1", f"project={tmp_path / 'runs'}"]) == 1
    assert "/no/such/folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("task", ["predict", "val", "export", "heatmap"])
def test_checkpoint_that_is_a_text_file(task, tmp_path, capsys):
    ckpt = tmp_path / "notes.pt"
    ckpt.write_text("these are my notes, not a checkpoint\n")
    img = _write(tmp_path / "in", {"a.png": GOOD["gray.png"]}) / "a.png"
    argv = [task, f"weights={ckpt}"] + ([str(img)] if task in ("predict", "heatmap") else [])
    assert main(argv) == 1
    assert "notes.pt" in capsys.readouterr().err



