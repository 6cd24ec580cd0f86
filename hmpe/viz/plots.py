"""Headless matplotlib plots for training and evaluation reports.

Every function builds a bare :class:`matplotlib.figure.Figure` and renders it with the Agg canvas
instead of going through ``pyplot``. That keeps the library free of global backend state (no
``matplotlib.use`` side effect on the user's session, no GUI windows, no figure leaks in long
training runs) and works on machines without a display.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_pr_curve",
    "plot_metric_curve",
    "plot_confusion_matrix",
    "plot_results_csv",
    "results_figure",
    "read_results_csv",
]

# Above this many classes the per-class legend becomes unreadable, so only the mean is labelled.
_MAX_LEGEND_CLASSES = 20


def _new_figure(width: float, height: float) -> Figure:
    """A figure attached to an Agg canvas (no pyplot, no global state)."""
    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | Path) -> Path:
    """Write ``fig`` to ``out_png`` (parent folders created) and return the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_pr_curve(
    recall: np.ndarray,
    precision: np.ndarray,
    names: Sequence[str],
    out_png: str | Path,
    ap: Sequence[float] | None = None,
    title: str = "Precision-recall (IoU 0.5)",
) -> Path:
    """Per-class precision-recall curves plus their class mean.

    Args:
        recall: (R,) recall sample points (COCO uses 101 points in [0, 1]).
        precision: (C, R) precision per class at those points; rows that are entirely negative
            (COCO's -1: the class has no ground truth) are skipped.
        names: C class names.
        out_png: output file.
        ap: optional per-class AP shown in the legend.
    """
    recall = np.asarray(recall, dtype=float)
    precision = np.atleast_2d(np.asarray(precision, dtype=float))
    fig = _new_figure(7, 5)
    ax = fig.add_subplot()
    valid = [i for i in range(precision.shape[0]) if (precision[i] > -1).any()]
    show_legend = len(valid) <= _MAX_LEGEND_CLASSES
    for i in valid:
        label = names[i] if i < len(names) else str(i)
        if ap is not None and show_legend:
            label = f"{label} {ap[i]:.3f}"
        ax.plot(recall, np.clip(precision[i], 0, 1), lw=1, alpha=0.8, label=label if show_legend else None)
    if valid:
        mean = np.clip(precision[valid], 0, 1).mean(0)
        label = "all classes"
        if ap is not None:
            label += f" {np.nanmean([ap[i] for i in valid]):.3f}"
        ax.plot(recall, mean, lw=3, color="blue", label=label)
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    if valid:
        ax.legend(loc="lower left", fontsize=7)
    return _save(fig, out_png)


def plot_metric_curve(
    x: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    out_png: str | Path,
    xlabel: str = "Confidence",
    ylabel: str = "F1",
    mean: np.ndarray | None = None,
    mark_x: float | None = None,
) -> Path:
    """Per-class curves of a metric against confidence (F1, precision or recall curves).

    Args:
        x: (T,) x values (e.g. confidence thresholds).
        y: (C, T) per-class values; ``NaN`` rows are skipped.
        mean: optional (T,) curve drawn bold (the value that was optimised).
        mark_x: optional x position marked with a vertical line (e.g. the chosen confidence).
    """
    x = np.asarray(x, dtype=float)
    y = np.atleast_2d(np.asarray(y, dtype=float))
    fig = _new_figure(7, 5)
    ax = fig.add_subplot()
    show_legend = y.shape[0] <= _MAX_LEGEND_CLASSES
    for i in range(y.shape[0]):
        if np.isnan(y[i]).all():
            continue
        ax.plot(x, y[i], lw=1, alpha=0.7, label=(names[i] if show_legend and i < len(names) else None))
    if mean is not None and len(x):
        ax.plot(x, mean, lw=3, color="blue", label="all classes")
    if mark_x is not None:
        ax.axvline(mark_x, color="k", ls="--", lw=1, label=f"{xlabel.lower()} {mark_x:.3f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=7)
    return _save(fig, out_png)


def plot_confusion_matrix(
    matrix: np.ndarray,
    names: Sequence[str],
    out_png: str | Path,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Confusion matrix image, rows = ground truth, columns = prediction.

    ``matrix`` is (C+1, C+1) with the last row/column "background" (false positives sit in the last
    row, missed objects in the last column), as returned by ``COCOEvaluator.confusion_matrix``.
    With ``normalize`` each row is divided by its sum so the diagonal reads as per-class recall;
    the raw counts are still printed in the cells when the matrix is small enough to read.
    """
    m = np.asarray(matrix, dtype=float)
    labels = list(names) + ["background"]
    if len(labels) != m.shape[0]:
        labels = [str(i) for i in range(m.shape[0] - 1)] + ["background"]
    shown = m / np.maximum(m.sum(1, keepdims=True), 1e-12) if normalize else m
    n = m.shape[0]
    size = min(4 + 0.45 * n, 20)
    fig = _new_figure(size + 1.5, size)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=(1 if normalize else max(shown.max(), 1)))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set(xlabel="Predicted", ylabel="True")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    if n <= 30:
        vmax = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                if m[i, j] == 0:
                    continue
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                colour = "white" if vmax and shown[i, j] > 0.6 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
    return _save(fig, out_png)


def read_results_csv(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Read a results CSV into ``{column: float array}``.

    Header names are stripped of padding (loggers often align columns with spaces); cells that are
    empty or not numbers become NaN so a partially filled log still plots.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        for h, cell in zip(header, row + [""] * (len(header) - len(row))):
            try:
                cols[h].append(float(cell))
            except ValueError:
                cols[h].append(math.nan)
    return {h: np.asarray(v, dtype=float) for h, v in cols.items()}


def plot_results_csv(csv_path: str | Path, out_png: str | Path, x_column: str = "epoch") -> Path:
    """Save :func:`results_figure` of ``csv_path`` to ``out_png``."""
    return _save(results_figure(csv_path, x_column), out_png)


def results_figure(csv_path: str | Path, x_column: str = "epoch") -> Figure:
    """Training curves: one subplot per column of ``csv_path`` against its ``epoch`` column.

    Columns that hold no numbers at all (e.g. a text note) or only COCO's -1 "undefined" are skipped, and so are the
    object counts per size bucket (``val/n_small``, ...: constant, not curves). When there is no ``epoch`` column
    the row index is used.
    """
    data = read_results_csv(csv_path)
    # COCO writes -1 for a metric it cannot define (AP_large with no large objects): not a value to plot
    data = {k: np.where(v == -1.0, np.nan, v) for k, v in data.items() if not k.startswith("val/n_")}
    x = data.pop(x_column, None)
    columns = [k for k, v in data.items() if k and np.isfinite(v).any()]
    if x is None:
        n = max((len(v) for v in data.values()), default=0)
        x = np.arange(n, dtype=float)
    ncols = min(5, max(1, len(columns)))
    nrows = max(1, math.ceil(len(columns) / ncols))
    fig = _new_figure(3.2 * ncols, 2.6 * nrows)
    if not columns:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no numeric columns", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, columns):
        y = data[name]
        ok = np.isfinite(y) & np.isfinite(x[: len(y)])
        ax.plot(x[: len(y)][ok], y[ok], marker=".", lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_column if x_column else "row", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    for ax in axes[len(columns) :]:
        ax.set_axis_off()
    return fig
