"""hmpe command line. One argument style: hmpe TASK [SOURCE] key=value ...

    hmpe train                                  # default preset on the synthetic dataset
    hmpe train model=rtdetr-n data=nwpu-vhr10 epochs=72 imgsz=512
    hmpe val weights=runs/train/exp/weights/best.pt [data=...]
    hmpe predict SOURCE weights=best.pt conf=0.3 [slice=640 overlap=0.2 merge=nms|wbf merge_iou=0.5 strict=false]
                                                # exit 3: finished, unreadable inputs skipped (named)
    hmpe predict SOURCE weights=hmpe-n-nwpu      # weights=NAME: weights shipped with hmpe (hmpe/weights/NAME)
    hmpe export weights=best.pt format=onnx|openvino [imgsz=... opset=17 gather_sampling=false out=PATH image=IMG]
    hmpe export weights=best.pt format=onnx|openvino int8=true [data=DATA calib_images=300 val_images=N]  # + INT8
    hmpe export weights=best.pt format=safetensors [out=DIR half=true]   # config.json + model.safetensors, no pickle
    hmpe heatmap SOURCE weights=best.pt [conf=0.25 imgsz=... level=0|1|2|max out=DIR]  # heatmap-path models
    hmpe explore weights=best.pt source=DIR|DATA.yaml [port=7860 host=127.0.0.1 split=val conf=0.25]  # browser
    hmpe bench model=rtdetr-n imgsz=640 batch=1 [device=cpu threads=2 warmup=3 runs=20 out=report.json fuse=true]
    hmpe bench model=hmpe-n backend=[torch,onnxruntime,openvino]   # each runtime's latency, interleaved, one run
    hmpe bench sizes=[512,640] batch=[1,4]      # one report per (size, batch); imgsz=512x640: one size, HxW
    hmpe data stats DATA [splits=[train,val] skip_bad=true]        # DATA: a dataset YAML or data=DATA
    hmpe data convert DATA to=coco|yolo out=DIR [splits=[val] skip_bad=true copy_images=true]
    hmpe cfg [model=NAME]                       # every key with its default and meaning; one model's config
    hmpe TASK --help                            # that task's keys; hmpe --version

Errors are one line naming the bad key, file or value and what to do: exit status 2 for a command line
that cannot work as typed (checked before anything loads), 1 for a failure while running (a bad file, a
missing device, an output folder that cannot be written); add verbose=true for the full traceback.
Ctrl-C: exit status 130 (hmpe train first saves a resumable last.pt and prints the resume= command).
"""

from __future__ import annotations

import os
import sys

import yaml

from hmpe import __version__
from hmpe.utils.config import apply_overrides, load_model_config, model_presets, parse_overrides, split_overrides
from hmpe.utils.keys import MODEL_KEY_TASKS, TASKS, UsageError, check_task_args, defaults, unknown_key_error
from hmpe.utils.keytypes import parse_hw
from hmpe.utils.model_keys import MODEL
from hmpe.utils.renames import deprecated, renamed_lines

# Everything that imports torch, the data formats or the models is imported inside the command that needs it,
# so that `hmpe --help`, `hmpe cfg` and a mistyped key answer without loading torch.

USAGE = __doc__


def _split_source(argv: list[str]) -> tuple[str | None, list[str]]:
    positional = [a for a in argv if "=" not in a]
    rest = [a for a in argv if "=" in a]
    if len(positional) > 1:
        raise UsageError(f"expected at most one SOURCE before key=value arguments, got {positional}")
    return (positional[0] if positional else None), rest


def _task_args(task: str, argv: list[str]) -> dict:
    """``[SOURCE] key=value ...`` of ``hmpe TASK`` -> its arguments, a positional SOURCE as ``source`` (tasks
    that take one; given both ways: UsageError)."""
    if "source" not in {k.name for k in TASKS[task]}:
        return parse_overrides(argv, task)  # a positional argument: "expected key=value"
    source, rest = _split_source(argv)
    args = parse_overrides(rest, task)
    if source is not None and "source" in args:
        raise UsageError(f"SOURCE given twice ({source} and source={args['source']}); give it once")
    return args if source is None else {"source": source, **args}


