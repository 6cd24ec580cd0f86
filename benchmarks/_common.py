"""Helpers shared by the benchmark scripts: rows as configs, offline guard, markdown headers."""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def default_datasets_env() -> None:
    """The shipped dataset YAMLs find ``../shared/datasets`` from the working directory; a script run as a
    program finds it from the checkout, wherever it is started (an HMPE_DATASETS already set wins)."""
    if (ROOT.parent / "shared" / "datasets").is_dir():
        os.environ.setdefault("HMPE_DATASETS", str(ROOT.parent / "shared" / "datasets"))


# training arguments that change what a run writes, not what it learns: a stored result trained without them is
# the same result (``plots=false`` must not make a benchmark train every row again)
OUTPUT_ONLY_TRAIN_KEYS = frozenset({"plots", "exist_ok"})


def learning_args(train_args: list[str]) -> list[str]:
    """``key=value`` training arguments less those in :data:`OUTPUT_ONLY_TRAIN_KEYS`: what decides whether a stored
    result was trained the way this invocation would train it."""
    return [a for a in train_args if a.partition("=")[0].strip() not in OUTPUT_ONLY_TRAIN_KEYS]


class SkipRow(Exception):
    """A row that cannot run here (missing preset, missing optional package); the message says why."""


# ------------------------------------------------------------------------------------------------
# rows: model preset name or YAML path + dotted overrides
# ------------------------------------------------------------------------------------------------
def parse_row_spec(spec: str) -> tuple[str, dict]:
    """``"rtdetr-n"`` or ``"rtdetr-n:decoder.num_layers=3,backbone.strip_conv=null"`` -> (model, overrides).

    Values are YAML (as on the ``hmpe`` command line). A value that itself holds commas (a list or a
    mapping) must be bracketed: ``"rtdetr-n:backbone.strip_conv={kind: lsconv, stages: [3, 4]}"``.
    """
    from hmpe.utils.config import parse_overrides

    model, _, rest = spec.partition(":")
    items = [i.strip() for i in split_top_level(rest) if i.strip()]
    return model.strip(), parse_overrides(items)


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]`` or ``{...}`` (YAML lists and mappings)."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return items


def output_paths(args, name: str) -> None:
    """Set ``args.runs_dir`` / ``results_dir`` / ``out`` of a resumable script named ``name``: as given, else a
    temporary folder under ``--smoke`` (never ``benchmarks/results``), else ``runs/<name>`` under the working
    directory (so that result files record the run folders relative to it), ``benchmarks/results/<name>/`` and
    ``benchmarks/results/<name>.md``."""
    if args.smoke and not (args.runs_dir and args.results_dir):
        tmp = Path(tempfile.mkdtemp(prefix=f"hmpe-{name}-smoke-"))
        args.runs_dir = args.runs_dir or tmp / "runs"
        args.results_dir = args.results_dir or tmp / "results"
    if args.smoke:
        args.out = args.out or Path(args.results_dir) / f"{name}.md"
    args.runs_dir = Path(args.runs_dir or Path("runs") / name)
    args.results_dir = Path(args.results_dir or RESULTS / name)
    args.out = Path(args.out or RESULTS / f"{name}.md")


def select_named(items: list[dict], names: list[str] | None, include_optional: bool, what: str) -> list[dict]:
    """The ``items`` (dicts with ``name`` and ``optional``) named in ``names`` (an unknown name is an error
    listing the known ones), or without names every non-optional item (all of them with ``include_optional``)."""
    if names:
        unknown = set(names) - {i["name"] for i in items}
        if unknown:
            raise SystemExit(f"unknown {what} {sorted(unknown)}; {what}: {[i['name'] for i in items]}")
        return [i for i in items if i["name"] in names]
    return [i for i in items if include_optional or not i["optional"]]


def load_hmpe_model_config(model: str, overrides: dict | None = None) -> dict:
    """Preset / YAML + dotted overrides -> model config; :class:`SkipRow` when the preset is missing."""
    from hmpe.utils.config import apply_overrides, load_model_config, model_presets

    try:
        cfg = load_model_config(model)
    except ValueError:
        raise SkipRow(f"model {model!r} is not a preset of this checkout ({', '.join(model_presets())}) "
                      f"nor a YAML file") from None
    return apply_overrides(cfg, overrides or {})


# ------------------------------------------------------------------------------------------------
# offline: nothing is downloaded
# ------------------------------------------------------------------------------------------------
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: no request to the hub
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "YOLO_OFFLINE": "1",  # ultralytics: ONLINE = False (no analytics events, no auto-update, no downloads)
}


def set_offline_env() -> None:
    """Set the offline switches of huggingface_hub / transformers / ultralytics (before importing them)."""
    for k, v in OFFLINE_ENV.items():
        os.environ[k] = v


class NetworkAttempt(RuntimeError):
    pass


