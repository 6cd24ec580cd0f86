"""DDP on CPU: two gloo processes launched by torchrun train the tiny detector in lockstep.

One launch of ``torchrun --standalone --nproc_per_node=2`` runs a driver that does exactly what
``torchrun ... -m hmpe train`` does (``make_train_config`` + ``train``) and then saves each rank's
weights; a second launch runs the real ``-m hmpe train`` command line.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, tiny_data, tiny_model_cfg

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

DRIVER = textwrap.dedent("""
    import os, sys
    import torch
    import hmpe.engine.train.trainer as T
    from hmpe.api import make_train_config
    from hmpe.utils.config import parse_overrides

    out, rank = sys.argv[1], int(os.environ["RANK"])
    real_save = T.save_atomic
    def recording_save(obj, path):  # which rank writes which checkpoint
        with open(os.path.join(out, f"saves_rank{rank}.txt"), "a") as f:
            f.write(os.path.basename(str(path)) + "\\n")
        real_save(obj, path)
    T.save_atomic = recording_save
    cfg, model_over, given = make_train_config(parse_overrides(sys.argv[2:]))
    trainer, metrics = T.train(cfg, model_over, explicit_keys=given)
    torch.save({"model": T.unwrap(trainer.model).state_dict(), "ema": trainer.ema.module.state_dict(),
                "metrics": {k: metrics[k] for k in ("mAP50", "mAP50_95")}, "run_dir": str(trainer.run_dir),
                "iterations": trainer.iteration}, os.path.join(out, f"rank{rank}.pt"))
""")


def _write_configs(tmp_path: Path, heatmap: bool) -> tuple[Path, Path]:
    model = tiny_model_cfg()
    if heatmap:
        model["heatmap"] = {"enabled": True}  # its gate gets no gradient: DDP must be told
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(model))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(tiny_data(num_train=8, num_val=4, overfit=False)))
    return tmp_path / "tiny.yaml", tmp_path / "data.yaml"


def _torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


def _train_args(tmp_path: Path, model: Path, data: Path, name: str) -> list[str]:
    return [f"model={model}", f"data={data}", "epochs=2", "batch=2", "imgsz=64", "workers=0", "augment=false",
            "lr=1e-3", "warmup_iters=2", "ema=true", "ema_warmup=2", "device=cpu", f"project={tmp_path / 'runs'}",
            f"name={name}", "exist_ok=true", "plots=false"]


def test_two_gloo_processes_train_in_lockstep(tmp_path):
    model, data = _write_configs(tmp_path, heatmap=True)
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    r = _torchrun([str(tmp_path / "driver.py"), str(out), *_train_args(tmp_path, model, data, "ddp")], tmp_path)
    log = r.stdout + r.stderr
    a, b = (torch.load(out / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    # 8 images / 2 ranks / batch 2 = 2 steps per epoch on each rank, 2 epochs
    assert a["iterations"] == b["iterations"] == 4
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"rank weights differ at {k}"
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), f"rank EMA weights differ at {k}"
    assert a["metrics"] == b["metrics"]  # rank 0 computed them; every rank got the same numbers
    assert a["run_dir"] == b["run_dir"]  # one run folder, named by rank 0
    # only rank 0 writes checkpoints, and they hold the trained weights
    assert not (out / "saves_rank1.txt").exists()
    saves = (out / "saves_rank0.txt").read_text().split()
    assert saves.count("last.pt") == 2
    run = tmp_path / "runs" / "train" / "ddp"
    assert sorted(p.name for p in (tmp_path / "runs" / "train").iterdir()) == ["ddp"]
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=False)
    assert all(torch.equal(ckpt["model"][k], a["ema"][k]) for k in a["ema"])  # the final last.pt: EMA weights
    assert "get no gradient and are not synchronised: heatmap.gate" in log
    assert "global batch 4" in log
    assert log.count("results saved to") == 1  # rank-0 logging


def test_torchrun_module_cli(tmp_path):
    """The documented launch: ``torchrun --standalone --nproc_per_node=2 -m hmpe train ...`` (baseline model)."""
    model, data = _write_configs(tmp_path, heatmap=False)
    r = _torchrun(["-m", "hmpe", "train", *_train_args(tmp_path, model, data, "cli")], tmp_path)
    log = r.stdout + r.stderr
    assert (tmp_path / "runs" / "train" / "cli" / "weights" / "last.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "train").iterdir()) == ["cli"]
    assert "DDP: 2 processes x batch 2 = global batch 4" in log
    assert "get no gradient" not in log  # the baseline uses every parameter
