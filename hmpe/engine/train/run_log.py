"""A training run's folder on disk: ``args.yaml``, ``results.csv`` (one row per epoch) and the console log.

Only the main process writes (the callers check nothing); every function is a no-op on the other ranks.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from hmpe.engine.eval.evaluator import SIZE_KEYS
from hmpe.utils import dist as du

__all__ = ["RESULTS_CSV", "VAL_KEYS", "append_row", "epoch_row", "log", "truncate_rows", "write_args"]

RESULTS_CSV = "results.csv"
# SIZE_KEYS: AP over the objects small at the model's input and the object counts per size bucket
VAL_KEYS = ("precision", "recall", "mAP50", "mAP50_95", "mAP75", "AP_small", "AP_medium", "AP_large", *SIZE_KEYS)


def log(msg: str) -> None:
    """A console line from the main process only (through tqdm, so progress bars stay intact)."""
    if du.is_main_process():
        tqdm.write(msg)


def write_args(run_dir: Path, cfg: dict, model_cfg: dict) -> None:
    """``args.yaml``: the training config (keys starting with ``_`` are internal and left out) and the model
    config the run was built from."""
    if not du.is_main_process():
        return
    with open(run_dir / "args.yaml", "w") as f:
        yaml.safe_dump({"train": {k: v for k, v in cfg.items() if not k.startswith("_")}, "model": model_cfg}, f,
                       sort_keys=False)


def epoch_row(epoch: int, seconds: float, stats: dict, metrics: dict) -> dict:
    """The ``results.csv`` row of ``epoch`` (0-based; written 1-based): time, ``train/*`` statistics and the
    ``val/*`` metrics of :data:`VAL_KEYS` that ``metrics`` holds (none on epochs without validation)."""
    row = {"epoch": epoch + 1, "time_s": round(seconds, 1)}
    row.update({f"train/{k}": round(v, 6) for k, v in stats.items()})
    row.update({f"val/{k}": _cell(metrics[k]) for k in VAL_KEYS if k in metrics})
    # heatmap models: the mask per level and the gate of eq. 4
    row.update({f"val/{k}": round(float(v), 6) for k, v in metrics.items() if k.startswith(("mask_", "gate/"))})
    return row


def _cell(v) -> int | float:
    """A metric as written: counts as integers, figures rounded to 6 decimals."""
    return v if isinstance(v, int) else round(float(v), 6)


def _read(path: Path) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _header(path: Path) -> list[str]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _rewrite(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def append_row(run_dir: Path, row: dict) -> None:
    """Append ``row`` to ``results.csv``. The header is the union of every row's keys in first-seen order:
    when ``row`` brings a new column (the first validated epoch), the file is rewritten once with the wider
    header (earlier rows get empty cells); otherwise one line is appended."""
    if not du.is_main_process():
        return
    path = Path(run_dir) / RESULTS_CSV
    header = _header(path)
    if header and set(row) <= set(header):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        return
    fields, rows = _read(path)
    _rewrite(path, list(dict.fromkeys([*fields, *row])), [*rows, row])


def truncate_rows(run_dir: Path, last_epoch: int) -> None:
    """Drop the rows after epoch ``last_epoch`` (1-based, as written): a resumed run continues from its
    checkpoint, so rows an interrupted run wrote after it would otherwise appear twice."""
    if not du.is_main_process():
        return
    path = Path(run_dir) / RESULTS_CSV
    fields, rows = _read(path)
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) < len(rows):
        _rewrite(path, fields, kept)


def loss_groups(loss_dict: dict[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Sum loss terms by the group the criterion declares for each (``criterion.loss_groups``: term name ->
    group, e.g. every ``loss_vfl_aux_i`` / ``loss_vfl_enc`` / ``loss_vfl_dn_i`` -> ``loss_vfl``); a term the
    criterion does not declare (the model's ``aux_losses``) is its own group."""
    out: dict[str, float] = {}
    for k, v in loss_dict.items():
        kind = groups.get(k, k)
        out[kind] = out.get(kind, 0.0) + float(v)
    return out


def losses_to_host(loss: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """The total and every term as Python floats with ONE device-to-host copy (one sync per step on CUDA,
    instead of one per term), for the finiteness check and the log."""
    vals = torch.stack([loss.detach().float(), *(v.detach().float().reshape(()) for v in loss_dict.values())])
    host = vals.cpu().tolist()
    return host[0], dict(zip(loss_dict, host[1:]))
