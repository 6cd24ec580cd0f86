"""Shared test helpers: the tiny detector's configs, tiny synthetic data, the paths of the checkout and of NWPU
VHR-10. Imported by the tests (``from helpers import ...``); pytest's fixtures stay in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NWPU_ROOT = REPO.parent / "shared" / "datasets" / "nwpu-vhr10"
SYNTHETIC_NAMES = ["circle", "square", "triangle", "cross", "ring"]


def tiny_model_yaml(folder: Path) -> Path:
    """:func:`tiny_model_cfg` written as a model YAML (for ``model=PATH`` on the command line)."""
    import yaml

    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_model_cfg()))
    return path


def tiny_data(num_train: int = 4, num_val: int = 4, imgsz: int = 128, seed: int = 0, overfit: bool = True) -> dict:
    """A few small synthetic images (val = the train images when ``overfit``)."""
    return {"format": "synthetic", "num_train": num_train, "num_val": num_val, "imgsz": imgsz, "seed": seed,
            "overfit": overfit, "min_size": 10, "max_size": 32, "max_objects": 4, "negative_fraction": 0.0,
            "names": SYNTHETIC_NAMES}


def tiny_model_cfg(**decoder) -> dict:
    """The smallest sensible detector: HGNetv2-B0, hidden 64, 3 decoder layers, 30 queries."""
    return {"name": "tiny", "hidden_dim": 64, "backbone": {"name": "B0"},
            "encoder": {"nhead": 4, "dim_feedforward": 128, "expansion": 0.5, "depth_mult": 0.34},
            "decoder": {"num_queries": 30, "num_layers": 3, "dim_feedforward": 128, "nhead": 4, "num_points": 4,
                        "num_denoising": 20, **decoder},
            "matcher": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, "loss": {}}


def tiny_train_cfg(tmp_path, **over) -> dict:
    from hmpe.utils.config import default_train_config

    cfg = default_train_config()
    # amp=False: amp=auto is bf16 on CPUs with native bf16, so the same test would train in another precision
    # on another CI machine; tests/test_amp.py trains under bf16 and fp16 on purpose
    cfg.update(data=tiny_data(), epochs=80, batch=4, imgsz=128, workers=0, augment=False, lr=2e-3,
               warmup_iters=10, val_interval=10_000, ema=False, amp=False, project=str(tmp_path / "runs"), name="t",
               exist_ok=True, plots=False)  # the end-of-run figures cost more than a tiny run: tests/test_train.py
    cfg.update(over)
    return cfg


def model_section_constructors() -> dict:
    """Model-config section -> the class its keys are passed to (the builders of :mod:`hmpe.models.detector`)."""
    from hmpe.models.rtdetr.backbone import HGNetv2
    from hmpe.models.rtdetr.decoder import RTDETRDecoder
    from hmpe.models.rtdetr.encoder import HybridEncoder
    from hmpe.models.heatmap import HeatmapEmbedding
    from hmpe.models.hidq import HeatmapQuerySelector
    from hmpe.models.rtdetr.loss import SetCriterion
    from hmpe.models.rtdetr.matcher import HungarianMatcher
    from hmpe.models.mohfe import MOHFE
    from hmpe.models.rtdetr.postprocess import PostProcessor

    return {"backbone": HGNetv2, "encoder": HybridEncoder, "heatmap": HeatmapEmbedding, "mohfe": MOHFE,
            "hidq": HeatmapQuerySelector, "decoder": RTDETRDecoder, "matcher": HungarianMatcher, "loss": SetCriterion,
            "postprocess": PostProcessor}