def _source_and_weights(task: str, argv: list[str], usage: str) -> tuple[str, str, dict]:
    """``SOURCE weights=PATH key=value ...`` -> (source, weights, the other arguments); ``usage`` on error."""

    args = _task_args(task, argv)
    source = args.pop("source", None)
    weights = args.pop("weights", None)
    if not source or not weights:
        raise UsageError(f"{'weights=PATH' if source else 'a SOURCE'} is required; {usage}")
    return source, weights, args


def cmd_train(argv: list[str]) -> int:
    from hmpe.api import make_train_config
    from hmpe.engine.train.trainer import train

    cfg, model_over, given = make_train_config(parse_overrides(argv, "train"))
    train(cfg, model_over, explicit_keys=given)
    return 0


def cmd_val(argv: list[str]) -> int:
    from hmpe.api import Detector

    args = parse_overrides(argv, "val")
    weights = args.pop("weights", None)
    if not weights:
        raise UsageError("weights=PATH is required (a checkpoint written by hmpe train)")
    det = Detector(weights=weights, device=args.pop("device", defaults("val")["device"]))
    det.val(data=args.pop("data", None), **args)
    return 0


def cmd_predict(argv: list[str]) -> int:
    from hmpe.api import Detector

    source, weights, args = _source_and_weights(
        "predict", argv, "usage: hmpe predict SOURCE weights=PATH [conf=0.25 imgsz=...]")
    det = Detector(weights=weights, device=args.pop("device", defaults("predict")["device"]))
    save = args.pop("save", defaults("predict")["save"])
    results = det.predict(source, save=save, **args)
    n = sum(len(r.scores) for r in results)
    skipped = f", {len(det.skipped)} skipped (unreadable: {', '.join(det.skipped)})" if det.skipped else ""
    print(f"{len(results)} images, {n} detections{skipped}" + (f"; results saved to {det.run_dir}" if save else ""))
    return 3 if det.skipped else 0  # 3: finished, but some inputs could not be read


def cmd_heatmap(argv: list[str]) -> int:
    """One heatmap figure (input + boxes, H_class, H_bbox, H_mixed, Mask, PE') per image of SOURCE."""
    from hmpe.api import Detector

    source, weights, args = _source_and_weights(
        "heatmap", argv, "usage: hmpe heatmap SOURCE weights=PATH [conf=0.25 imgsz=... level=0|1|2|max out=DIR]")
    det = Detector(weights=weights, device=args.pop("device", defaults("heatmap")["device"]))
    results = det.heatmap(source, **args)
    print(f"{len(results)} heatmap figures saved to {det.run_dir}")
    return 0


def cmd_explore(argv: list[str]) -> int:
    """The interactive heatmap explorer (hmpe.explore) until Ctrl-C."""
    from hmpe.api import Detector

    source, weights, args = _source_and_weights(
        "explore", argv, "usage: hmpe explore weights=PATH source=DIR|DATA.yaml [port=7860 host=127.0.0.1 "
              "split=val conf=0.25]")
    det = Detector(weights=weights, device=args.pop("device", defaults("explore")["device"]))
    det.explore(source, **args)
    return 0


