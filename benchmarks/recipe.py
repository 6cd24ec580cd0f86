"""Short-schedule training recipes for hmpe-n on NWPU VHR-10: which augmentation, schedule and loss settings
learn most in a small CPU budget.

    python -m benchmarks.recipe [--epochs 6 | --budget-minutes 35] [--imgsz 320] [--seeds 0 1]
                                [--variants aug-none aug-flip-colour ...] [--model hmpe-n]

Variants (``benchmarks/recipe_variants.yaml`` or ``--variants-file``) are sets of ``hmpe train`` keys and dotted
model overrides on top of common settings. Every (variant, seed) pair is one run of hmpe's trainer on the train
split, scored on the val split by the trainer's final validation (EMA weights, COCOEvaluator). The budget is
either a fixed number of epochs (``--epochs``: the same work for every variant, comparable on a busy machine)
or CPU minutes (``--budget-minutes``: the trainer sizes the epochs after the first, so slower variants get
fewer). Two runs at a time: start two processes with ``--threads 1`` and disjoint ``--variants`` or
``--seeds``; they share the result folder.

Resumable: a (variant, seed) whose result file exists with the same settings is read back; an interrupted run
resumes exactly from its ``last.pt``. The table (``benchmarks/results/recipe.md``) gives per variant the mean
over seeds and the spread (max - min) of P, R, mAP50, mAP50-95, AP_small, AP_small_input, the epochs and training
images/s.

``--smoke``: two variants, one epoch each, on a few synthetic images at 64 px in a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
from pathlib import Path
from statistics import mean

import torch

from benchmarks import ablation
from benchmarks._common import (SkipRow, default_datasets_env, fmt, header, load_avg, md_table,
                                mean_cell, mean_spread_of, output_paths, select_named, size_counts_note)

VARIANTS_FILE = Path(__file__).resolve().parent / "recipe_variants.yaml"
METRICS = ablation.METRICS
MASK_KEYS = ("mask_bg_masked/S5", "mask_obj_hot/S5")  # S5: where hmpe-n's position encoding enters attention


def load_variants(path: Path) -> list[dict]:
    import yaml

    variants = yaml.safe_load(path.read_text()) or []
    for v in variants:
        if not isinstance(v, dict) or "name" not in v:
            raise SystemExit(f"{path}: every variant needs a `name` (got {v!r})")
        unknown = set(v) - {"name", "train_args", "overrides", "optional", "model"}
        if unknown:
            raise SystemExit(f"{path}: variant {v['name']!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: name, model, train_args, overrides, optional")
        v.setdefault("train_args", [])
        v.setdefault("overrides", {})
        v.setdefault("optional", False)
    return variants


def run_args(variant: dict, seed: int, args) -> tuple[dict, argparse.Namespace]:
    """(row, args) in the form benchmarks/ablation.py's runner takes: one (variant, seed) pair."""
    row = {"name": f"{variant['name']}-seed{seed}", "model": variant.get("model", args.model),
           "overrides": variant["overrides"]}
    a = copy.copy(args)
    a.seed = seed
    a.train_args = list(args.train_args) + list(variant["train_args"])
    return row, a


def train_images_per_s(run_dir: Path, n_images: int) -> float | None:
    """Training images per second over the epochs without validation (all but the last)."""
    path = run_dir / "results.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        times = [float(r["time_s"]) for r in csv.DictReader(f)]
    timed = times[:-1] or times
    return n_images * len(timed) / sum(timed) if sum(timed) > 0 else None


def run_one(variant: dict, seed: int, args) -> dict:
    row, a = run_args(variant, seed, args)
    path = args.results_dir / f"{ablation.slug(row['name'])}.json"
    stored = ablation.stored_result(path, ablation.settings(row, a), args.force, row["name"])
    if stored is not None:
        return stored
    print(f"=== [{row['name']}] {' '.join(a.train_args)} {variant['overrides'] or ''}", flush=True)
    res = ablation.run_row(row, a)
    res.update(variant=variant["name"], seed=seed, train_args=a.train_args,
               images_per_s=train_images_per_s(Path(res["run_dir"]), res.pop("train_images")))
    path.write_text(json.dumps(res, indent=1, default=str))
    return res


def summarise(variants: list[dict], results: list[dict]) -> list[dict]:
    """Per variant: mean and spread (max - min) over its seeds of every metric, epochs and images/s."""
    out = []
    for v in variants:
        runs = [r for r in results if r["variant"] == v["name"]]
        if not runs:
            continue
        s = {"variant": v["name"], "seeds": [r["seed"] for r in runs],
             "epochs": mean(r["epochs"] for r in runs),
             "images_per_s": mean(r["images_per_s"] or 0.0 for r in runs)}
        for k in METRICS:
            s[k], s[k + "_spread"] = mean_spread_of([r["metrics"] for r in runs], k)
        for k in MASK_KEYS:  # the heatmap mask at the attention level, where the model has one
            values = [r["metrics"][k] for r in runs if k in r["metrics"]]
            s[k] = mean(values) if values else None
        out.append(s)
    return out


