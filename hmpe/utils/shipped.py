"""What the package ships, found by name without importing torch: model presets (``configs/models``), dataset
YAMLs (``configs/datasets``) and pretrained weights (``weights/NAME/config.json``). The command line checks
``model=``, ``data=`` and ``weights=`` against these before anything loads (:mod:`hmpe.utils.keytypes`)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR / "configs"  # shipped presets: models/, datasets/
DATASETS_DIR = CONFIG_DIR / "datasets"  # data=nwpu-vhr10, data=synthetic
WEIGHTS_DIR = PACKAGE_DIR / "weights"  # weights=hmpe-n-nwpu: a pretrained folder
PRETRAINED_CONFIG = "config.json"  # the file that makes a folder a pretrained one (save_pretrained)


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))


def model_yaml(name_or_path: str) -> Path | None:
    """The YAML file a ``model=`` value names (a ``.yaml`` / ``.yml`` file, else a preset such as
    ``ablation/lsconv``), or None when there is none."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    preset = CONFIG_DIR / "models" / f"{name_or_path}.yaml"
    return preset if preset.is_file() else None


def shipped_datasets() -> list[str]:
    """Names of the dataset YAMLs shipped in ``hmpe/configs/datasets``."""
    return sorted(p.stem for p in DATASETS_DIR.glob("*.yaml"))


def find_data_yaml(spec: str) -> tuple[Path, bool] | None:
    """(yaml path, shipped?) for a YAML path, a folder holding ``data.yaml`` or a shipped name; None if none."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path, False
    if path.is_dir() and (path / "data.yaml").is_file():
        return path / "data.yaml", False
    shipped = DATASETS_DIR / (spec if spec.endswith((".yaml", ".yml")) else f"{spec}.yaml")
    if "/" not in spec and shipped.is_file():
        return shipped, True
    return None


def shipped_weights() -> list[str]:
    """Names of the pretrained folders shipped in ``hmpe/weights`` (``weights=NAME`` anywhere weights go)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / PRETRAINED_CONFIG).is_file())


def shipped_weights_dir(name: str | Path) -> Path | None:
    """The folder of the shipped weights called ``name`` (``hmpe-n-nwpu``), else None."""
    name = str(name)
    folder = WEIGHTS_DIR / name
    return folder if "/" not in name and (folder / PRETRAINED_CONFIG).is_file() else None


def weights_exist(weights: str | Path) -> bool:
    """Whether ``weights`` is a file or folder, or the name of shipped weights (what
    :func:`hmpe.engine.checkpoint.resolve_weights` can read)."""
    return Path(weights).expanduser().exists() or shipped_weights_dir(weights) is not None
