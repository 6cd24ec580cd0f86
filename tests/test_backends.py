"""hmpe bench backend=...: the same model's latency in PyTorch, ONNX Runtime and OpenVINO in one run."""

import json

import pytest

from helpers import tiny_model_yaml
from hmpe.engine.deploy.backends import interleaved_times, parse_backends


def test_parse_backends():
    assert parse_backends("torch") == ["torch"]
    assert parse_backends("OpenVINO, torch,torch") == ["openvino", "torch"]
    assert parse_backends(["onnxruntime"]) == ["onnxruntime"]
    with pytest.raises(ValueError, match="backend='tensorrt'"):
        parse_backends("torch,tensorrt")


def test_interleaved_times_rotates_and_counts():
    order = []
    fns = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = interleaved_times(fns, warmup=1, runs=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order[3:] == list("abc" "bca" "cab")  # after one warm-up call each


def test_interleaved_times_settle_calls_each_function_before_timing_it():
    order = []
    fns = {n: (lambda n=n: order.append(n)) for n in "ab"}
    times = interleaved_times(fns, warmup=0, runs=2, settle=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    assert order == list("aaa" "bbb" "bbb" "aaa")  # two untimed calls, then the timed one, rotated


def test_cli_bench_backends_in_one_run(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from hmpe.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", f"model={tiny_model_yaml(tmp_path)}", "imgsz=64", "runs=2", "warmup=1", "threads=1", "nc=5",
                 "backend=[torch,onnxruntime,openvino]", f"out={out}"]) == 0
    assert "backends (fused model, 2 interleaved rounds" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"][0]
    assert r["fused"] is True
    assert list(r["backends"]) == ["torch", "onnxruntime", "openvino"]
    for v in r["backends"].values():
        assert v["runs"] == 2 and v["latency_ms_p90"] >= v["latency_ms_median"] > 0