def markdown(summary: list[dict], variants: list[dict], args, started_load: str, results: list[dict] = ()) -> str:
    """The table of ``summary``; ``results`` (the runs summarised) give the note with the objects per size bucket."""
    budget = f"{args.epochs} epochs" if args.budget_minutes is None else f"{args.budget_minutes} CPU minutes"
    extra = [f"model {args.model}, {args.imgsz} px, batch {args.batch}, budget {budget} per run, from scratch, "
             f"torch threads {torch.get_num_threads()}; trained on the train split, scored on val (EMA weights, "
             f"hmpe's COCOEvaluator; P and R at the best-F1 confidence)",
             "each metric: mean over the seeds, ± the spread (max - min); a difference smaller than the spreads "
             "is no difference"]
    note = size_counts_note([(r["variant"], r["metrics"]) for r in results])
    extra += [note] if note else []
    cols = ["variant", "train args / overrides", "seeds", "epochs", "img/s", "P", "R", "mAP50", "mAP50-95", "AP_S",
            "AP_S in", "mask S5 bg masked / obj hot"]
    by_name = {v["name"]: v for v in variants}
    rows = []
    for s in summary:
        v = by_name[s["variant"]]
        what = " ".join(f"`{t}`" for t in v["train_args"]) + "".join(f" `{k}={val}`" for k, val in v["overrides"].items())
        rows.append([s["variant"], what.strip(), ",".join(map(str, s["seeds"])), fmt(s["epochs"], 1),
                     fmt(s["images_per_s"], 2)]
                    + [mean_cell(s, k) for k in METRICS]
                    + [" / ".join(fmt(s[k], 2) for k in MASK_KEYS) if s[MASK_KEYS[0]] is not None else "-"])
    title = "Short-schedule training recipes" + (" (SMOKE)" if args.smoke else "")
    return header(title, extra, started_load) + "\n" + md_table(cols, rows, "ll" + "r" * (len(cols) - 2))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hmpe-n")
    p.add_argument("--epochs", type=int, default=6, help="fixed epochs per run (ignored with --budget-minutes)")
    p.add_argument("--budget-minutes", type=float, default=None, help="CPU minutes per run (trainer time_limit)")
    p.add_argument("--data", default="nwpu-vhr10")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--variants", nargs="*", default=None, help="variant names (default: the non-optional ones)")
    p.add_argument("--all", action="store_true", help="also the optional variants")
    p.add_argument("--variants-file", default=str(VARIANTS_FILE))
    p.add_argument("--train-args", nargs="*", default=["lr=4.0e-4", "warmup_iters=200"],
                   help="key=value training keys common to every variant (a variant's own keys come after)")
    p.add_argument("--runs-dir", default=None, help="training runs (default: runs/recipe under the working directory)")
    p.add_argument("--results-dir", default=None, help="per-run JSON (default: benchmarks/results/recipe)")
    p.add_argument("--out", default=None, help="markdown (default: benchmarks/results/recipe.md)")
    p.add_argument("--force", action="store_true", help="rerun runs that have results")
    p.add_argument("--smoke", action="store_true", help="two variants, one epoch, synthetic images at 64 px")
    a = p.parse_args(argv)
    if a.smoke:
        a.imgsz, a.batch, a.workers, a.epochs, a.budget_minutes = 64, 2, 0, 1, None
        a.variants = a.variants or ["aug-none", "aug-flip-colour"]
    # the fields benchmarks/ablation.py's runner reads
    a.data_value = ablation.smoke_data() if a.smoke else a.data
    a.max_epochs = a.epochs if a.budget_minutes is None else 1000
    a.flops_imgsz = 64 if a.smoke else 640
    output_paths(a, "recipe")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started_load = load_avg()
    variants = load_variants(Path(args.variants_file))
    chosen = select_named(variants, args.variants, args.all, "variants")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for v in chosen:
        for seed in args.seeds:
            try:
                results.append(run_one(v, seed, args))
            except SkipRow as e:
                print(f"[{v['name']}] skipped: {e}", flush=True)
    # the table covers every stored result of these settings, also those another process wrote
    results = collect(variants, args)
    summary = summarise(variants, results)
    md = markdown(summary, variants, args, started_load, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    print(md)
    return {"results": results, "summary": summary, "markdown": str(args.out)}


def collect(variants: list[dict], args) -> list[dict]:
    """Every stored run whose settings equal what this invocation would use for its variant and seed."""
    out = []
    for v in variants:
        for path in sorted(args.results_dir.glob(f"{ablation.slug(v['name'])}-seed*.json")):
            res = json.loads(path.read_text())
            row, a = run_args(v, res.get("seed", -1), args)
            if res.get("variant") == v["name"] and res.get("settings") == ablation.settings(row, a):
                out.append(res)
    return out


if __name__ == "__main__":
    default_datasets_env()
    main()
