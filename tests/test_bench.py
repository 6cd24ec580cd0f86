"""``hmpe bench`` / hmpe.engine.deploy.bench on a tiny config: every figure present and consistent."""

import json

import pytest
import torch
from torch import nn

from helpers import tiny_model_cfg, tiny_model_yaml
from hmpe.engine.deploy.bench import (PeakTensorMemory, benchmark_model, count_gflops, format_report, param_split,
                               peak_forward_memory, percentile)
from hmpe.models.detector import build_model


def test_gflops_are_two_flops_per_mac():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = torch.rand(1, 8, 10, 10)
    macs = 16 * 10 * 10 * 8 * 3 * 3
    assert count_gflops(conv, x) * 1e9 == pytest.approx(2 * macs)
    lin = nn.Linear(32, 4)
    assert count_gflops(lin, torch.rand(5, 32)) * 1e9 == pytest.approx(2 * 5 * 32 * 4)


def test_peak_memory_counts_live_activations_only():
    # two 1 MiB activations alive at once at most (the weight views do not count)
    m = nn.Sequential(nn.Linear(256, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 1024))
    x = torch.rand(256, 256)
    peak = peak_forward_memory(m, x)
    assert 1.9 <= peak <= 3.1
    with torch.no_grad(), PeakTensorMemory(exclude=[*m.parameters(), x]) as tr:
        y = m(x)
        assert tr.live == y.numel() * 4  # only the output is still alive
    del y


def test_percentile_matches_numpy():
    import numpy as np

    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    assert percentile(xs, 0.9) == pytest.approx(np.percentile(xs, 90))
    assert percentile(xs, 0.5) == pytest.approx(np.median(xs))


def test_benchmark_model_tiny_with_heatmap():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # timing mechanics only; 2 threads crawl on a loaded 2-core machine
    try:
        _check_tiny_with_heatmap()
    finally:
        torch.set_num_threads(threads)


def _check_tiny_with_heatmap():
    torch.manual_seed(0)
    cfg = tiny_model_cfg()
    cfg["heatmap"] = {"enabled": True}
    model = build_model(cfg, 5)
    r = benchmark_model(model, 64, batch=2, warmup=1, runs=3)
    split = param_split(model)
    assert set(split) >= {"backbone", "encoder", "decoder", "heatmap", "total"}
    assert sum(v for k, v in split.items() if k != "total") == split["total"] == r["params"]
    assert r["split_mb"]["total"] == pytest.approx(r["params"] * 4 / 2**20)
    assert r["gflops"] > 0
    assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0
    assert r["throughput_img_s"] == pytest.approx(2 / (r["latency_ms_median"] / 1e3))
    assert r["peak_mem_mb"] > 0
    text = format_report("tiny", r)
    for word in ("GFLOPs", "median", "p90", "throughput", "backbone", "encoder", "decoder", "heatmap", "MB"):
        assert word in text


def test_cli_bench_saves_json(tmp_path, capsys):
    from hmpe.cli import main

    out = tmp_path / "bench.json"  # threads=1 is undone by conftest's _restore_torch_threads
    assert main(["bench", f"model={tiny_model_yaml(tmp_path)}", "sizes=[64,96]", "batch=1", "runs=2", "warmup=1",
                 "threads=1", "nc=5", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("GFLOPs") == 2
    data = json.loads(out.read_text())
    assert [r["imgsz"] for r in data["results"]] == ["64x64", "96x96"]
    assert data["environment"]["cpu"]
    keys = {"latency_ms_median", "latency_ms_p90", "throughput_img_s", "peak_mem_mb", "split"}
    assert keys <= set(data["results"][0])


@pytest.mark.parametrize("present, named", [
    ({"avx2"}, "AVX2"),
    ({"avx2", "avx512", "vnni", "avx512_bf16", "amx_tile"}, "AVX-512, VNNI, AVX512-BF16, AMX"),
    ({"avx2", "avx512", "vnni"}, "AVX-512, VNNI"),
])
def test_result_files_name_the_cpus_vector_instructions(monkeypatch, present, named):
    """Speed differs several-fold between CPUs of one model name (an AMD EPYC with AVX2 only, one with AVX-512
    and AVX512-BF16): ``environment()["cpu"]`` names the instruction sets torch's probes find."""
    from hmpe.engine.deploy.bench import environment
    from hmpe.utils.runtime import CPU_FEATURES

    for probe, _ in CPU_FEATURES:
        monkeypatch.setattr(torch.cpu, probe, lambda p=probe: p[len("_is_"):-len("_supported")] in present)
    assert environment()["cpu"].endswith(f" ({named})")
