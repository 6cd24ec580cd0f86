"""One error path for the command line: every user error is one line naming the thing and what to do,
exit status 2 for a command line that cannot work as typed (checked before anything loads), 1 for a
failure while running; no traceback unless verbose=true."""

from __future__ import annotations

import pytest
import torch

from hmpe.cli import main

SYNTH = "data={format: synthetic, num_train: 2, num_val: 2, imgsz: 64}"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from test_export import make_checkpoint

    return str(make_checkpoint(tmp_path_factory.mktemp("cli") / "tiny.pt", imgsz=64))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "notes.pt"
    path.write_text("not a checkpoint\n")
    return str(path)


CASES = [  # (argv, exit status, words the one line must contain)
    (["train", "epoch=1"], 2, ["unknown key 'epoch'", "did you mean 'epochs'"]),
    (["train", "decoder.num_layer=3"], 2, ["'decoder.num_layer'", "did you mean 'decoder.num_layers'"]),
    (["predict", "x.jpg", "weights={ckpt}", "confidence=0.3"], 2, ["'confidence'", "did you mean 'conf'"]),
    (["predict", "weights={ckpt}"], 2, ["a SOURCE is required", "usage: hmpe predict"]),
    (["val"], 2, ["weights=PATH is required"]),
    (["export", "weights={ckpt}", "imgsz=100"], 2, ["imgsz=100", "multiples of 32", "use 96 or 128"]),
    (["train", "imgsz=100", "epochs=1"], 2, ["imgsz=100", "multiples of 32"]),
    (["nosuchtask"], 2, ["unknown task 'nosuchtask'"]),
    (["val", "weights={text}"], 1, ["notes.pt"]),
    (["val", "weights=missing.pt"], 2, ["missing.pt", "no such file"]),  # files named are checked before work
    (["train", "data=missing.yaml", "epochs=1"], 2, ["missing.yaml", "no such dataset YAML"]),
    (["train", "device=cuda", "epochs=1", SYNTH], 1, ["device=cuda: no CUDA device here; use device=cpu"]),
]


@pytest.mark.parametrize("argv,status,words", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_user_errors_are_one_line(argv, status, words, ckpt, text_file, capsys, tmp_path, monkeypatch):
    if "device=cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.chdir(tmp_path)  # nothing is written where the tests run
    argv = [a.replace("{ckpt}", ckpt).replace("{text}", text_file) for a in argv]
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "runs").exists()  # failed before any run folder was made


def test_verbose_shows_the_traceback(capsys):
    from hmpe.utils.keys import ConfigKeyError

    with pytest.raises(ConfigKeyError, match="did you mean 'epochs'"):
        main(["train", "epoch=1", "verbose=true"])


def test_task_help_lists_its_keys(capsys):
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hmpe predict SOURCE weights=best.pt") and "max_det: null" in out
    assert "# detections kept per image" in out and "epochs" not in out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 10" in out and "# training epochs" in out and "``" not in out and "model keys" in out
    assert main(["--help"]) == 0 and "``" not in capsys.readouterr().out


def test_val_says_conf_is_ignored_without_slices(ckpt, tmp_path, capsys):
    assert main(["val", f"weights={ckpt}", "conf=0.3", f"project={tmp_path}"]) == 0
    assert "conf= applies to sliced evaluation (slice=N) only" in capsys.readouterr().err


def test_predict_keeps_max_det_highest_scores(ckpt, tmp_path):
    from PIL import Image

    from hmpe.api import Detector

    Image.new("RGB", (64, 48), (90, 120, 60)).save(tmp_path / "a.jpg")
    det = Detector(weights=ckpt, device="cpu")
    every = det.predict(tmp_path / "a.jpg", conf=0.0, max_det=0, save=False)[0]
    top = det.predict(tmp_path / "a.jpg", conf=0.0, max_det=5, save=False)[0]
    assert len(every.scores) > 5 and len(top.scores) == 5
    assert sorted(top.scores.tolist(), reverse=True) == sorted(every.scores.tolist(), reverse=True)[:5]


def test_api_checks_imgsz_too(ckpt):
    from hmpe.api import Detector
    from hmpe.utils.keys import UsageError

    with pytest.raises(UsageError, match="imgsz=100: sizes must be multiples of 32"):
        Detector(weights=ckpt, device="cpu").predict([], imgsz=100)
