"""One combined result file of Part B's same-budget training runs: ``benchmarks/results/peers_train.json``.

Each ``python -m benchmarks.peers --train --models M --seed S --out benchmarks/results/peers_train/M_sS.md`` run
leaves a JSON beside its markdown with its metrics and its settings (``_settings``: date, CPU, versions, seed,
minutes, size, threads). This module gathers the runs of one budget and size into::

    {"date", "cpu", "versions", "budget_min", "imgsz", "runs": [{"model", "seed", "epochs", "mAP50", "mAP50_95",
     "AP_small", "precision", "recall", ...}, ...], "summary": [{"model", "seeds", "mAP50", "mAP50_spread", ...}]}

and a markdown table with the mean and the spread (max - min) over seeds per model. Runs made on another CPU
model than the first are refused (absolute minutes do not compare across machines); a run's ``curve`` (val
metrics of the checkpoints saved during a run, :mod:`benchmarks.peers.curve`) is kept and drawn as mAP50 against
training minutes.

    python -m benchmarks.peers.combine --minutes 35 --imgsz 512
    python -m benchmarks.peers.combine --minutes 150 --imgsz 512 --out benchmarks/results/peers_train_150.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks._common import (RESULTS, fmt, md_table, mean_cell, mean_spread, mean_spread_of, size_counts_note,
                                utc_stamp)

RUN_METRICS = ("precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_small_input")
SUMMARY_KEYS = ("epochs", "train_min") + RUN_METRICS


def read_runs(folder: Path, minutes: float, imgsz: int) -> list[dict]:
    """Flat run records of every run JSON in ``folder`` made with this budget and size (others are skipped)."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        saved = json.loads(path.read_text())
        s = saved.get("_settings")
        if not s or s["minutes"] != minutes or s["imgsz"] != imgsz:
            continue
        for model, r in saved.items():
            if model.startswith("_"):
                continue
            m = r["metrics"]
            # hmpe's trainer under time_limit may stop part-way through its last epoch: epochs_trained
            runs.append({"model": model, "seed": s["seed"], "epochs": r.get("epochs_trained", r["epochs"]),
                         "train_min": r["train_min"],
                         **{k: m.get(k) for k in RUN_METRICS},
                         **{k: v for k, v in m.items() if k.startswith("n_")},  # objects per size bucket
                         **{k: v for k, v in m.items() if k.startswith("mask_")},
                         "params": r.get("params"), "threads": s["threads"], "batch": s["batch"],
                         "hmpe_args": s.get("hmpe_args", []), "date": s["date"], "cpu": s["cpu"],
                         "versions": s["versions"], "file": path.name, **({"curve": r["curve"]} if "curve" in r else {})})
    return runs


def summarise(runs: list[dict]) -> list[dict]:
    """Per model (in order of first appearance): the seeds, and mean and spread of every summary key."""
    out = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        s = {"model": model, "seeds": sorted(r["seed"] for r in mine)}
        for k in ("epochs", "train_min"):
            s[k], s[k + "_spread"] = mean_spread([float(r[k]) for r in mine if r[k] is not None])
        for k in RUN_METRICS:  # None when a run stored before the metric existed lacks it
            s[k], s[k + "_spread"] = mean_spread_of(mine, k)
        out.append(s)
    return out


def combine(folder: Path, minutes: float, imgsz: int) -> dict:
    runs = read_runs(folder, minutes, imgsz)
    if not runs:
        raise SystemExit(f"no run in {folder} with minutes={minutes} and imgsz={imgsz}; run "
                         f"`python -m benchmarks.peers --train --minutes {minutes:g} --imgsz {imgsz} --out {folder}/NAME.md`")
    cpus = sorted({r["cpu"] for r in runs})
    if len(cpus) > 1:
        raise SystemExit(f"runs in {folder} come from different CPUs ({', '.join(cpus)}): minutes do not compare; "
                         "move the other machine's runs elsewhere")
    return {"date": max(r["date"] for r in runs), "cpu": cpus[0], "versions": runs[0]["versions"],
            "budget_min": minutes, "imgsz": imgsz, "runs": runs, "summary": summarise(runs)}


def markdown(result: dict, figure: Path | None) -> str:
    lines = [f"# Peers: same-budget training, {result['budget_min']:g} minutes of one core, {result['imgsz']} px", "",
             f"- combined: {utc_stamp()}; runs dated up to {result['date']}",
             f"- CPU: {result['cpu']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "- each metric: mean over the seeds ± the spread (max - min); a difference smaller than the spreads is "
             "no difference; scored by hmpe's COCOEvaluator on the val split"]
    note = size_counts_note([(r["model"], r) for r in result["runs"]])
    lines += [f"- {note}"] if note else []
    lines.append("")
    cols = ["model", "seeds", "epochs", "train min", "P", "R", "mAP50", "mAP50-95", "AP_S", "AP_S in"]
    rows = [[s["model"], ",".join(map(str, s["seeds"]))] + [mean_cell(s, k) for k in SUMMARY_KEYS]
            for s in result["summary"]]
    lines.append(md_table(cols, rows, "ll" + "r" * (len(cols) - 2)))
    per_run = [[r["model"], r["seed"], fmt(r["epochs"], 2), fmt(r["train_min"], 1)] + [fmt(r[k]) for k in RUN_METRICS]
               + [" ".join(f"{k.split('/')[-1]}:{v:.2f}/{r.get(k.replace('bg_masked', 'obj_hot'), 0):.2f}"
                           for k, v in r.items() if k.startswith("mask_bg_masked"))]
               for r in result["runs"]]
    lines += ["Runs (mask: per level, background cells masked / object cells kept hot):", "",
              md_table(["model", "seed", "epochs", "train min", "P", "R", "mAP50", "mAP50-95", "AP_S", "AP_S in",
                        "mask"],
                       per_run)]
    if figure is not None:
        lines += [f"![val mAP50 against training minutes]({figure.name})", ""]
    return "\n".join(lines)


def plot_curves(result: dict, out: Path) -> Path | None:
    """mAP50 of every run with a ``curve`` against its training minutes, one line per run; None without curves."""
    runs = [r for r in result["runs"] if r.get("curve")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        pts = sorted(r["curve"], key=lambda p: p["train_min"])
        ax.plot([p["train_min"] for p in pts], [p["mAP50"] for p in pts], marker="o", label=f"{r['model']} seed {r['seed']}")
    ax.set_xlabel("training minutes (one core)")
    ax.set_ylabel("val mAP50")
    ax.set_title(f"NWPU VHR-10, {result['imgsz']} px, {result['cpu']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.combine", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=RESULTS / "peers_train", help="folder of the per-run JSON files")
    p.add_argument("--minutes", type=float, default=35.0)
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--out", type=Path, default=RESULTS / "peers_train.json", help="JSON; markdown beside it")
    a = p.parse_args(argv)
    result = combine(a.runs, a.minutes, a.imgsz)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    figure = plot_curves(result, a.out.with_suffix(".png"))
    a.out.write_text(json.dumps(result, indent=1))
    a.out.with_suffix(".md").write_text(markdown(result, figure))
    print(a.out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