@contextmanager
def no_network(record: list | None = None) -> Iterator[list]:
    """Make every outgoing connection and DNS look-up raise :class:`NetworkAttempt` (and record it).

    Proof that a block downloads nothing: if a library tried, the run fails loudly (or, with a
    ``record`` list passed, the attempts are listed there and reported).
    """
    attempts = record if record is not None else []
    orig_connect, orig_gai, orig_cc = socket.socket.connect, socket.getaddrinfo, socket.create_connection

    def refuse(what):
        def f(*args, **kwargs):
            import traceback

            lib = ("socket", "urllib", "requests", "http", "ssl", "httpx", "huggingface_hub")
            caller = next((f"{fr.filename}:{fr.lineno} ({fr.name})" for fr in reversed(traceback.extract_stack()[:-1])
                           if not any(k in fr.filename for k in lib)), "?")
            attempts.append(f"{what}{args[1:] if what == 'connect' else args[:2]} from {caller}")
            raise NetworkAttempt(f"network access attempted inside an offline benchmark: {attempts[-1]}")
        return f

    socket.socket.connect = refuse("connect")  # type: ignore[method-assign]
    socket.getaddrinfo = refuse("getaddrinfo")  # type: ignore[assignment]
    socket.create_connection = refuse("create_connection")  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.socket.connect = orig_connect  # type: ignore[method-assign]
        socket.getaddrinfo = orig_gai  # type: ignore[assignment]
        socket.create_connection = orig_cc  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("hmpe", "torch", "torchvision", "ultralytics", "transformers", "onnxruntime", "openvino", "nncf",
                "faster-coco-eval", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["python"] = sys.version.split()[0]
    return out


def utc_stamp() -> str:
    """Now, as every result file dates itself: ``2026-12-02 03:22 UTC``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def provenance() -> dict:
    """``{"date", "cpu", "versions"}``: what a result file carries so that its figures can be placed."""
    from hmpe.engine.deploy.bench import environment

    return {"date": utc_stamp(), "cpu": environment()["cpu"], "versions": versions()}


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script, as typed from the checkout: ``python -m benchmarks.NAME ARGS``
    (``argv``: the arguments a caller passed to ``main`` instead of the process's own)."""
    script = Path(sys.argv[0])
    try:
        rel = script.resolve().relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__main__" else rel.parts
        prog = ["-m", ".".join(parts)]
    except ValueError:  # not a script of this checkout (pytest, an interactive session): its name, not its folder
        prog = [script.name]
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in prog + args)


def header(title: str, extra: list[str] | None = None, started_load: str | None = None) -> str:
    from hmpe.engine.deploy.bench import environment

    env = environment()
    lines = [f"# {title}", "",
             f"- date: {utc_stamp()}",
             f"- CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs)"
             + (f", GPU: {env['cuda_device']}" if "cuda_device" in env else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
             f"- command: `{command_line()}`"]
    if started_load is not None:
        lines.append(f"- load average (1/5/15 min) at start / end: {started_load} / {load_avg()}")
    lines += [f"- {e}" for e in (extra or [])]
    return "\n".join(lines) + "\n"


def emit_report(text: str, out: str | Path | None) -> None:
    """Print a markdown report and write it to ``out`` (None: printed only, e.g. a smoke run)."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


def train_minutes(results_csv: Path) -> float:
    """Minutes a `hmpe train` run spent in its epochs (the ``time_s`` column of its results.csv)."""
    import csv

    with open(results_csv, newline="") as f:
        return sum(float(r["time_s"]) for r in csv.DictReader(f)) / 60


def md_table(columns: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(columns) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def epochs_trained(trainer) -> float:
    """Epochs a finished hmpe Trainer actually trained: with ``time_limit`` the last one may be partial."""
    return round(trainer.iteration / len(trainer.train_loader), 2)


def mean_spread(values: list[float]) -> tuple[float, float]:
    """(mean, spread) of repeated runs, the spread being max - min: the figure a difference must beat."""
    values = list(values)
    if not values:
        return float("nan"), float("nan")
    return sum(values) / len(values), max(values) - min(values)


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def mean_spread_of(metrics: list[dict], key: str) -> tuple[float | None, float | None]:
    """:func:`mean_spread` of ``key`` over runs' metrics; (None, None) when a run lacks it (a result stored before
    the key existed): a mean over some of the seeds would not compare with the other rows."""
    if not metrics or any(m.get(key) is None for m in metrics):
        return None, None
    return mean_spread([float(m[key]) for m in metrics])


def mean_cell(summary: dict, key: str) -> str:
    """A table cell of a row summary: mean ± spread over several seeds, the value of one, n/a when missing."""
    v = summary.get(key)
    if v is None:
        return fmt(None)
    return f"{v:.3f} ± {summary[key + '_spread']:.3f}" if len(summary["seeds"]) > 1 else fmt(v)


def size_counts_note(named_metrics: list[tuple[str, dict]]) -> str | None:
    """The table note with the ground-truth objects per COCO size bucket of the scored split, in native pixels and
    at the model's input (hmpe's evaluator: ``n_small`` ... ``n_large_input``), and what ``AP_S in`` is; None when
    no run holds the counts (results stored before they existed). Counts are the same for every run of one split
    and input size; where inputs differ (resize against letterbox) each count is followed by its runs."""
    from hmpe.engine.eval.evaluator import SIZE_KEYS

    keys = [k for k in SIZE_KEYS if k.startswith("n_")]  # native S/M/L, then at the input
    groups: dict[tuple, list[str]] = {}
    for name, m in named_metrics:
        if all(m.get(k) is not None for k in keys):
            groups.setdefault(tuple(int(m[k]) for k in keys), []).append(str(name))
    if not groups:
        return None

    def sml(counts: tuple) -> str:
        return "/".join(map(str, counts))

    native = " or ".join(dict.fromkeys(sml(c[:3]) for c in groups))
    if len({c[3:] for c in groups}) == 1:
        at_input = sml(next(iter(groups))[3:])
    else:
        at_input = ", ".join(f"{sml(c[3:])} ({', '.join(dict.fromkeys(n))})" for c, n in groups.items())
    return (f"objects per size bucket (small/medium/large) of the scored split: {native} in native pixels, "
            f"{at_input} at the model's input; AP_S in: COCO's AP_small over the objects small at the model's "
            f"input (AP_small_input)")