def cmd_export(argv: list[str]) -> int:
    """ONNX / OpenVINO export with post-processed outputs and a parity check in the runtime (hmpe.engine.deploy.export),
    or a safetensors folder that ``weights=DIR`` / ``Detector.from_pretrained(DIR)`` read back."""
    from hmpe.api import Detector
    from hmpe.engine.deploy.export import ExportParityError

    args = parse_overrides(argv, "export")
    weights = args.pop("weights", None)
    if not weights:
        raise UsageError("weights=PATH is required; usage: hmpe export weights=PATH format=onnx|openvino [imgsz=... opset=17 "
                         "gather_sampling=false out=PATH image=IMG check=true int8=false data=DATA] | "
                         "format=safetensors [out=DIR half=true]")
    try:
        Detector(weights=weights, device="cpu").export(**args)
    except ExportParityError as e:
        print(f"hmpe export: PARITY CHECK FAILED: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_cfg(argv: list[str]) -> int:
    """``hmpe cfg``: every key of every task with its default and meaning (hmpe.utils.keys), the model keys,
    the presets; ``hmpe cfg model=NAME``: that model's config as the builder receives it."""
    args = parse_overrides(argv)
    for key in args:
        if key != "model":
            raise unknown_key_error(key, ["model"], "hmpe cfg")
    if "model" in args:
        print(f"# model config {args['model']} (as build_model receives it; section.key=value overrides it)")
        print(yaml.safe_dump(load_model_config(args["model"]), sort_keys=False))
    else:
        for task in TASKS:
            print(f"# hmpe {task}\n{describe(task)}\n")
        print("# model keys (hmpe train / bench: section.key=value; defaults in the presets)")
        print(describe_model())
        print("\n# renamed keys (the old name still works, with a deprecation warning; checkpoints load as they are)")
        print("\n".join(renamed_lines()))
    print("\nmodel presets:", ", ".join(model_presets()), "(hmpe cfg model=NAME shows one)")
    return 0


def describe(task: str) -> str:
    """``key: default  # meaning`` lines of a task (``hmpe cfg``, ``hmpe TASK --help``)."""
    lines = []
    for k in TASKS[task]:
        value = yaml.safe_dump({k.name: k.default}, default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{value:<34} # {k.help}")
    return "\n".join(lines)


def describe_model() -> str:
    return "\n".join(f"{sec}.{k.name:<22} # {k.help}" for sec, keys in MODEL.items() for k in keys)


def check_args(task: str, argv: list[str], files: bool = True) -> None:
    """The command line of ``hmpe TASK`` before any work, without loading torch (exit status 2 on error): every
    key known (ConfigKeyError naming the nearest), given once, of its type and range, its file, preset or shipped
    name present, no two keys in conflict (:func:`hmpe.utils.keys.check_task_args`). ``files=False``: the form
    only, not whether files exist (a command line read away from its files)."""
    if task == "data":
        command, args = _data_args(argv)
        if command is not None and command not in DATA_COMMANDS:  # before its keys: `hmpe data chek x`
            _check_data_command(command, args)
        check_task_args(task, args, files)
        _check_data_command(command, args)
    elif task in TASKS:
        check_task_args(task, _task_args(task, argv), files)


def cmd_bench(argv: list[str]) -> int:
    import torch

    from hmpe.engine.deploy.bench import benchmark_model, count_params, format_report, param_split, save_report
    from hmpe.models.detector import build_model

    model_over, given = split_overrides(parse_overrides(argv, "bench"))
    args = {**defaults("bench"), **given}  # every bench key, its default from the key table unless typed
    if args["files"] is not None:
        return _bench_files(args, sorted(set(given) - BENCH_FILE_KEYS) + sorted(model_over))
    if args["threads"]:
        torch.set_num_threads(int(args["threads"]))
    cfg = apply_overrides(load_model_config(args["model"]), model_over)
    model = build_model(cfg, int(args["nc"])).eval()
    params, split = count_params(model), param_split(model)  # of the trained structure, fused or not
    if args["fuse"]:  # deploy mode, as predict / val / export run it
        model.fuse()
    backends = args["backend"]
    sizes = [parse_hw(s) for s in args["sizes"] or [args["imgsz"]]]  # (h, w) each: sizes=[...], one report each
    batches = args["batch"]
    batches = batches if isinstance(batches, list) else [batches]
    reports = []
    for imgsz in sizes:
        for batch in batches:
            r = benchmark_model(model, imgsz, int(batch), args["device"], int(args["warmup"]), int(args["runs"]))
            r.update(model=cfg.get("name", "model"), fused=bool(args["fuse"]), params=params, split=split,
                     split_mb={k: v * 4 / 2**20 for k, v in split.items()})
            print(format_report(r["model"], r))
            if backends is not None:
                r["backends"] = _bench_backends(model, cfg, args, imgsz, int(batch), backends)
            reports.append(r)
    if args["out"]:
        print(f"saved to {save_report(args['out'], reports)}")
    return 0


BENCH_FILE_KEYS = {"files", "batch", "threads", "warmup", "runs", "out", "device"}  # what applies to files=


def _bench_files(args: dict, others: list[str]) -> int:
    """``files=``: exported files timed as they are (hmpe.engine.deploy.backends.file_latencies)."""
    from hmpe.engine.deploy.backends import file_latencies
    from hmpe.engine.deploy.bench import save_report

    if others or args["device"] != "cpu":
        bad = others or [f"device={args['device']}"]
        raise UsageError(f"{', '.join(bad)}: files= times exported files as they are, on the CPU (their size is the "
                         f"exported one); it takes {', '.join(sorted(BENCH_FILE_KEYS - {'files', 'device'}))}")
    files = args["files"] if isinstance(args["files"], list) else [args["files"]]
    batches = args["batch"] if isinstance(args["batch"], list) else [args["batch"]]
    reports = []
    for batch in batches:
        times = file_latencies(files, int(batch), args["threads"], int(args["warmup"]), int(args["runs"]))
        for path, r in times.items():
            print(f"{path}: {r['runtime']}, {r['imgsz']}, batch {batch}: median {r['latency_ms_median']:.1f} ms / "
                  f"p90 {r['latency_ms_p90']:.1f} ms ({r['runs']} interleaved rounds)")
            reports.append({"file": path, "batch": int(batch), **r})
    if args["out"]:
        print(f"saved to {save_report(args['out'], reports)}")
    return 0


def _bench_backends(model, cfg: dict, args: dict, imgsz, batch: int, backends) -> dict:
    """``backend=...``: the same model's latency in each runtime, interleaved (hmpe.engine.deploy.backends);
    ``args``: every bench key, defaults merged (:func:`cmd_bench`)."""
    from hmpe.engine.deploy.backends import INT8_CALIB, backend_latencies
    from hmpe.engine.deploy.bench import imgsz_hw
    from hmpe.models.detector import build_postprocessor

    hw = imgsz_hw(imgsz)
    lat = backend_latencies(model, build_postprocessor(cfg, int(args["nc"])), hw, batch, backends,
                            int(args["threads"]) if args["threads"] else None, int(args["warmup"]), int(args["runs"]))
    print(f"  backends ({'fused' if args['fuse'] else 'unfused'} model, {next(iter(lat.values()))['runs']} "
          "interleaved rounds, median / p90 ms): "
          + ", ".join(f"{b} {v['latency_ms_median']:.1f} / {v['latency_ms_p90']:.1f}" for b, v in lat.items()))
    if any(b.endswith("-int8") for b in lat):
        print(f"  int8 backends: random weights calibrated on {INT8_CALIB} random images, speed only (the accuracy "
              "of an INT8 file: hmpe export ... int8=true)")
    return lat


#: hmpe data COMMAND -> (the keys it takes, the keys it needs); every key is in the key table (TASKS["data"])
DATA_COMMANDS = {"stats": (("data", "splits", "skip_bad"), ("data",)),
                 "convert": (("data", "splits", "skip_bad", "to", "out", "copy_images"), ("data", "to", "out"))}
_DATA_FLAGS = {"--to": "to", "--splits": "splits", "--skip-bad": "skip_bad", "--copy-images": "copy_images"}


def _data_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The argparse flags ``hmpe data`` took before key=value (``--to coco``, ``--splits a b``, ``--skip-bad``,
    ``--copy-images``) as ``key=value`` words, other words as they are; and the old and new spellings."""
    out, i, old, new = [], 0, [], []
    while i < len(argv):
        word, i = argv[i], i + 1
        key = _DATA_FLAGS.get(word)
        if key is None:
            if word.startswith("-") and "=" not in word:
                raise UsageError(f"unknown option {word!r}: hmpe data takes key=value arguments (hmpe data --help)")
            out.append(word)
            continue
        values = []
        while key in ("to", "splits") and i < len(argv) and not argv[i].startswith("-") and "=" not in argv[i] \
                and (key == "splits" or not values):
            values.append(argv[i])
            i += 1
        if key in ("to", "splits") and not values:
            raise UsageError(f"{word}: expected a value; use {key}=...")
        out.append(f"{key}={values[0]}" if key == "to" else f"{key}=[{','.join(values)}]" if values else f"{key}=true")
        old.append(" ".join([word, *values]))
        new.append(out[-1])
    return out, old, new


def _data_args(argv: list[str]) -> tuple[str | None, dict]:
    """``hmpe data COMMAND [DATA] key=value ...`` -> (COMMAND, its keys; a positional DATA as ``data``). The
    argparse form of before (flags, ``convert DATA OUT``) still reads, with a deprecation warning."""
    words, old, new = _data_flags(argv)
    positional = [a for a in words if "=" not in a]
    args = parse_overrides([a for a in words if "=" in a], "data")
    command, rest = (positional[0], positional[1:]) if positional else (None, [])
    if rest and "data" in args:
        raise UsageError(f"DATA given twice ({rest[0]} and data={args['data']}); give it once")
    if len(rest) == 2 and command == "convert" and "out" not in args:  # argparse's `convert DATA OUT`
        old, new = [rest[1], *old], [f"out={rest[1]}", *new]
        args["out"] = rest.pop()
    if old:  # one line for the whole command line
        deprecated(f"hmpe data {command} ... {' '.join(old)}", " ".join(new))
    if len(rest) > 1:
        raise UsageError(f"expected at most one DATA after the command, got {rest}; the other keys as key=value")
    return command, ({"data": rest[0]} if rest else {}) | args


def _check_data_command(command: str | None, args: dict) -> None:
    """The command of ``hmpe data`` known, each key one it takes, the keys it needs given (UsageError)."""
    usage = "hmpe data stats DATA | hmpe data convert DATA to=coco|yolo out=DIR (hmpe data --help)"
    if command not in DATA_COMMANDS:
        raise UsageError(f"unknown command {command!r}; usage: {usage}" if command else f"usage: {usage}")
    takes, needs = DATA_COMMANDS[command]
    for key in args:
        if key not in takes:
            raise UsageError(f"{key}= is not a key of hmpe data {command} (it takes {', '.join(takes)})")
    missing = [k for k in needs if args.get(k) is None]
    if missing:
        raise UsageError(f"hmpe data {command} needs {' and '.join(f'{k}=' for k in missing)}; usage: {usage}")


def cmd_data(argv: list[str]) -> int:
    from hmpe.data.tools import run_data

    command, args = _data_args(argv)
    _check_data_command(command, args)
    run_data(command, **args)
    return 0


COMMANDS = {
    "train": cmd_train,
    "val": cmd_val,
    "predict": cmd_predict,
    "export": cmd_export,
    "heatmap": cmd_heatmap,
    "explore": cmd_explore,
    "bench": cmd_bench,
    "data": cmd_data,
    "cfg": cmd_cfg,
}


def task_help(task: str) -> str:
    """``hmpe TASK --help``: the task's usage lines and every key with its default and meaning (the table
    the strict key check uses, :mod:`hmpe.utils.keys`)."""
    lines = [line.strip() for line in USAGE.splitlines() if line.strip().startswith(f"hmpe {task}")]
    if task in TASKS:
        lines += ["", "keys (key=value; values are YAML):", describe(task)]
    if task in MODEL_KEY_TASKS:
        lines += ["", "model keys: section.key=value (hmpe cfg lists them; hmpe cfg model=NAME shows a preset)"]
    lines += ["", "verbose=true: show the full traceback of an error"]
    return "\n".join(lines)


def _pop_verbose(rest: list[str]) -> tuple[list[str], bool]:
    verbose = [a for a in rest if a.startswith("verbose=")]
    keep = [a for a in rest if not a.startswith("verbose=")]
    return keep, any(a.split("=", 1)[1].strip().lower() in ("true", "1", "yes") for a in verbose)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Output into a pipe closed early (``hmpe cfg | head``) ends quietly
    with 141, the status of a process that SIGPIPE ended (128 + 13), as ``yes | head`` does."""
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than in the flush at exit
        return status
    except BrokenPipeError:
        # Python's advice: point stdout at /dev/null, so that the flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(f"hmpe {__version__}")
        return 0
    task, rest = argv[0], argv[1:]
    if task not in COMMANDS:
        print(f"hmpe: unknown task {task!r}; tasks: {', '.join(COMMANDS)} (hmpe --help)", file=sys.stderr)
        return 2
    if rest and (rest[0] in ("-h", "--help") or task == "data" and rest[1:2] in (["-h"], ["--help"])):
        print(task_help(task))
        return 0
    rest, verbose = _pop_verbose(rest)
    from hmpe.data.formats import DataError

    try:
        check_args(task, rest)
        return COMMANDS[task](rest) or 0
    except UsageError as e:  # the command line itself: nothing has run yet
        if verbose:
            raise
        print(f"hmpe {task}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early: main() ends quietly
        raise
    except (ValueError, OSError, DataError) as e:
        # Bad input from the user (a file, a dataset, a device, an output folder that cannot be written):
        # one clear line, no traceback.
        if verbose:
            raise
        print(f"hmpe {task}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C; hmpe train first saves a resumable last.pt and says how to resume
        if verbose:
            raise
        print(f"hmpe {task}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended


if __name__ == "__main__":
    sys.exit(main())
