"""Failures while running that a user causes (issue 35), each one line saying what to do: an output folder
that cannot be written, weights with a tensor that does not fit their config, a URL as the source, output
into a pipe closed early."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import REPO, tiny_data, tiny_model_yaml
from hmpe.cli import main
from test_export import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("errors") / "tiny.pt", imgsz=64)


def _one_line(capsys) -> str:
    """The one error line (after the progress bars of work done before the failure, if any)."""
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("hmpe ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _unwritable(tmp_path):
    """A folder that cannot be created, for root too (root ignores permissions): it would lie under a file."""
    (tmp_path / "afile").write_text("a file, not a folder")
    return tmp_path / "afile" / "sub"


@pytest.mark.parametrize("task", ["train", "predict", "val"])
def test_an_unwritable_output_folder_is_one_line(task, ckpt, tmp_path, capsys):
    project = _unwritable(tmp_path)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 60)).save(image)
    argv = {"train": ["train", f"model={tiny_model_yaml(tmp_path)}", f"data={json.dumps(tiny_data(imgsz=64))}",
                      "imgsz=64", "epochs=1", "workers=0"],
            "predict": ["predict", str(image), f"weights={ckpt}", "save=true"],
            "val": ["val", f"weights={ckpt}"]}[task]
    assert main(argv + [f"project={project}"]) == 1
    err = _one_line(capsys)
    assert f"output folder {project / task}" in err and "choose a writable folder with project=DIR" in err, err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_project_folder_is_one_line(ckpt, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    project = tmp_path / "ro"
    project.mkdir(mode=0o500)
    try:
        assert main(["predict", str(tmp_path / "a.png"), f"weights={ckpt}", f"project={project}"]) == 1
    finally:
        project.chmod(0o700)
    assert "cannot be created or written to" in _one_line(capsys)


def _reshaped(ckpt, tmp_path):
    """The checkpoint with one tensor a row longer, and the tensor's name and shapes."""
    data = torch.load(ckpt, weights_only=False)
    key = "decoder.dec_score_head.0.weight"
    old = data["model"][key]
    data["model"][key] = torch.cat([old, old[:1]])
    path = tmp_path / "reshaped.pt"
    torch.save(data, path)
    return path, key, list(old.shape), [old.shape[0] + 1, *old.shape[1:]]


def test_a_tensor_of_the_wrong_shape_is_one_line(ckpt, tmp_path, capsys):
    from hmpe.engine.checkpoint import load_checkpoint, save_pretrained

    path, key, want, got = _reshaped(ckpt, tmp_path)
    folder = save_pretrained(load_checkpoint(path), tmp_path / "reshaped_pretrained")
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 64)).save(image)
    for weights in (path, folder):  # a .pt and a safetensors folder
        assert main(["predict", str(image), f"weights={weights}"]) == 1
        err = _one_line(capsys)
        assert f"tensor {key} has shape {got} in the file but {want} in the model" in err, err
        assert str(weights) in err


def test_a_url_source_says_urls_are_not_read(ckpt, capsys):
    assert main(["predict", "https://example.com/image.jpg", f"weights={ckpt}"]) == 1
    assert _one_line(capsys) == ("hmpe predict: error: source https://example.com/image.jpg: URLs are not read "
                                 "(hmpe never downloads); download the image first and pass its path")


@pytest.mark.parametrize("argv", [["cfg"], ["--help"]])
def test_output_into_a_closed_pipe_ends_quietly(argv):
    """``hmpe cfg | head``: the reader is gone before hmpe writes (its end of the pipe is closed here first)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "hmpe.cli", *argv], stdout=write, stderr=subprocess.PIPE,
                              cwd=REPO, timeout=120)
    finally:
        os.close(write)
    err = done.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert done.returncode == 141  # 128 + SIGPIPE, as `yes | head` reports
