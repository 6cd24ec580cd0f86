"""The paper's Table 2 (NWPU VHR-10 ablation) at CPU scale: every row trained from scratch for the same budget.

    python -m benchmarks.ablation [--budget-minutes 35 | --epochs 10] [--imgsz 512] [--batch 8] [--seeds 0 1]
                                  [--rows baseline +LSConv ...] [--from-peers benchmarks/results/peers_train]

Rows (``benchmarks/ablation_rows.yaml``, or ``--rows-file``): baseline, +DSConv, +LSConv, +MOHFE, +HIDQ,
each a model config (preset name or YAML path + dotted overrides); a row whose preset is missing in this
checkout is skipped with a message. Each row is trained by hmpe's trainer on the dataset's train split
(default ``nwpu-vhr10``) with ``time_limit = --budget-minutes`` (the trainer times its epochs and re-sizes
the run after each so that the whole schedule fits the budget), or for ``--epochs N`` each (the same work for
every row whatever the CPU: 35 minutes of one core bought 0.6x the epochs on an AVX2 CPU in fp32 that they bought
with native bf16, BENCHMARKS.md section 31), then scored on the val split by the trainer's final validation
(EMA weights, COCOEvaluator): P and R at the best-F1 confidence, mAP50, mAP50-95, AP_small and AP_small_input
(over the objects small at the model's input; the objects per size bucket in a note).
Params and GFLOPs (FlopCounterMode, 2 x MACs, 640 x 640, batch 1) are counted for each row's model.

Every row runs once per seed (``--seeds``). Resumable: a (row, seed) whose result file
(``<results-dir>/<row>-seed<N>.json``) exists with the same settings and the same resolved model config (a preset
edited since is trained again; results stored before they recorded it are reused, marked as not compared) is skipped;
one interrupted mid-run resumes
exactly from its ``last.pt`` (``<runs-dir>/train/<row>-seed<N>/weights``), with the epoch count the budget gave it.
``--force`` reruns from scratch; ``--report-only`` trains nothing and tables what is stored (the combining step
after rows were run in separate processes), listing the (row, seed) pairs without a result. ``--from-peers DIR``: a row that is a bare preset (no overrides) takes the
same-budget training runs of ``python -m benchmarks.peers --train`` in DIR whose model, seed, budget, size, batch
and training arguments are this invocation's (the same trainer and recipe: one run serves both tables) instead
of training it again.
Writes ``benchmarks/results/ablation.md`` (mean ± spread (max - min) over the seeds per row) and
``benchmarks/results/ablation.json`` (``{"date", "cpu", "versions", "budget_min", "imgsz", "rows": [{"row", "seed",
"mAP50", "mAP50_95", "AP_small", "mask_bg_masked", "mask_obj_hot", ...}]}``, the mask fractions per level for
heatmap models, else null) beside the per-run JSON files.

``--smoke``: every row for one epoch on a few synthetic images at 64 px, into a temporary folder
(not ``benchmarks/results``), to check the whole path in seconds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import re
import shutil
import time
from pathlib import Path

import torch

from benchmarks._common import (SkipRow, default_datasets_env, epochs_trained, fmt, header, learning_args, load_avg,
                                load_hmpe_model_config, md_table, mean_cell, mean_spread, mean_spread_of, output_paths,
                                provenance, select_named, size_counts_note)
from hmpe.engine.eval.evaluator import SIZE_KEYS

ROWS_FILE = Path(__file__).resolve().parent / "ablation_rows.yaml"
METRICS = ("precision", "recall", "mAP50", "mAP50_95", "AP_small", "AP_small_input")
COUNT_KEYS = tuple(k for k in SIZE_KEYS if k.startswith("n_"))  # objects per size bucket: a table note
# settings that make two results comparable; a stored result with other values is not reused
SETTING_KEYS = ("budget_minutes", "imgsz", "batch", "data", "seed", "train_args", "model", "overrides")


def load_rows(path: Path) -> list[dict]:
    import yaml

    rows = yaml.safe_load(path.read_text()) or []
    for r in rows:
        if not isinstance(r, dict) or "name" not in r or "model" not in r:
            raise SystemExit(f"{path}: every row needs `name` and `model` (got {r!r})")
        r.setdefault("overrides", {})
        r.setdefault("optional", False)
    return rows


def slug(name: str) -> str:
    s = name.replace("+", "plus-")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-").lower()


def smoke_data() -> dict:
    return {"format": "synthetic", "num_train": 4, "num_val": 4, "imgsz": 96, "seed": 0, "overfit": True,
            "min_size": 8, "max_size": 32, "max_objects": 3, "negative_fraction": 0.0,
            "names": ["circle", "square", "triangle", "cross", "ring"]}


def train_config(row: dict, args) -> dict:
    from hmpe.utils.config import default_train_config, parse_overrides

    cfg = default_train_config()
    cfg.update(model=row["model"], data=args.data_value, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
               device=args.device, epochs=args.max_epochs, time_limit=args.budget_minutes, val_interval=10**6,
               heatmaps_per_epoch=0, project=str(args.runs_dir), name=slug(row["name"]), exist_ok=True,
               seed=args.seed)
    cfg.update(parse_overrides(args.train_args))
    if args.smoke:
        cfg.update(epochs=1, time_limit=None, augment=False, warmup_iters=2, lr=1e-3)
    return cfg


def first_epoch_seconds(run_dir: Path) -> float | None:
    path = run_dir / "results.csv"
    if not path.exists():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    try:
        return float(rows[0]["time_s"]) if rows else None
    except (KeyError, ValueError):
        return None


def model_cost(model: torch.nn.Module, imgsz: int) -> tuple[int, float]:
    from hmpe.engine.deploy.bench import count_gflops, count_params

    return count_params(model), count_gflops(model, torch.rand(1, 3, imgsz, imgsz))


def run_row(row: dict, args) -> dict:
    from hmpe.engine.checkpoint import load_checkpoint
    from hmpe.engine.train.trainer import Trainer

    model_cfg = load_hmpe_model_config(row["model"], row["overrides"])
    model_cfg["name"] = row["name"]
    cfg = train_config(row, args)
    run_dir = Path(args.runs_dir) / "train" / slug(row["name"])
    last = run_dir / "weights" / "last.pt"
    resumed = False
    if last.exists() and not args.force:
        ckpt = load_checkpoint(str(last))
        same = ckpt.get("model_cfg") == model_cfg and all(
            ckpt["train_cfg"].get(k) == cfg.get(k) for k in ("imgsz", "batch", "seed", "data", "time_limit"))
        if same:
            done = ckpt["epoch"] + 1
            epochs = ckpt.get("epochs", cfg["epochs"])
            if cfg.get("time_limit") and done == 1 and epochs == cfg["epochs"]:
                # The trainer writes the first epoch's checkpoint before the budget sizes the run, and a
                # resumed run keeps the larger of its own and the checkpoint's epoch count: size it here
                # the way the trainer would have (budget // first-epoch time) and store that in last.pt.
                t1 = first_epoch_seconds(run_dir)
                if t1:
                    from hmpe.engine.checkpoint import save_atomic

                    epochs = max(1, int(cfg["time_limit"] * 60 // max(t1, 1e-6)))
                    ckpt["epochs"] = epochs
                    ckpt["train_cfg"]["epochs"] = epochs
                    save_atomic(ckpt, last)
            print(f"[{row['name']}] resuming from {last} (epoch {done} of {epochs})", flush=True)
            cfg = dict(cfg, resume=str(last), epochs=epochs)
            resumed = True
            del ckpt
        else:
            print(f"[{row['name']}] {last} was trained with other settings: starting over", flush=True)
    if not resumed and run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.time()
    trainer = Trainer(cfg, None if resumed else model_cfg, explicit_keys=("epochs",) if resumed else ())
    metrics = trainer.fit()
    minutes = (time.time() - t0) / 60
    t1 = time.time()
    params, gflops = model_cost(trainer.ema.module if trainer.ema is not None else trainer.model, args.flops_imgsz)
    print(f"[{row['name']}] trained and scored in {t1 - t0:.0f} s; params / GFLOPs counted in {time.time() - t1:.0f} s",
          flush=True)
    return {"name": row["name"], "model": row["model"], "overrides": row["overrides"],
            "metrics": {k: float(v) for k, v in metrics.items()
                        if k in METRICS or k in COUNT_KEYS or k.startswith("mask_")},
            "epochs": epochs_trained(trainer), "epochs_planned": trainer.epochs,  # as the peers runs record them
            "wall_minutes_this_session": minutes, "resumed": resumed,
            "params": params, "gflops": gflops, "flops_imgsz": args.flops_imgsz,
            "decoder_layers": (trainer.model_cfg.get("decoder") or {}).get("num_layers"),
            "train_images": len(trainer.train_set),
            "run_dir": str(trainer.run_dir),
            "settings": settings(row, args)}


def model_config_record(row: dict) -> dict | None:
    """The row's model config as this checkout resolves it (preset + overrides), in JSON types and without the
    display name: what a stored result must have been trained with to be reused. None when the preset is gone."""
    try:
        cfg = load_hmpe_model_config(row["model"], row["overrides"])
    except SkipRow:
        return None
    return comparable_config(cfg)


def comparable_config(cfg: dict) -> dict:
    """A model config in JSON types without its display name: two runs of one config compare equal."""
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "name"}, default=str))


def stored_result(path: Path, expected_settings: dict, force: bool, name: str,
                  model_config: dict | None = None) -> dict | None:
    """The result stored at ``path`` when it was made with ``expected_settings`` and, where both are known, the
    same resolved ``model_config`` (a preset edited since is trained again), and not ``force``; else None."""
    if not path.exists() or force:
        return None
    stored = json.loads(path.read_text())
    if stored.get("settings") != expected_settings:
        print(f"[{name}] {path} holds another setting's result: running again", flush=True)
        return None
    recorded = stored.get("model_config")
    if recorded is not None and model_config is not None and recorded != model_config:
        print(f"[{name}] {path} was trained with another config of {stored.get('model')!r} (the preset or an "
              f"override changed since): running again", flush=True)
        return None
    unchecked = " (stored before results recorded their model config: not compared)" if recorded is None else ""
    print(f"[{name}] done before: {path}{unchecked} (--force reruns it)", flush=True)
    return stored


def settings(row: dict, args) -> dict:
    return {"budget_minutes": None if args.smoke else args.budget_minutes, "imgsz": args.imgsz, "batch": args.batch,
            "data": args.data_value if isinstance(args.data_value, str) else "synthetic (smoke)",
            "seed": args.seed, "train_args": learning_args(args.train_args), "model": row["model"],
            "overrides": row["overrides"],
            # a fixed-epoch run (no budget) is only comparable with one of the same epochs
            **({"epochs": args.max_epochs} if args.budget_minutes is None and not args.smoke else {})}


def row_summary(runs: list[dict]) -> dict:
    """Mean and spread (max - min) over a row's seeds of every metric and the epochs (None: a metric some stored
    run lacks)."""
    out = {"seeds": sorted(r["seed"] for r in runs)}
    out["epochs"], out["epochs_spread"] = mean_spread([float(r["epochs"]) for r in runs])
    for k in METRICS:
        out[k], out[k + "_spread"] = mean_spread_of([r["metrics"] for r in runs], k)
    return out


def mask_cell(runs: list[dict]) -> str:
    """The heatmap mask at S4 and S5 (the levels where position encoding can enter attention), mean over the
    seeds: background cells masked / object cells kept hot; "-" for a row without a heatmap."""
    parts = []
    for level in ("S4", "S5"):
        bg = [r["metrics"][f"mask_bg_masked/{level}"] for r in runs if f"mask_bg_masked/{level}" in r["metrics"]]
        obj = [r["metrics"][f"mask_obj_hot/{level}"] for r in runs if f"mask_obj_hot/{level}" in r["metrics"]]
        if bg and obj:
            parts.append(f"{level} {fmt(mean_spread(bg)[0], 2)} / {fmt(mean_spread(obj)[0], 2)}")
    return ", ".join(parts) or "-"


def budget_text(args) -> str:
    if args.smoke:
        return "one epoch per run (smoke)"
    if args.budget_minutes is None:
        return f"{args.max_epochs} epochs per run (--epochs: the same work for every row)"
    return (f"{args.budget_minutes} CPU minutes per run (trainer time_limit: the run re-sized after every epoch so "
            f"the schedule fits)")


def markdown(rows: list[dict], results: dict, skipped: list[tuple[str, str]], args, started_load: str) -> str:
    extra = [f"data: {args.data_value if isinstance(args.data_value, str) else 'synthetic (smoke)'}: trained on "
             f"the train split, scored on the val split (hmpe's COCOEvaluator, EMA weights; P and R at the "
             f"best-F1 confidence)",
             f"budget: {budget_text(args)}, from scratch, {args.imgsz} px, batch {args.batch}, "
             f"seeds {' '.join(map(str, args.seeds))}, torch threads {torch.get_num_threads()}"
             + (f", extra train args: {' '.join(args.train_args)}" if args.train_args else ""),
             "each metric: mean over the seeds ± the spread (max - min); a difference smaller than the spreads is "
             f"no difference; params and GFLOPs at {args.flops_imgsz} x {args.flops_imgsz}, batch 1 "
             "(FlopCounterMode, 2 x MACs); mask: the heatmap mask at S4 and S5 on the val split, "
             "background cells masked / object cells kept hot, mean over the seeds; "
             "Δ = change of the mean against the first row / the row above"]
    note = size_counts_note([(r["name"], res["metrics"]) for r in rows for res in results.get(r["name"]) or []])
    extra += [note] if note else []
    out = [header("Ablation: the paper's Table 2 at CPU scale" + (" (SMOKE)" if args.smoke else ""), extra,
                  started_load), ""]
    cols = ["row", "config", "dec. layers", "params (M)", "GFLOPs", "seeds", "epochs", "P", "R", "mAP50",
            "mAP50-95", "AP_S", "AP_S in", "mask bg masked / obj hot", "Δ mAP50 (first / prev)"]
    summaries = {r["name"]: row_summary(results[r["name"]]) for r in rows if results.get(r["name"])}
    table, base, prev = [], None, None
    for r in rows:
        if r["name"] not in summaries:
            continue
        s, first = summaries[r["name"]], results[r["name"]][0]
        base = base or s
        over = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in r["overrides"].items())

        def delta(ref):
            return f"{s['mAP50'] - ref['mAP50']:+.3f}" if ref is not None else "n/a"

        table.append([r["name"], f"`{r['model']}`" + (f" + `{over}`" if over else ""), first.get("decoder_layers"),
                      f"{first['params'] / 1e6:.2f}", f"{first['gflops']:.2f}", ",".join(map(str, s["seeds"]))]
                     + [mean_cell(s, k) for k in ("epochs",) + METRICS]
                     + [mask_cell(results[r["name"]]), f"{delta(base)} / {delta(prev)}"])
        prev = s
    out.append(md_table(cols, table, "ll" + "r" * (len(cols) - 2)))
    if skipped:
        out += ["", "Skipped rows:", ""] + [f"- {n}: {why}" for n, why in skipped]
    return "\n".join(out) + "\n"


def combined_json(rows: list[dict], results: dict, args) -> dict:
    """The combined result file: one entry per (row, seed); mask fractions per level, null without a heatmap."""
    def per_level(m: dict, kind: str) -> dict | None:
        found = {k.split("/")[-1]: v for k, v in m.items() if k.startswith(f"mask_{kind}/")}
        return found or None

    entries = []
    for r in rows:
        for res in results.get(r["name"], []):
            m = res["metrics"]
            entries.append({"row": r["name"], "seed": res["seed"], "model": r["model"], "overrides": r["overrides"],
                            "epochs": res["epochs"], **{k: m.get(k) for k in METRICS + COUNT_KEYS},
                            "mask_bg_masked": per_level(m, "bg_masked"), "mask_obj_hot": per_level(m, "obj_hot"),
                            "params": res["params"], "gflops": res["gflops"], "source": res.get("source", "ablation")})
    return {**provenance(),
            "budget_min": None if args.smoke else args.budget_minutes, "imgsz": args.imgsz, "batch": args.batch,
            **({"epochs": args.max_epochs} if args.budget_minutes is None and not args.smoke else {}),
            "train_args": list(args.train_args), "rows": entries}


def from_peers(row: dict, args, model_config: dict | None = None) -> dict | None:
    """A same-setting run of ``benchmarks.peers --train`` for a bare-preset row, trained with ``model_config``
    (when given), as this script's result (the GFLOPs counted on its final weights); None when there is none."""
    if row["overrides"] or not args.from_peers:
        return None
    for path in sorted(Path(args.from_peers).glob("*.json")):
        saved = json.loads(path.read_text())
        s = saved.get("_settings") or {}
        same = (s.get("minutes") == args.budget_minutes and s.get("imgsz") == args.imgsz
                and s.get("batch") == args.batch and s.get("seed") == args.seed
                and learning_args(s.get("hmpe_args", [])) == learning_args(args.train_args)
                and s.get("data", "nwpu-vhr10") == settings(row, args)["data"])  # runs before 2026-12-02: the default
        run = saved.get(row["model"])
        if not same or run is None:
            continue
        from hmpe.engine.checkpoint import load_checkpoint
        from hmpe.models.detector import build_model

        ckpt = load_checkpoint(Path(run["run_dir"]) / "weights" / "last.pt")
        if model_config is not None and comparable_config(ckpt["model_cfg"]) != model_config:
            print(f"[{row['name']}] seed {args.seed}: the peers run {path} trained another config of "
                  f"{row['model']!r}: not used", flush=True)
            continue
        # the cost depends on the structure only: the model is built, not loaded
        params, gflops = model_cost(build_model(ckpt["model_cfg"], len(ckpt["names"])).eval(), args.flops_imgsz)
        print(f"[{row['name']}] seed {args.seed}: the peers run {path}", flush=True)
        return {"name": row["name"], "model": row["model"], "overrides": {}, "metrics": run["metrics"],
                "epochs": run.get("epochs_trained", run["epochs"]), "params": params, "gflops": gflops,
                "flops_imgsz": args.flops_imgsz,
                "decoder_layers": ckpt["model_cfg"].get("decoder", {}).get("num_layers"),
                "run_dir": run["run_dir"], "source": str(path)}
    return None


