"""The front as a figure: mAP50 and AP_small against median latency, one line per model and precision."""

from __future__ import annotations

from pathlib import Path

PANELS = (("mAP50", "mAP50"), ("AP_small", "AP_small (COCO, native pixels)"))
STYLES = {"fp32": ("-", "o"), "int8": ("--", "s")}


def plot_front(points: list[dict], out: str | Path, title: str = "") -> Path:
    """Two panels (mAP50 vs ms, AP_small vs ms) written to ``out`` (PNG); a marker per input size, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    lines: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        lines.setdefault((p["model"], p["precision"]), []).append(p)
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(p["model"] for p in points))}
    for ax, (key, label) in zip(axes, PANELS):
        for (model, prec), pts in lines.items():
            pts = sorted((p for p in pts if p.get(key) is not None), key=lambda p: p["imgsz"])
            if not pts:
                continue
            xs, ys = [p["ms_median"] for p in pts], [p[key] for p in pts]
            line, marker = STYLES.get(prec, (":", "^"))
            ax.plot(xs, ys, line, marker=marker, color=colors[model], label=f"{model} {prec}")
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(str(p["imgsz"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("median latency per image (ms, batch 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
