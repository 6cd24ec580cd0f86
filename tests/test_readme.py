"""The README's command blocks, run as written.

Every ``hmpe`` command in the README's ``bash`` blocks is checked against the key table (task, keys, values) without
running it; then the blocks are executed in order, in an empty folder that holds the files the README names
(``best.pt``, ``path/to/images``, ``my-data.yaml``, ...; built here, small), with sizes capped so that CI can afford
them (training: ``epochs=1 imgsz=64 batch=16``, and 16 synthetic images instead of the default dataset's 256 where
no ``data=`` is given, and in the synthetic dataset files the README writes; bench: ``imgsz=64 runs=1 warmup=0``;
export: ``imgsz=64``). Not executed: ``pip``, the test command itself, ``hmpe explore`` (a server that runs until
stopped; tests/test_explore.py drives it), ``torchrun`` (tests/test_ddp.py), INT8 exports (tests/test_int8.py),
OpenVINO exports and ``bench backend=`` (tests/test_export_openvino.py, tests/test_backends.py), a command repeated
in another section (run once), and training on NWPU VHR-10 (minutes even capped): all of these are still checked
statically; ``hmpe data stats nwpu-vhr10`` runs where the dataset is present.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
import torch
from PIL import Image

from helpers import NWPU_ROOT, REPO, SYNTHETIC_NAMES, tiny_data, tiny_model_cfg
from hmpe.cli import COMMANDS, check_args, main

CAPS = {"train": ["epochs=1", "imgsz=64", "batch=16", "workers=0", "device=cpu", "plots=false"],
        "bench": ["imgsz=64", "runs=1", "warmup=0"], "export": ["imgsz=64"]}
NOT_RUN = ("pip ", "python -m pytest", "torchrun ", "hmpe explore ")
SMALL_SYNTHETIC = "small-synthetic.yaml"  # the sandbox's stand-in for the default data=synthetic (16 + 8 images)
SMALL_NUM_TRAIN = 16  # train images of every synthetic dataset the sandbox trains on


def readme_lines() -> list[str]:
    lines, inside = [], False
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def hmpe_argv(line: str) -> list[str] | None:
    """The arguments after ``hmpe`` (or ``-m hmpe``) of a README line, comments removed."""
    words = shlex.split(line, comments=True)
    if words[:1] == ["hmpe"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "hmpe" in words:
        return words[words.index("hmpe") + 1:]
    return None


def test_every_readme_command_passes_the_key_check():
    commands = [a for a in map(hmpe_argv, readme_lines()) if a is not None]
    assert len(commands) > 20
    for argv in commands:
        assert argv[0] in COMMANDS, argv
        if argv[0] != "cfg":
            check_args(argv[0], argv[1:], files=False)  # the files it names exist in the sandbox only


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty working folder with the files the README's commands name."""
    import timm
    from safetensors.torch import save_file

    from benchmarks.geotiff_memory import make_raster
    from hmpe.data.synthetic import SyntheticDataset
    from hmpe.data.tools import data_convert
    from test_export import make_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMPE_DATASETS", str(NWPU_ROOT.parent))
    heat = tiny_model_cfg()
    heat["name"], heat["heatmap"] = "tiny-heat", {"tau": 0.05}
    make_checkpoint(tmp_path / "best.pt", model_cfg=heat, imgsz=64)
    (tmp_path / "runs/train/exp/weights").mkdir(parents=True)
    (tmp_path / "runs/train/exp/weights/best.pt").write_bytes((tmp_path / "best.pt").read_bytes())
    images = SyntheticDataset(3, imgsz=96, seed=1, stream=2, min_size=10, max_size=32, max_objects=4)
    (tmp_path / "path/to/images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(images.render(i)).save(tmp_path / f"path/to/images/{i}.png")
    large = SyntheticDataset(1, imgsz=(384, 512), seed=1, stream=2, min_size=10, max_size=32, max_objects=8)
    Image.fromarray(large.render(0)).save(tmp_path / "large.png")
    make_raster(tmp_path / "mosaic.tif", 512, "uint8")  # the GeoTIFF example: a synthetic EPSG:32633 raster
    data_convert(tiny_data(num_train=4, num_val=2, imgsz=64), "yolo", tmp_path / "my-data")
    (tmp_path / "my-data.yaml").write_text(  # an ultralytics-style file: no format, names as a mapping
        "path: my-data\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {i}: {n}\n" for i, n in enumerate(SYNTHETIC_NAMES)))
    (tmp_path / "new-classes.yaml").write_text("format: synthetic\nnum_train: 4\nnum_val: 2\nimgsz: 64\nclasses: 3\n")
    (tmp_path / SMALL_SYNTHETIC).write_text(f"format: synthetic\nnum_train: {SMALL_NUM_TRAIN}\nnum_val: 8\nimgsz: 64\n")
    (tmp_path / "large-images.yaml").write_text("format: synthetic\nnum_train: 1\nnum_val: 1\nimgsz: 512\n")
    torch.manual_seed(0)
    save_file(timm.create_model("hgnetv2_b0", pretrained=False).state_dict(), str(tmp_path / "hgnetv2_b0.safetensors"))
    torch.save(timm.create_model("hgnetv2_b1", pretrained=False).state_dict(), tmp_path / "PPHGNetV2_B1_stage1.pth")
    return tmp_path


