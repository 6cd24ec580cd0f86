"""Strict configuration: every key a user can type is declared in hmpe.utils.keys and checked."""

import inspect

import pytest

from hmpe.cli import main
from hmpe.utils.config import apply_overrides, load_model_config, model_presets
from hmpe.utils.keys import MODEL, TASKS, ConfigKeyError, check_model_config, check_task_args


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

    cfg, model_over = make_train_config({"epochs": 3, "postprocess.num_top_queries": 7, "decoder.num_layers": 2,
                                         "name": "run1", "hidden_dim": 64})
    assert cfg["epochs"] == 3 and "postprocess.num_top_queries" not in cfg
    assert cfg["name"] == "run1" and "name" not in model_over and model_over["hidden_dim"] == 64  # run folder
    model_cfg = apply_overrides(load_model_config("rtdetr-n"), model_over)
    assert build_postprocessor(model_cfg, 5).num_top_queries == 7


def test_model_key_table_matches_the_constructors():
    """MODEL lists exactly the arguments a section's constructor takes from the config."""
    from hmpe.models.backbone import HGNetv2
    from hmpe.models.decoder import RTDETRDecoder
    from hmpe.models.encoder import HybridEncoder
    from hmpe.models.heatmap import HeatmapEmbedding
    from hmpe.models.hidq import HeatmapQuerySelector
    from hmpe.models.loss import SetCriterion
    from hmpe.models.matcher import HungarianMatcher
    from hmpe.models.mohfe import MOHFE

    builder_args = {"self", "in_channels", "feat_strides", "hidden_dim", "dim", "num_classes", "num_levels",
                    "strides", "num_queries", "matcher", "query_selector", "attention_levels", "strip_factory"}
    ctors = {"backbone": HGNetv2, "encoder": HybridEncoder, "heatmap": HeatmapEmbedding, "mohfe": MOHFE,
             "hidq": HeatmapQuerySelector, "decoder": RTDETRDecoder, "matcher": HungarianMatcher, "loss": SetCriterion}
    extra = {"backbone": {"pretrained"},  # read by the trainer (hmpe.models.pretrained), popped by build_model
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
