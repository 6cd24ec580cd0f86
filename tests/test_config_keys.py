"""Strict configuration: every key a user can type is declared in hmpe.utils.keys and checked."""

import inspect
import json
from pathlib import Path

import pytest
import yaml

from hmpe.cli import main
from hmpe.utils.config import CONFIG_DIR, apply_overrides, load_model_config, load_yaml, model_presets
from hmpe.utils.keys import TASKS, ConfigKeyError, check_model_config, check_task_args
from hmpe.utils.model_keys import MODEL
from hmpe.utils.renames import upgrade_model_config


@pytest.mark.parametrize("argv,named", [
    (["train", "epoch=1"], "'epochs'"),
    (["train", "decoder.num_layer=3"], "'decoder.num_layers'"),
    (["train", "postprocess.num_top_query=10"], "'postprocess.num_top_queries'"),
    (["val", "weights=x.pt", "spilt=val"], "'split'"),
    (["predict", "img.jpg", "weights=x.pt", "conff=0.3"], "'conf'"),
    (["heatmap", "img.jpg", "weights=x.pt", "levle=1"], "'level'"),
    (["export", "weights=x.pt", "opst=17"], "'opset'"),
    (["bench", "run=5"], "'runs'"),
])
def test_unknown_key_exits_2_naming_the_nearest(argv, named, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_keys_reach_the_code():
    from hmpe.api import make_train_config
    from hmpe.models.detector import build_postprocessor

    cfg, model_over, given = make_train_config({"epochs": 3, "postprocess.num_top_queries": 7,
                                                "decoder.num_layers": 2, "name": "run1", "hidden_dim": 64})
    assert cfg["epochs"] == 3 and "postprocess.num_top_queries" not in cfg
    assert set(given) == {"epochs", "name"} and "_explicit" not in cfg  # resume reads the typed keys from here
    assert cfg["name"] == "run1" and "name" not in model_over and model_over["hidden_dim"] == 64  # run folder
    model_cfg = apply_overrides(load_model_config("rtdetr-n"), model_over)
    assert build_postprocessor(model_cfg, 5).num_top_queries == 7


def test_model_key_table_matches_the_constructors():
    """MODEL lists exactly the arguments a section's constructor takes from the config (their defaults agree:
    tests/test_defaults_agree.py)."""
    from helpers import model_section_constructors

    builder_args = {"self", "in_channels", "feat_strides", "hidden_dim", "dim", "num_classes", "num_levels",
                    "strides", "num_queries", "matcher", "query_selector", "attention_levels", "strip_factory"}
    ctors = model_section_constructors()
    extra = {"backbone": {"pretrained"},  # read by the trainer (hmpe.models.rtdetr.pretrained), popped by build_model
             "heatmap": {"enabled", "mask_pe"}, "mohfe": {"enabled"}, "hidq": {"enabled"},
             "decoder": {"num_queries"}}
    for sec, ctor in ctors.items():
        args = set(inspect.signature(ctor.__init__).parameters) - builder_args
        assert {k.name for k in MODEL[sec]} == args | extra.get(sec, set()), sec


@pytest.mark.parametrize("preset", model_presets())
def test_presets_use_known_keys(preset):
    check_model_config(load_model_config(preset))


def test_model_yaml_and_api_typos_raise(tmp_path):
    from hmpe import Detector
    from hmpe.models.detector import build_model

    with pytest.raises(ConfigKeyError, match="'decoder.num_layers'"):
        build_model({**load_model_config("rtdetr-n"), "decoder": {"num_layer": 3}}, 5)
    with pytest.raises(ConfigKeyError, match="'epochs'"):
        Detector("rtdetr-n").train(epoch=1, project=str(tmp_path))
    with pytest.raises(ConfigKeyError):
        check_task_args("export", {"fromat": "onnx"})


def test_dataset_yaml_unknown_key_names_file_and_key(tmp_path):
    from hmpe.data.formats import DataError, load_data_config

    y = tmp_path / "d.yaml"
    y.write_text("format: synthetic\nnum_train: 2\nnum_val: 2\nnames: [a]\nnum_trian: 4\n")
    with pytest.raises(DataError, match=r"d\.yaml.*'num_trian'.*'num_train'"):
        load_data_config(y)


def test_cfg_lists_every_task_and_the_heatmap_pe_keys_as_encoder_defaults(capsys):
    assert main(["cfg"]) == 0
    out = capsys.readouterr().out
    assert all(f"# hmpe {t}" in out for t in TASKS)
    line = next(ln for ln in out.splitlines() if ln.startswith("heatmap.temperature"))
    assert "encoder.pe_temperature" in line


# ------------------------------------------------------------------------------------------------ composition
FROZEN = Path(__file__).parent / "data" / "resolved_model_configs.json"


def _shipped_model_yamls() -> list[str]:
    root = CONFIG_DIR / "models"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def test_shipped_presets_resolve_to_the_frozen_configs():
    """Every shipped model YAML, composed through ``base:``, gives exactly the config it gave when each file was
    written out in full (tests/data/resolved_model_configs.json, written before the files were composed; with the
    key names of then, read as a stored config is: renamed keys under their new names, hmpe.utils.renames)."""
    frozen = json.loads(FROZEN.read_text())
    assert sorted(frozen) == _shipped_model_yamls()
    for name, cfg in frozen.items():
        resolved = load_model_config(name)
        assert "base" not in resolved
        assert resolved == upgrade_model_config(cfg), name


def test_one_heatmap_block_in_the_shipped_yamls():
    # a variant may change a key of the block (ablation/mask-quantile: tau); the whole block lives in one file
    blocks = [p for p in (CONFIG_DIR / "models").rglob("*.yaml") if "bbox_heat:" in p.read_text()]
    assert [p.name for p in blocks] == ["rtdetr-n-heat.yaml"]


def test_base_chain_deep_merges_and_is_removed(tmp_path):
    (tmp_path / "a.yaml").write_text("base: hmpe-n\ndecoder: {num_layers: 4}\nname: my-a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nheatmap: {tau: 0.1}\nhidq: null\n")
    cfg = load_model_config(str(tmp_path / "sub" / "b.yaml"))
    ref = load_model_config("hmpe-n")
    assert "base" not in cfg and cfg["name"] == "b"  # named after its own file, not a parent's name
    assert cfg["decoder"] == {**ref["decoder"], "num_layers": 4}
    assert cfg["heatmap"] == {**ref["heatmap"], "tau": 0.1} and cfg["hidq"] is None
    assert cfg["backbone"] == ref["backbone"] and cfg["mohfe"] == ref["mohfe"]
    assert load_model_config({"base": str(tmp_path / "a.yaml"), "hidden_dim": 64})["hidden_dim"] == 64


def test_base_cycle_and_unknown_base_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nhidden_dim: 64\n")
    with pytest.raises(ValueError, match=r"base cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_model_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: rtdetr-m\n")
    with pytest.raises(ValueError, match=r"c\.yaml: base 'rtdetr-m' is not a preset \(.*rtdetr-n.*\)"):
        load_model_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("base: rtdetr-n\ndecoder: {num_layer: 3}\n")
    with pytest.raises(ConfigKeyError, match=r"d\.yaml.*'decoder.num_layers'"):
        load_model_config(str(tmp_path / "d.yaml"))


def test_builder_refuses_an_unresolved_base():
    from hmpe.models.detector import build_model

    check_model_config({"base": "rtdetr-n", "hidden_dim": 64}, file=True)
    with pytest.raises(ConfigKeyError, match="load_model_config"):
        build_model({"base": "rtdetr-n", "hidden_dim": 64}, 3)


def test_load_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match=r"none\.yaml"):
        load_yaml(tmp_path / "none.yaml")


def test_cfg_prints_the_resolved_preset(capsys):
    assert main(["cfg", "model=ablation/lsconv"]) == 0
    out = capsys.readouterr().out
    body = yaml.safe_load(out.split("\nmodel presets:")[0])
    assert body == load_model_config("ablation/lsconv") and "base" not in body
    assert "hmpe-n" in out.split("\nmodel presets:")[1]


def test_checkpoint_stores_the_resolved_config(tmp_path):
    from helpers import tiny_data, tiny_model_yaml, tiny_train_cfg
    from hmpe.engine.checkpoint import load_checkpoint
    from hmpe.engine.train.trainer import train

    tiny_model_yaml(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny.yaml\ndecoder: {num_layers: 2}\n")
    cfg = tiny_train_cfg(tmp_path, model=str(child), epochs=1, imgsz=64, batch=2,
                         data=tiny_data(num_train=2, num_val=2, imgsz=64))
    trainer, _ = train(cfg)
    stored = load_checkpoint(trainer.run_dir / "weights" / "last.pt")["model_cfg"]
    assert stored == load_model_config(str(child)) and "base" not in stored
    assert stored["decoder"]["num_layers"] == 2 and stored["hidden_dim"] == 64