def _cap_synthetic_yaml(line: str, sandbox) -> None:
    """A synthetic dataset file the shell line wrote (``printf ... > synth256.yaml``) trains on at most
    ``SMALL_NUM_TRAIN`` images here, as the default dataset does (its images cost seconds an epoch even at 64 px)."""
    import yaml

    target = line.rsplit(">", 1)[-1].strip() if ">" in line else ""
    if not target.endswith((".yaml", ".yml")):
        return
    cfg = yaml.safe_load((sandbox / target).read_text())
    if cfg.get("format") == "synthetic" and cfg.get("num_train", 0) > SMALL_NUM_TRAIN:
        (sandbox / target).write_text(yaml.safe_dump({**cfg, "num_train": SMALL_NUM_TRAIN}))


@pytest.mark.slow
def test_readme_command_blocks_run(sandbox, capsys):
    ran, seen = [], set()
    for line in readme_lines():
        if line.startswith(NOT_RUN):
            continue
        argv = hmpe_argv(line)
        if argv is None:  # a shell line of the README (printf > file.yaml)
            subprocess.run(line, shell=True, check=True, cwd=sandbox)
            _cap_synthetic_yaml(line, sandbox)
            continue
        if "nwpu-vhr10" in line and (argv[0] != "data" or not (NWPU_ROOT / "ground truth").is_dir()):
            continue  # NWPU training and the explorer: checked above; `data stats` runs where NWPU is
        caps = CAPS.get(argv[0], [])  # replace the README's values: a key given twice is an error
        if argv[0] == "train" and not any(a.startswith(("data=", "resume=")) for a in argv[1:]):
            caps = [*caps, f"data={SMALL_SYNTHETIC}"]  # the default dataset's 256 images cost a minute an epoch
        if argv[0] == "export" and "int8=true" in argv:
            continue  # INT8 calibration costs tens of seconds: checked above, run by tests/test_int8.py
        if (argv[0] == "bench" and any(a.startswith("backend=") for a in argv)) or "format=openvino" in argv:
            continue  # OpenVINO compiles cost seconds each: checked above, run by test_backends / test_export_openvino
        argv = [a for a in argv if a.split("=")[0] not in {c.split("=")[0] for c in caps}] + caps
        shape = (argv[0], *sorted(a for a in argv[1:] if a.split("=")[0] not in ("threads", "out", "imgsz")))
        if shape in seen:  # the same command again (another section repeats it): checked above, run once
            continue
        seen.add(shape)
        status = main(argv)
        err = capsys.readouterr().err
        assert status == 0, (line, err[-2000:])
        ran.append(argv[0])
    assert {"train", "val", "predict", "heatmap", "bench", "export", "data"} <= set(ran), ran


def test_readme_yaml_examples_pass_their_key_checks():
    """The README's dataset YAML examples (the NWPU, VOC and COCO split forms) and its model YAML are valid
    as written: dataset keys against the data table, split forms of their format, model keys against the
    model table."""
    import yaml

    from hmpe.utils.keys import check_data_keys, check_model_config

    blocks, inside = [], None
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = [] if line.strip() == "```yaml" else None
            if inside is not None:
                blocks.append(inside)
            continue
        if inside is not None:
            inside.append(line)
    configs = [yaml.safe_load("\n".join(b)) for b in blocks]
    data = [c for c in configs if "format" in c]
    assert {c["format"] for c in data} >= {"nwpu", "voc", "coco"}, configs
    for cfg in data:
        check_data_keys(cfg)
        if cfg["format"] == "coco":
            assert all(set(cfg[s]) == {"ann_file", "img_dir"} for s in ("train", "val"))
    for cfg in (c for c in configs if "base" in c):
        check_model_config(cfg, "README", file=True)
