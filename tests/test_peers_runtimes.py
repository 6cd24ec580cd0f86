"""python -m benchmarks.peers --fuse --backends ...: every model in each runtime, in one interleaved run (smoke)."""

import json
from pathlib import Path

import pytest


def test_peers_runtimes_smoke(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from benchmarks import peers

    out = peers.main(["--smoke", "--threads", "1", "--fuse", "--backends", "torch,onnxruntime,openvino",
                      "--models", "hmpe-n", "--workdir", str(tmp_path)])
    saved = json.loads(Path(out["markdown"]).with_suffix(".json").read_text())
    assert saved["date"] and saved["cpu"] and {"torch", "onnxruntime", "openvino"} <= set(saved["versions"])
    assert saved["backends"] == ["torch", "onnxruntime", "openvino"]
    assert saved["deployed"]["hmpe-n"].startswith("hmpe fuse()")
    lat = saved["latency"]["1"]
    for key in ("hmpe-n", "hmpe-n@onnxruntime", "hmpe-n@openvino"):
        assert lat[key]["median_ms"] > 0 and len(lat[key]["times_ms"]) == 2, key
    md = Path(out["markdown"]).read_text()
    assert "| hmpe-n |" in md and "best deployed" in md
