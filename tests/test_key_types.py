"""The typed key table (hmpe.utils.keys, hmpe.utils.keytypes): every task key declares its type and range, the
command line refuses a wrong value before any work (exit status 2, one line naming the key and value), and the
table agrees with itself (every default, every shipped preset passes it)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hmpe.cli as cli
from hmpe.utils.config import CONFIG_DIR, load_model_config, parse_overrides
from hmpe.utils.keys import MODEL_KEY_TASKS, TASKS, UsageError, check_task_args, check_value
from hmpe.utils.model_keys import MODEL, MODEL_SCALARS
from hmpe.utils.keytypes import Type


@pytest.fixture
def no_work(monkeypatch):
    """Every command replaced by one that records it was reached: a refused command line never gets there."""
    reached = []
    for task in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, task, lambda argv, task=task: reached.append(task) or 0)
    return reached


def typed_keys(task: str) -> list[tuple[str, Type]]:
    """(key, type) of every key ``hmpe TASK`` takes that has a type: its own, and (train / bench) the model's."""
    keys = [(k.name, k.type) for k in TASKS[task]]
    if task in MODEL_KEY_TASKS:
        keys += [(f"{sec}.{k.name}", k.type) for sec, ks in MODEL.items() for k in ks if k.type is not None]
        keys += [(k.name, k.type) for k in MODEL_SCALARS]
    return keys


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def wrong_values(t: Type) -> list[str]:
    """Values typed on a command line that a key of type ``t`` must refuse: wrong types, then out of range."""
    out = [] if t.null else ["null"]
    if t.kind == "int":
        out += ["abc", "2.5", "true", "[1]"]
    elif t.kind == "num":
        out += ["abc", "true", "[1]", "nan", "inf"]
    elif t.kind == "bool":
        out += ["maybe", "1", "0", "[true]"]
    elif t.kind == "text":
        out += ["[a, b]", "{a: 1}"]
    elif t.kind == "choice":
        out += ["nope", "3", "[nope]"]
    elif t.kind in ("list", "one_or_list"):
        out += ["abc", "[abc]"] if t.item.kind != "choice" else ["nope", "[nope]"]
    elif t.kind == "size":
        out += ["abc", "100", "0", "-32", "64.5", "true", "[64, 96]"]
    elif t.kind == "hw":  # lists: [h, w] in export, several sizes in bench (tests/test_renames.py)
        out += ["abc", "100", "64x100", "64x", "true"]
    elif t.kind == "window":
        out += ["abc", "[0.8, 0.2]", "[0.1]", "[0, 1.5]"]
    elif t.kind == "device":
        out += ["gpu", "cuda:x", "1"] + ([] if "auto" in t.choices else ["auto"])
    elif t.kind == "switch":
        out += ["maybe", "1"]
    else:  # model, data, weights, file: a name that is nowhere, and not a path at all
        out += ["no-such-thing.yaml" if t.kind in ("model", "data") else "no-such-thing.pt", "[a]"]
    if t.kind in ("int", "num") and t.lo is not None:
        out.append(_num_text(t.lo) if t.lo_open else _num_text(t.lo - (1 if t.kind == "int" else 0.5)))
    if t.kind in ("int", "num") and t.hi is not None:
        out.append(_num_text(t.hi) if t.hi_open else _num_text(t.hi + (1 if t.kind == "int" else 0.5)))
    if t.kind in ("list", "one_or_list") and t.item.kind in ("int", "num") and t.item.lo is not None:
        out.append(f"[{_num_text(t.item.lo - 1)}]")
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_every_key_is_typed_and_its_default_fits(task):
    for k in TASKS[task]:
        assert k.type is not None, f"hmpe {task}: key {k.name!r} has no type"
        assert k.type.problem(k.default) is None, (task, k.name, k.default, k.type.problem(k.default))
        assert k.type.describe(), (task, k.name)  # what a refusal says the key expects
    check_task_args(task, {k.name: k.default for k in TASKS[task]})


def test_shipped_model_configs_fit_the_model_key_types():
    for path in sorted((CONFIG_DIR / "models").rglob("*.yaml")):
        cfg = load_model_config(str(path))
        for sec, keys in MODEL.items():
            for k in keys:
                value = (cfg.get(sec) or {}).get(k.name) if isinstance(cfg.get(sec), dict) else None
                if k.type is not None and value is not None:
                    assert k.type.problem(value, files=False) is None, (path.name, f"{sec}.{k.name}", value)


