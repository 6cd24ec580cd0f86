"""Each default is stated once, in the key table (hmpe.utils.keys); every other place that names one agrees with
it: the Detector methods (the key's default, or None resolved to it from the table), the keyword defaults of the
model constructors (the model sections), of the synthetic dataset and of the explorer, and ``hmpe bench``, whose
defaults are read from the table. Each check lists the disagreements and asserts there are none."""

import dataclasses
import inspect

from helpers import model_section_constructors, tiny_model_yaml
from hmpe.utils import keys
from hmpe.utils.keys import SYNTHETIC, defaults
from hmpe.utils.model_keys import MODEL, MODEL_SCALARS

TASK_METHODS = ("train", "val", "predict", "heatmap", "export", "explore")  # Detector.<task> runs hmpe <task>
# model keys whose table default is None because another key's value is their default; a constructor states
# that key's default
DERIVED = {("encoder", "pe_temperature"): ("heatmap", "temperature"), ("encoder", "pe"): ("heatmap", "pe"),
           ("postprocess", "num_top_queries"): ("decoder", "num_queries")}


def _keyword_defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _same(a, b) -> bool:
    a, b = (list(v) if isinstance(v, tuple) else v for v in (a, b))  # (1, 2, 3) in Python, [1, 2, 3] in YAML
    return a == b and isinstance(a, bool) == isinstance(b, bool)  # True == 1, yet not the same default


def _model_default(section: str | None, key: str):
    return next(k.default for k in (MODEL[section] if section else MODEL_SCALARS) if k.name == key)


def method_disagreements(fn, task: str) -> list[str]:
    """The keyword defaults of ``fn`` that differ from the defaults of ``hmpe TASK``'s keys of the same name. A
    None stands for the key's default only where ``fn`` resolves it (:func:`hmpe.api.key_defaults` for ``task``)."""
    table = defaults(task)
    resolves = getattr(fn, "key_task", None) == task
    bad = []
    for arg, value in _keyword_defaults(fn).items():
        if arg not in table:
            continue
        if value is None and table[arg] is not None and not resolves:
            bad.append(f"{fn.__qualname__}({arg}=None): nothing resolves it to hmpe {task}'s {table[arg]!r}")
        elif value is not None and not _same(value, table[arg]):
            bad.append(f"{fn.__qualname__}({arg}={value!r}): hmpe {task}'s default is {table[arg]!r}")
    return bad


def test_the_check_finds_a_disagreement():
    def predict(self, source, conf=0.3, save=None, name=None, batch=4):
        pass

    assert method_disagreements(predict, "predict") == [
        f"{predict.__qualname__}(conf=0.3): hmpe predict's default is 0.25",
        f"{predict.__qualname__}(save=None): nothing resolves it to hmpe predict's True"]


def test_detector_methods_agree_with_the_task_keys():
    from hmpe.api import Detector

    bad = [d for task in TASK_METHODS for d in method_disagreements(getattr(Detector, task), task)]
    bad += method_disagreements(Detector.__init__, "train")  # Detector(model=, device=): the training keys
    assert bad == []


def test_none_is_the_key_default():
    from hmpe.api import key_defaults

    @key_defaults("predict", keep=("overlap",))
    def predict(source, conf=None, save=None, overlap=None, other=None):
        return conf, save, overlap, other

    table = defaults("predict")
    assert predict("a.jpg") == (table["conf"], table["save"], None, None)  # overlap: resolved by the method
    assert predict("a.jpg", conf=0.5, save=False) == (0.5, False, None, None)


def test_model_constructors_agree_with_the_model_keys():
    bad = []
    for section, ctor in model_section_constructors().items():
        given = _keyword_defaults(ctor.__init__)
        for key in MODEL[section]:
            want = key.default
            if want is None and (section, key.name) in DERIVED:
                want = _model_default(*DERIVED[(section, key.name)])
            if key.name in given and not _same(given[key.name], want):
                bad.append(f"{ctor.__name__}({key.name}={given[key.name]!r}): {section}.{key.name} is {want!r}")
        for key in MODEL_SCALARS:  # hidden_dim, where a constructor has a default for it
            if key.name in given and not _same(given[key.name], key.default):
                bad.append(f"{ctor.__name__}({key.name}={given[key.name]!r}): {key.name} is {key.default!r}")
    assert bad == []


def test_synthetic_dataset_agrees_with_the_data_keys():
    from hmpe.data.synthetic import SyntheticDataset

    given = _keyword_defaults(SyntheticDataset.__init__)
    bad = [f"SyntheticDataset({k.name}={given[k.name]!r}): the key's default is {k.default!r}"
           for k in SYNTHETIC if k.name in given and not _same(given[k.name], k.default)]
    assert bad == []
    table = {k.name: k.default for k in SYNTHETIC}
    ds = SyntheticDataset.from_config({"format": "synthetic", "num_train": 1}, "train")  # no imgsz, no seed
    assert (ds.height, ds.width, ds.seed) == (table["imgsz"], table["imgsz"], table["seed"])


def test_explorer_agrees_with_the_explore_keys():
    from hmpe.explore import serve
    from hmpe.explore.session import ExploreSession

    assert method_disagreements(ExploreSession.__init__, "explore") + method_disagreements(serve, "explore") == []


def test_bench_defaults_come_from_the_key_table(tmp_path, monkeypatch):
    """``hmpe bench`` with nothing typed runs with the table's defaults, whatever they are."""
    import hmpe.engine.deploy.bench as bench
    import hmpe.models.detector as detector
    from hmpe.cli import cmd_bench

    changed = {"model": str(tiny_model_yaml(tmp_path)), "nc": 3, "imgsz": 96, "sizes": [96], "batch": 2, "warmup": 7,
               "runs": 11, "fuse": False}  # the input size: imgsz, or sizes where the table has that key
    monkeypatch.setitem(keys.TASKS, "bench", tuple(dataclasses.replace(k, default=changed.get(k.name, k.default))
                                                   for k in keys.TASKS["bench"]))
    seen, reports = [], []
    build = detector.build_model
    monkeypatch.setattr(detector, "build_model", lambda cfg, nc: seen.append((cfg["name"], nc)) or build(cfg, nc))
    monkeypatch.setattr(bench, "benchmark_model", lambda *a: seen.append(a[1:]) or reports.append({}) or reports[-1])
    monkeypatch.setattr(bench, "format_report", lambda name, r: "")
    assert cmd_bench([]) == 0
    (name, nc), (size, *rest) = seen
    assert (name, nc, bench.imgsz_hw(size), rest) == ("tiny", 3, (96, 96), [2, defaults("bench")["device"], 7, 11])
    assert [r["fused"] for r in reports] == [False]
