"""The benchmark scripts in smoke mode, so that they do not rot.

benchmarks.ablation and benchmarks.peers (speed part and training part) run end to end on tiny
synthetic data at 64 px. The ultralytics / transformers rows are skipped (with the script's message)
where those optional packages are absent (CI installs only ``.[dev]``). One torch thread: on a shared
2-core machine, 2-thread parallel regions wait for descheduled threads and get many times slower.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hmpe.utils.config import model_presets

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """``benchmarks.NAME`` (the repository root is on sys.path: pytest's ``pythonpath``), from this checkout."""
    mod = importlib.import_module(f"benchmarks.{name}")
    assert BENCH in Path(mod.__file__).resolve().parents, mod.__file__
    return mod


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _skip_reasons_ok(skipped, optional_pkgs=("ultralytics", "transformers")):
    """Only two reasons to skip a row: a preset this checkout lacks, or an optional package absent."""
    for name, why in skipped:
        assert "not a preset" in why or any(f"{p} is not installed" in why for p in optional_pkgs), (name, why)
        for p in optional_pkgs:
            if f"{p} is not installed" in why:
                assert importlib.util.find_spec(p) is None, why


def test_row_specs():
    common = _load("_common")
    assert common.parse_row_spec("rtdetr-n") == ("rtdetr-n", {})
    spec = "rtdetr-n:decoder.num_layers=3,backbone.strip_conv={kind: lsconv, stages: [3, 4]}"
    model, over = common.parse_row_spec(spec)
    assert model == "rtdetr-n"
    assert over == {"decoder.num_layers": 3, "backbone.strip_conv": {"kind": "lsconv", "stages": [3, 4]}}
    peers = _load("peers")
    assert peers.split_models("hmpe-n,rtdetr-n:decoder.num_layers=3,eval_idx=1,yolo11n") == [
        "hmpe-n", "rtdetr-n:decoder.num_layers=3,eval_idx=1", "yolo11n"]
    with pytest.raises(common.SkipRow, match="not a preset"):
        common.load_hmpe_model_config("no-such-preset")


def test_no_network_guard_refuses_connections():
    import socket

    common = _load("_common")
    with common.no_network() as attempts:
        with pytest.raises(common.NetworkAttempt):
            socket.getaddrinfo("example.com", 443)
    assert attempts and "example.com" in attempts[0]
    assert socket.getaddrinfo is not None and "refuse" not in getattr(socket.getaddrinfo, "__qualname__", "")


def test_ablation_smoke_and_resume(tmp_path, one_thread):
    ablation = _load("ablation")
    args = ["--smoke", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
            "--train-args", "plots=false"]  # the end-of-run figures cost more than a smoke run
    out = ablation.main(args)
    rows = [r["name"] for r in ablation.load_rows(ablation.ROWS_FILE) if not r["optional"]]
    assert rows == ["baseline", "+DSConv", "+LSConv", "+MOHFE", "+HIDQ"]
    assert set(out["results"]) | {n for n, _ in out["skipped"]} == set(rows)
    assert "baseline" in out["results"] and "+LSConv" in out["results"]
    _skip_reasons_ok(out["skipped"])
    md = Path(out["markdown"]).read_text()
    for key in ("| baseline |", "mAP50-95", "Δ mAP50", "command:", "CPU:", "AP_S in", "objects per size bucket"):
        assert key in md
    # the mask column: the heatmap rows' S4/S5 fractions, "-" for the rows without a heatmap
    line = {ln.split(" | ")[0].strip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert " S5 " in line["+MOHFE"] and "| - |" in line["baseline"]
    for runs in out["results"].values():
        (r,) = runs  # one seed
        assert set(r["metrics"]) >= {"precision", "recall", "mAP50", "mAP50_95"}
        assert r["epochs"] == 1 and r["params"] > 0 and r["gflops"] > 0 and r["seed"] == 0
        assert r["model_config"] == ablation.model_config_record(next(
            row for row in ablation.load_rows(ablation.ROWS_FILE) if row["name"] == r["name"]))
    combined = json.loads(Path(out["markdown"]).with_suffix(".json").read_text())
    assert {"date", "cpu", "versions", "budget_min", "imgsz", "rows"} <= set(combined)
    entry = next(e for e in combined["rows"] if e["row"] == "+MOHFE")  # a heatmap row: mask fractions per level
    assert set(entry["mask_bg_masked"]) == {"S3", "S4", "S5"} and set(entry["mask_obj_hot"]) == {"S3", "S4", "S5"}
    assert next(e for e in combined["rows"] if e["row"] == "baseline")["mask_bg_masked"] is None

    # resumable: a (row, seed) with a result is read back; one without resumes from its last.pt
    (tmp_path / "res" / "baseline-seed0.json").unlink()
    again = ablation.main(args + ["--rows", "baseline", "+DSConv"])
    assert again["results"]["baseline"][0]["resumed"] is True
    assert again["results"]["baseline"][0]["metrics"] == out["results"]["baseline"][0]["metrics"]
    assert again["results"]["+DSConv"] == out["results"]["+DSConv"]  # read back, not rerun

    # --report-only trains nothing: seed 1 was never run and is listed as missing
    report = ablation.main(args + ["--rows", "baseline", "--seeds", "0", "1", "--report-only"])
    assert [r["seed"] for r in report["results"]["baseline"]] == [0]
    assert report["skipped"] == [("baseline", "seed 1: no stored result (--report-only)")]
    assert not (tmp_path / "res" / "baseline-seed1.json").exists()


def test_ablation_reuses_a_stored_result_only_of_the_same_model_config(tmp_path, capsys):
    """A preset edited after a row was trained (a new default) must not pass off the old result as the new one."""
    ablation = _load("ablation")
    row = {"name": "hmpe-n", "model": "hmpe-n", "overrides": {}}
    today = ablation.model_config_record(row)
    assert today["heatmap"]["enabled"] is True and "name" not in today
    edited = ablation.model_config_record(dict(row, overrides={"heatmap.tau": 0.5}))
    assert edited != today
    settings = {"seed": 0, "model": "hmpe-n"}
    path = tmp_path / "hmpe-n-seed0.json"
    path.write_text(json.dumps({"model": "hmpe-n", "settings": settings, "model_config": today}))
    assert ablation.stored_result(path, settings, False, "hmpe-n", today)["model_config"] == today
    assert ablation.stored_result(path, settings, False, "hmpe-n", edited) is None
    assert "another config of 'hmpe-n'" in capsys.readouterr().out
    assert ablation.stored_result(path, {"seed": 1, "model": "hmpe-n"}, False, "hmpe-n", today) is None
    assert ablation.stored_result(path, settings, True, "hmpe-n", today) is None  # --force
    # a result stored before results recorded their config is reused, and says that it was not compared
    path.write_text(json.dumps({"model": "hmpe-n", "settings": settings}))
    assert ablation.stored_result(path, settings, False, "hmpe-n", edited) is not None
    assert "not compared" in capsys.readouterr().out
    assert ablation.model_config_record({"name": "x", "model": "no-such-preset", "overrides": {}}) is None


def test_ablation_settings_ignore_train_args_that_only_change_what_a_run_writes():
    """``plots=false`` (or exist_ok) leaves what a run learns as it was: stored results stay reusable."""
    ablation = _load("ablation")
    row = {"name": "hmpe-n", "model": "hmpe-n", "overrides": {}}

    def args(*train_args):
        return argparse.Namespace(smoke=False, budget_minutes=35.0, imgsz=512, batch=8, data_value="nwpu-vhr10",
                                  seed=0, train_args=list(train_args), max_epochs=1000)

    typed = ablation.settings(row, args("amp=bf16", "plots=false", "lr=8e-4", "exist_ok=true"))
    assert typed == ablation.settings(row, args("amp=bf16", "lr=8e-4"))
    assert typed["train_args"] == ["amp=bf16", "lr=8e-4"]
    assert ablation.settings(row, args("amp=bf16", "lr=1e-3")) != typed  # a key that changes learning still counts


def test_ablation_epochs_replace_the_time_budget(tmp_path):
    """--epochs N: every row trains N epochs (no time_limit), recorded so that a timed result is not reused."""
    ablation = _load("ablation")
    row = {"name": "hmpe-n", "model": "hmpe-n", "overrides": {}}
    common = ["--results-dir", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path / "a.md")]
    fixed, timed = ablation.parse_args(["--epochs", "10", *common]), ablation.parse_args(common)
    fixed.seed = timed.seed = 0  # main sets it for each run
    assert (fixed.budget_minutes, fixed.max_epochs) == (None, 10)
    cfg = ablation.train_config(row, fixed)
    assert cfg["time_limit"] is None and cfg["epochs"] == 10
    assert ablation.settings(row, fixed)["epochs"] == 10
    assert ablation.settings(row, fixed) != ablation.settings(row, timed)
    assert "10 epochs per run" in ablation.budget_text(fixed)
    with pytest.raises(SystemExit):
        ablation.parse_args(["--epochs", "0", *common])


def test_peers_speed_smoke(tmp_path, one_thread):
    peers = _load("peers")
    out = peers.main(["--smoke", "--threads", "1", "--workdir", str(tmp_path)])
    names = {m["name"] for m in out["models"]}
    assert "rtdetr-n" in names
    _skip_reasons_ok(out["skipped"])
    if importlib.util.find_spec("ultralytics"):
        assert {"yolo11n", "rtdetr-l"} <= names
    if importlib.util.find_spec("transformers"):
        assert "dfine-n" in names
        dfine = next(m for m in out["models"] if m["name"] == "dfine-n")
        assert 3.6e6 < dfine["params"] < 3.9e6  # D-FINE-N: 3.7-3.8M parameters
    for m in out["models"]:
        assert m["params"] > 0 and m["gflops"] > 0
        assert out["latency"]["1"][m["name"]]["median_ms"] > 0
    md = Path(out["markdown"]).read_text()
    assert "| rtdetr-n |" in md and "GFLOPs" in md and "versions:" in md
    saved = json.loads(Path(out["markdown"]).with_suffix(".json").read_text())
    assert saved["imgsz"] == 64 and saved["settle"] == 1
    assert "after 1 untimed call(s) of the same model" in md


def test_peers_timing_arguments_are_checked(capsys):
    peers_cli = _load("peers.cli")
    with pytest.raises(SystemExit):
        peers_cli.parse_args(["--settle", "-1"])
    assert "--settle -1" in capsys.readouterr().err


def test_peers_yolo_run_folder_is_absolute_for_a_relative_workdir(tmp_path, monkeypatch):
    """ultralytics nests a relative ``project`` under its own runs folder: a relative --workdir lost the YOLO
    calibration's results.csv (a 150-minute run died on it)."""
    from benchmarks.peers.train_yolo import yolo_train_args

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(imgsz=64, batch=2, workers=0, seed=0)
    got = yolo_train_args(args, Path("data.yaml"), Path("runs") / "peers")
    assert Path(got["project"]).is_absolute()
    assert Path(got["project"]) == (tmp_path / "runs" / "peers" / "ultralytics").resolve()


def test_peers_train_smoke(tmp_path, one_thread):
    """Part B end to end with learning curves, then the combined result file made from its run JSON."""
    peers = _load("peers")
    hmpe_row = "hmpe-n" if "hmpe-n" in model_presets() else "rtdetr-n"
    runs = tmp_path / "peers_train"
    out = peers.main(["--train", "--smoke", "--threads", "1", "--workdir", str(tmp_path), "--curve-every", "1",
                      "--models", f"{hmpe_row},yolo11n,dfine-n", "--out", str(runs / "smoke_s0.md")])
    _skip_reasons_ok(out["skipped"])
    expected = {hmpe_row}
    expected |= {"yolo11n"} if importlib.util.find_spec("ultralytics") else set()
    expected |= {"dfine-n"} if importlib.util.find_spec("transformers") else set()
    assert set(out["results"]) == expected
    for name, r in out["results"].items():
        assert r["epochs"] == 1, name
        assert {"precision", "recall", "mAP50", "mAP50_95", "AP_small"} <= set(r["metrics"]), name
        if name != "dfine-n":  # curves: hmpe rows and yolo11n, closed by the final weights' metrics
            assert [p["epoch"] for p in r["curve"]] == [1], name
            assert r["curve"][-1]["mAP50"] == pytest.approx(float(r["metrics"]["mAP50"])), name
    md = Path(out["markdown"]).read_text()
    assert f"| {hmpe_row} |" in md

    combined = _load("peers.combine").main(["--runs", str(runs), "--minutes", "0.1", "--imgsz", "64",
                                            "--out", str(tmp_path / "peers_train.json")])
    saved = json.loads((tmp_path / "peers_train.json").read_text())
    assert saved == json.loads(json.dumps(combined))
    assert {"date", "cpu", "versions", "budget_min", "imgsz", "runs"} <= set(saved) and saved["imgsz"] == 64
    assert {r["model"] for r in saved["runs"]} == expected
    for r in saved["runs"]:
        assert {"model", "seed", "epochs", "mAP50", "mAP50_95", "AP_small", "precision", "recall"} <= set(r)
    assert (tmp_path / "peers_train.png").stat().st_size > 0  # the curve figure

    # the ablation takes the same-setting peers run of a bare-preset row instead of training it again
    ablation = _load("ablation")
    row = next(r["name"] for r in ablation.load_rows(ablation.ROWS_FILE) if r["model"] == hmpe_row and not r["overrides"])
    abl = ablation.main(["--smoke", "--budget-minutes", "0.1", "--rows", row, "--from-peers", str(runs),
                         "--runs-dir", str(tmp_path / "abl-runs"), "--results-dir", str(tmp_path / "abl")])
    (taken,) = abl["results"][row]
    assert taken["source"].endswith("smoke_s0.json") and not (tmp_path / "abl-runs").exists()
    assert taken["metrics"]["mAP50"] == pytest.approx(float(out["results"][hmpe_row]["metrics"]["mAP50"]))


def test_peers_combine_seeds_and_machines(tmp_path):
    """Mean and spread over seeds per model; runs from another CPU model or another budget are not mixed in."""
    combine = _load("peers.combine")

    def run(name, seed, map50, cpu="cpu A", minutes=35.0, **more):
        metrics = {"mAP50": map50, "mAP50_95": map50 / 2, "AP_small": 0.1, "precision": 0.5, "recall": 0.4, **more}
        settings = {"date": "2026-12-02 01:00 UTC", "cpu": cpu, "versions": {"torch": "x"}, "seed": seed,
                    "minutes": minutes, "imgsz": 512, "batch": 8, "threads": 1}
        (tmp_path / f"{name}_{seed}_{cpu[-1]}_{minutes:g}.json").write_text(json.dumps(
            {name: {"epochs": 4, "train_min": 35.0, "params": 1, "metrics": metrics}, "_settings": settings}))

    run("hmpe-n", 0, 0.30)
    run("hmpe-n", 1, 0.20)
    run("yolo11n", 0, 0.25)
    run("yolo11n", 1, 0.99, minutes=150.0)
    result = combine.combine(tmp_path, 35.0, 512)
    by_model = {s["model"]: s for s in result["summary"]}
    assert by_model["hmpe-n"]["seeds"] == [0, 1]
    assert by_model["hmpe-n"]["mAP50"] == pytest.approx(0.25) and by_model["hmpe-n"]["mAP50_spread"] == pytest.approx(0.1)
    assert by_model["yolo11n"]["mAP50"] == pytest.approx(0.25) and by_model["yolo11n"]["mAP50_spread"] == 0
    md = combine.markdown(result, None)
    assert "0.250 ± 0.100" in md and "objects per size bucket" not in md  # runs stored before the size figures
    assert next(ln for ln in md.splitlines() if ln.startswith("| hmpe-n |")).endswith("| n/a |")  # AP_S in
    counts = dict(n_small=26, n_medium=400, n_large=196, n_small_input=216, n_medium_input=380, n_large_input=26)
    run("dfine-n", 0, 0.3, AP_small_input=0.2, **counts)
    md = combine.markdown(combine.combine(tmp_path, 35.0, 512), None)
    assert "26/400/196 in native pixels, 216/380/26 at the model's input" in md
    assert next(ln for ln in md.splitlines() if ln.startswith("| dfine-n |")).endswith("| 0.100 | 0.200 |")
    run("yolo11n", 1, 0.2, cpu="cpu B")
    with pytest.raises(SystemExit, match="different CPUs"):
        combine.combine(tmp_path, 35.0, 512)
    with pytest.raises(SystemExit, match="no run"):
        combine.combine(tmp_path, 35.0, 640)


def test_compare_runs(tmp_path, one_thread):
    """Two finished runs side by side: metrics read back from results.csv, decoder timed on captured inputs."""
    from helpers import tiny_data, tiny_model_cfg, tiny_train_cfg

    from hmpe.engine.train.trainer import Trainer

    compare = _load("compare_runs")
    runs = []
    for name, layers in (("six", 2), ("three", 1)):
        cfg = tiny_train_cfg(tmp_path, name=name, epochs=1, imgsz=64, data=tiny_data(imgsz=64), val_interval=1)
        trainer = Trainer(cfg, tiny_model_cfg(num_layers=layers))
        trainer.fit()
        runs.append(trainer.run_dir)

    # the decoder fed the captured inputs gives the model's own outputs
    model, _ = compare.load_run_model(runs[0])
    x = torch.rand(1, 3, 64, 64)
    args, kwargs = compare.capture_decoder_call(model, x)
    with torch.no_grad():
        assert torch.equal(model.decoder(*args, **kwargs)["pred_logits"], model(x)["pred_logits"])

    assert compare.ratio_to_first([[1.0, 2.0, 4.0], [0.5, 1.0, 3.0]]) == [1.0, 0.5]
    out = tmp_path / "compare.md"
    assert compare.main([str(r) for r in runs] + ["--imgsz", "64", "--rounds", "2", "--runs-per-round", "1",
                                                 "--out", str(out)]) == 0
    md = out.read_text()
    assert "| six |" in md and "| three |" in md and "command:" in md and "CPU:" in md
    rows = compare.compare(runs, imgsz=64, rounds=2, runs=1, warmup=0)
    assert rows[0]["decoder_latency_ratio"] == 1.0 and rows[0]["latency_ratio"] == 1.0
    assert [r["decoder_layers"] for r in rows] == [2, 1]
    assert rows[1]["decoder_params"] < rows[0]["decoder_params"] < rows[0]["params"]
    assert rows[1]["decoder_gflops"] < rows[0]["decoder_gflops"] < rows[0]["gflops"]
    for r, run in zip(rows, runs):
        assert r["epochs"] == 1
        assert r["mAP50"] == compare.final_metrics(run / "results.csv")["mAP50"]
        assert 0.0 <= r["mAP50_95"] <= r["mAP50"] <= 1.0


def test_flops_by_module(one_thread, capsys):
    from hmpe.engine.deploy.bench import count_gflops
    from hmpe.models.detector import build_model
    from hmpe.utils.config import load_model_config

    fbm = _load("flops_by_module")
    model = build_model(load_model_config("hmpe-n"), 10)
    total, parts = fbm.flops_by_module(model, 64)
    assert total == pytest.approx(count_gflops(model, torch.randn(1, 3, 64, 64)))  # the bench convention
    top = {k: v for k, v in parts.items() if "." not in k}
    assert {"backbone", "heatmap", "mohfe", "decoder"} <= set(top) and "encoder" not in top
    assert 0 < sum(top.values()) < total  # the encoder's parts are the rest
    assert parts["decoder.decoder"] < parts["decoder"]
    fbm.main(["hmpe-n", "--imgsz", "64", "--depth", "1", "--min-share", "0"])
    out = capsys.readouterr().out
    assert "GFLOPs at 64x64" in out and "  decoder " in out and "the encoder" in out
    thin = fbm.main(["hmpe-n", "backbone.width=0.5", "--imgsz", "64", "--depth", "1", "--min-share", "0"])
    assert "hmpe-n backbone.width=0.5:" in capsys.readouterr().out
    assert thin["backbone"] < parts["backbone"] / 2 and thin["decoder"] == pytest.approx(parts["decoder"])


def test_every_benchmark_module_imports_from_the_package():
    """Each script is a module of the ``benchmarks`` package (``python -m benchmarks.NAME``), none edits sys.path."""
    names = [p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"] + ["peers"]
    for name in names:
        mod = _load(name)
        assert "sys.path" not in Path(mod.__file__).read_text(), name
    for p in (BENCH / "peers").glob("*.py"):
        assert "sys.path" not in p.read_text() and len(p.read_text().splitlines()) < 500, p.name
        if p.stem != "__main__":  # importing __main__ runs the benchmark
            importlib.import_module(f"benchmarks.peers.{p.stem}")


def test_command_line_names_the_module(monkeypatch):
    common = _load("_common")
    monkeypatch.setattr("sys.argv", [str(BENCH / "peers" / "__main__.py"), "--smoke", "--models", "a b"])
    assert common.command_line() == "python -m benchmarks.peers --smoke --models 'a b'"
    monkeypatch.setattr("sys.argv", [str(BENCH / "lsconv_bench.py")])
    assert common.command_line(["--rounds", "1"]) == "python -m benchmarks.lsconv_bench --rounds 1"


def test_heatmap_overhead_smoke(tmp_path, one_thread):
    ho = _load("heatmap_overhead")
    out = tmp_path / "ho.md"
    text = ho.main(["--model", "rtdetr-n-heat", "--imgsz", "64", "--threads", "1", "--repeats", "1",
                    "--warmup", "0", "--out", str(out)])
    assert out.read_text() == text
    assert "## 1 thread" in text and "| A: rtdetr-n-heat (with heatmap path) |" in text and "**A / B = " in text


def test_step_compare_smoke(tmp_path, one_thread):
    sc = _load("step_compare")
    out = tmp_path / "steps.md"
    times = sc.main(["--smoke", "--variants", "channels_last=false", "channels_last=true decoder.num_denoising=0",
                     "--out", str(out)])
    assert list(times) == ["channels_last=false", "channels_last=true decoder.num_denoising=0"]
    assert all(len(t) == 2 and min(t) > 0 for t in times.values())
    text = out.read_text()
    assert "| `channels_last=false` |" in text and "1.00x" in text and "images/s" in text
    # a variant's model= builds that preset, not --model
    args = sc.parse_args(["--variants", "x", "--data", "synthetic", "--imgsz", "64", "--batch", "2"])
    trainer = sc.build_trainer(args, "model=ablation/rtdetr-n-3l", tmp_path / "m", 0)
    assert trainer.model_cfg["decoder"]["num_layers"] == 3 and not (trainer.model_cfg.get("heatmap") or {})
    # and the report's header names the presets the variants built
    assert sc.variant_models(["amp=bf16", "model=ablation/rtdetr-n-3l amp=bf16", "lr=1e-3"], "hmpe-n") == \
        ["hmpe-n", "ablation/rtdetr-n-3l"]
    assert sc.variant_models(["model=rtdetr-n"], "hmpe-n") == ["rtdetr-n"]


def test_lsconv_bench_smoke(tmp_path, one_thread):
    import gc

    lb = _load("lsconv_bench")
    out = tmp_path / "ls.md"
    assert lb.main(["--rounds", "1", "--inner", "1", "--threads", "1", "--no-backbone", "--out", str(out)]) == 0
    assert gc.isenabled()  # the timed loops switch the collector off, main puts it back
    text = out.read_text()
    assert text.count("## stage") == 2 and "infer 1T (ms)" in text and "backbone rows skipped" in text


def test_render_lsconv_figure_smoke(tmp_path, one_thread):
    fig = _load("render_lsconv_figure")
    out = tmp_path / "fig.png"
    assert fig.main(["--steps", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