@pytest.mark.parametrize("task", list(TASKS))
def test_wrong_values_exit_2_with_one_line_before_any_work(task, no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = 0
    for key, t in typed_keys(task):
        for text in wrong_values(t):
            status = cli.main([task, f"{key}={text}"])
            err = capsys.readouterr().err.strip()
            assert status == 2, (task, key, text, err)
            assert len(err.splitlines()) == 1 and err.startswith(f"hmpe {task}: error: {key}="), (key, text, err)
            assert "expected" in err or "no such" in err or "not a preset" in err or "multiples of" in err \
                or "not an image size" in err, err
            seen += 1
    assert not no_work and seen >= 3 * len(TASKS[task])


def _numeric_keys() -> list[tuple[str, str, Type]]:
    return [(task, key, t) for task in TASKS for key, t in typed_keys(task)
            if t.kind in ("int", "num") and (t.lo is not None or t.hi is not None)]


def _fits(t: Type, x) -> bool:
    """The declared range, read independently of the checker."""
    if isinstance(x, float) and (not math.isfinite(x) or t.kind == "int"):
        return False
    above = t.lo is None or x > t.lo or (x == t.lo and not t.lo_open)
    return above and (t.hi is None or x < t.hi or (x == t.hi and not t.hi_open))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_ranges_property(data, no_work, capsys):
    task, key, t = data.draw(st.sampled_from(_numeric_keys()))
    bound = [b for b in (t.lo, t.hi) if b is not None][0]
    x = data.draw(st.one_of(st.integers(int(bound) - 3, int(bound) + 3), st.integers(-2**40, 2**40),
                            st.floats(allow_nan=True, allow_infinity=True),
                            st.floats(bound - 1, bound + 1)))
    text = str(x) if isinstance(x, int) else repr(x)
    no_work.clear()
    status = cli.main([task, f"{key}={text}"])
    err = capsys.readouterr().err.strip()
    if _fits(t, x):
        assert status == 0 and no_work == [task] and not err, (key, text, err)
    else:
        assert status == 2 and not no_work, (key, text, err)
        assert len(err.splitlines()) == 1 and f"{key}=" in err and "expected" in err, err


@pytest.mark.parametrize("argv,words", [
    (["train", "epochs=0"], ["epochs=0: expected an integer >= 1"]),
    (["train", "epochs=-1"], ["epochs=-1: expected an integer >= 1"]),
    (["train", "lr=abc"], ["lr=abc: expected a number > 0"]),
    (["val", "weights=hmpe-n-nwpu", "batch=0"], ["batch=0: expected an integer >= 1"]),
    (["predict", "a.jpg", "weights=hmpe-n-nwpu", "conf=2"], ["conf=2: expected a number in [0, 1]"]),
    (["predict", "a.jpg", "weights=hmpe-n-nwpu", "conf=-1"], ["conf=-1"]),
    (["predict", "a.jpg", "weights=hmpe-n-nwpu", "max_det=-5"], ["max_det=-5: expected an integer >= 0"]),
    (["predict", "a.jpg", "weights=hmpe-n-nwpu", "merge=max"], ["merge=max: expected nms or wbf"]),
    (["heatmap", "a.jpg", "weights=hmpe-n-nwpu", "level=3"], ["level=3: expected 0, 1, 2 or max"]),
    (["export", "weights=hmpe-n-nwpu", "format=tflite"], ["format=tflite: expected onnx, openvino or safetensors"]),
    (["train", "device=gpu"], ["device=gpu: expected auto, cpu, cuda or cuda:N"]),
    (["train", "ema=1"], ["ema=1: expected true or false"]),
    (["train", "model=nonexistent"], ["model=nonexistent: not a preset", "rtdetr-n", "nor a model YAML"]),
    (["train", "model=best.pt"], ["use weights=best.pt"]),
    (["train", "data=nowhere.yaml"], ["data=nowhere.yaml: no such dataset YAML", "shipped: nwpu-vhr10"]),
    (["train", "resume=gone/last.pt"], ["resume=gone/last.pt: no such file"]),
    (["val", "weights=gone.pt"], ["weights=gone.pt: no such file or folder", "shipped: hmpe-n-nwpu"]),
    (["train", "decoder.num_layers=0"], ["decoder.num_layers=0: expected an integer >= 1"]),
    (["train", "decoder={num_queries: 0}"], ["decoder.num_queries=0: expected an integer >= 1"]),
    (["train", "epochs=3", "epochs=5"], ["epochs given twice (epochs=3 and epochs=5); give it once"]),
    (["train", "model=rtdetr-n", "weights=hmpe-n-nwpu"], ["model=rtdetr-n and weights=hmpe-n-nwpu", "drop model="]),
    (["predict", "a.jpg", "source=b.jpg", "weights=x"], ["SOURCE given twice (a.jpg and source=b.jpg)"]),
    (["train", "foo"], ["argument 'foo': expected key=value"]),
])
def test_named_mistakes_exit_2_with_one_line(argv, words, no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hmpe {argv[0]}: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert not no_work


def test_valid_command_lines_pass(no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"")
    (tmp_path / "m.yaml").write_text("base: rtdetr-n\n")
    for argv in (["train", "epochs=1", "lr=1e-3", "milestones=[0.5, 0.9]", "amp=false", "name=2", "model=m.yaml"],
                 ["train", "weights=best.pt", "data={format: synthetic, num_train: 2}", "multi_scale=[64, 96]"],
                 ["val", "weights=hmpe-n-nwpu", "batch=2", "imgsz=64", "device=cuda:1"],
                 ["predict", "x.jpg", "weights=best.pt", "conf=0", "max_det=0", "slice=256", "merge=wbf"],
                 ["heatmap", "x.jpg", "weights=best.pt", "level=max"], ["export", "weights=best.pt", "imgsz=[64, 96]"],
                 ["bench", "imgsz=512x640", "batch=[1, 4]", "backend=[torch, openvino]"],
                 ["bench", "sizes=[512x640, 320]"], ["explore", "weights=best.pt", "source=nwpu-vhr10", "port=0"],
                 ["data", "stats", "synthetic", "splits=[val]"],
                 ["data", "convert", "data=synthetic", "to=coco", "out=o"]):
        assert cli.main(argv) == 0, argv
    assert no_work == ["train", "train", "val", "predict", "heatmap", "export", "bench", "bench", "explore", "data",
                       "data"]


def test_numbers_typed_for_text_keys_stay_text():
    assert parse_overrides(["name=2", "epochs=2", "project=2024"], "train") == {"name": "2", "epochs": 2,
                                                                                "project": "2024"}
    assert parse_overrides(["name=2"]) == {"name": 2}  # no task: plain YAML
    with pytest.raises(UsageError, match="name given twice"):
        parse_overrides(["name=a", "name=b"])


def test_files_false_checks_the_form_only():
    check_task_args("train", {"weights": "not-here.pt", "data": "nowhere.yaml", "resume": "x/last.pt"}, files=False)
    with pytest.raises(UsageError, match=r"weights=\[1\]"):
        check_task_args("val", {"weights": [1]}, files=False)
    with pytest.raises(UsageError, match="no such file"):
        check_value("train", "resume", "x/last.pt")


def test_the_api_checks_its_keys_before_loading(tmp_path):
    from hmpe.api import Detector

    det = Detector(weights=str(tmp_path / "never-read.pt"), device="cpu")  # nothing is loaded before the check
    with pytest.raises(UsageError, match="format=tflite: expected onnx, openvino or safetensors"):
        det.export(format="tflite")
    with pytest.raises(UsageError, match="level=5: expected 0, 1, 2 or max"):
        det.heatmap([], level=5)
    with pytest.raises(UsageError, match="port=70000"):
        det.explore([], port=70000, block=False)
    with pytest.raises(UsageError, match="epochs=0"):
        Detector("rtdetr-n").train(epochs=0, project=str(tmp_path))
    assert det._model is None


def test_a_refused_command_line_does_not_import_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "hmpe.cli", "train", "epochs=0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "epochs=0: expected an integer >= 1" in r.stderr
    imported = [ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    assert imported and not [m for m in imported if m == "torch" or m.startswith("torch.")]