def run_seed(row: dict, seed: int, args) -> dict | None:
    """One (row, seed): its stored result, a matching peers run (``--from-peers``), or a training run
    (``--report-only``: None instead of training)."""
    a = copy.copy(args)
    a.seed = seed
    seeded = dict(row, name=f"{row['name']}-seed{seed}")
    path = args.results_dir / f"{slug(seeded['name'])}.json"
    model_config = model_config_record(row)
    stored = stored_result(path, settings(row, a), args.force, seeded["name"], model_config)
    if stored is not None:
        return stored
    res = from_peers(row, a, model_config)
    if res is None and args.report_only:
        return None
    if res is None:
        print(f"=== [{seeded['name']}] {row['model']} {row['overrides'] or ''}", flush=True)
        res = run_row(seeded, a)
    res.update(name=row["name"], seed=seed, settings=settings(row, a), model_config=model_config)
    path.write_text(json.dumps(res, indent=1, default=str))
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=35.0, help="CPU minutes per row (trainer time_limit)")
    p.add_argument("--epochs", type=int, default=None,
                   help="a fixed number of epochs per row instead of --budget-minutes (comparable across CPUs)")
    p.add_argument("--data", default="nwpu-vhr10")
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and row")
    p.add_argument("--from-peers", default=None,
                   help="folder of `benchmarks.peers --train` run JSON files to take same-setting runs from")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--max-epochs", type=int, default=1000, help="epoch cap before the budget sizes the run")
    p.add_argument("--flops-imgsz", type=int, default=640, help="input size for the GFLOPs column (smoke: 64)")
    p.add_argument("--rows", nargs="*", default=None, help="row names to run (default: the non-optional rows)")
    p.add_argument("--all-rows", action="store_true", help="also the optional rows")
    p.add_argument("--rows-file", default=str(ROWS_FILE))
    p.add_argument("--train-args", nargs="*", default=[], help="key=value overrides for every row's training")
    p.add_argument("--runs-dir", default=None,
                   help="training runs (default: runs/ablation under the working directory)")
    p.add_argument("--results-dir", default=None, help="per-row JSON (default: benchmarks/results/ablation)")
    p.add_argument("--out", default=None, help="markdown (default: benchmarks/results/ablation.md)")
    p.add_argument("--force", action="store_true", help="rerun rows that have results / checkpoints")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: the table of the stored and --from-peers runs, missing seeds listed")
    p.add_argument("--smoke", action="store_true", help="one epoch per row on a few synthetic images at 64 px")
    a = p.parse_args(argv)
    if a.epochs is not None:
        if a.epochs < 1:
            p.error(f"--epochs {a.epochs}: expected an integer >= 1")
        a.budget_minutes, a.max_epochs = None, a.epochs
    if a.smoke:
        a.imgsz = 64 if a.imgsz == 512 else a.imgsz
        a.flops_imgsz = 64 if a.flops_imgsz == 640 else a.flops_imgsz
        a.batch = min(a.batch, 4)
        a.workers = 0
    a.data_value = smoke_data() if a.smoke else a.data
    output_paths(a, "ablation")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started_load = load_avg()
    all_rows = load_rows(Path(args.rows_file))
    rows = select_named(all_rows, args.rows, args.all_rows, "rows")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = {}, []
    for row in rows:
        for seed in args.seeds:
            try:
                res = run_seed(row, seed, args)
                if res is None:  # --report-only: this seed was not run yet
                    skipped.append((row["name"], f"seed {seed}: no stored result (--report-only)"))
                    continue
                results.setdefault(row["name"], []).append(res)
            except SkipRow as e:
                skipped.append((row["name"], str(e)))
                print(f"[{row['name']}] skipped: {e}", flush=True)
                break
    results = {k: v for k, v in results.items() if v}
    md = markdown(rows, results, skipped, args, started_load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(combined_json(rows, results, args), indent=1, default=str))
    print(md)
    print(f"written to {args.out} and {args.out.with_suffix('.json')}")
    return {"results": results, "skipped": skipped, "markdown": str(args.out)}


if __name__ == "__main__":
    default_datasets_env()
    main()
