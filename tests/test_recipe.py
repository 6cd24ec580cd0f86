"""benchmarks/recipe.py (short-schedule training recipes) in smoke mode: two variants, one epoch, 64 px."""

import json
from pathlib import Path

import pytest
import torch



@pytest.fixture
def recipe():
    from benchmarks import recipe as mod

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mod
    torch.set_num_threads(n)


def test_recipe_smoke_table_and_resume(tmp_path, recipe):
    args = ["--smoke", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
            "--variants", "aug-none", "--seeds", "0", "1", "--train-args", "plots=false"]
    out = recipe.main(args)
    assert {(r["variant"], r["seed"]) for r in out["results"]} == {("aug-none", 0), ("aug-none", 1)}
    for r in out["results"]:
        assert r["epochs"] == 1 and r["images_per_s"] > 0
        assert set(r["metrics"]) >= {"precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_small_input",
                                     "n_small", "n_small_input"}
    by_variant = {s["variant"]: s for s in out["summary"]}
    runs = [r["metrics"]["mAP50"] for r in out["results"] if r["variant"] == "aug-none"]
    assert by_variant["aug-none"]["mAP50_spread"] == pytest.approx(max(runs) - min(runs))
    md = Path(out["markdown"]).read_text()
    assert "| aug-none |" in md and "0,1" in md and "mAP50-95" in md and "AP_S in" in md
    assert "objects per size bucket" in md  # the counts, in a note
    # the mask at the attention level (the smoke model is a small hmpe-n: it has the heatmap mask)
    masked = [r["metrics"]["mask_bg_masked/S5"] for r in out["results"]]
    assert by_variant["aug-none"]["mask_bg_masked/S5"] == pytest.approx(sum(masked) / 2)
    assert "mask S5 bg masked / obj hot" in md

    # stored results are read back, not retrained; other settings are not mixed in
    stamp = {p.name: p.stat().st_mtime for p in (tmp_path / "res").glob("*.json")}
    again = recipe.main(args)
    assert {p.name: p.stat().st_mtime for p in (tmp_path / "res").glob("*.json")} == stamp
    assert json.dumps(again["summary"], sort_keys=True) == json.dumps(out["summary"], sort_keys=True)


def test_variants_file_is_checked(tmp_path, recipe):
    bad = tmp_path / "v.yaml"
    bad.write_text("- name: x\n  train_arg: [lr=1e-3]\n")
    with pytest.raises(SystemExit, match="unknown keys.*train_arg"):
        recipe.load_variants(bad)
    names = [v["name"] for v in recipe.load_variants(recipe.VARIANTS_FILE)]
    assert {"aug-none", "aug-flip-colour", "aug-rtdetr", "aug-rtdetr-mosaic"} <= set(names)
