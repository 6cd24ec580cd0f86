"""benchmarks/profile_train.py in smoke mode: every part of hmpe-n's training step is timed inside the
trainer's own epoch loop, and the parts never exceed the iteration."""

import torch

from benchmarks import profile_train as prof


def test_profile_train_smoke(tmp_path):
    out = tmp_path / "p.md"
    n = torch.get_num_threads()
    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    try:
        per_part = prof.main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    # what the profiler wrapped process-wide is put back
    assert torch.Tensor.backward is backward and torch.nn.utils.clip_grad_norm_ is clip
    for p in prof.PARTS:  # hmpe-n has every part; the smoke step has denoising, a probe loss and an EMA
        assert len(per_part[p]) == 2 and all(t > 0 for t in per_part[p]), p
    for r in range(2):
        assert sum(per_part[p][r] for p in prof.PARTS) <= per_part["total"][r] * 1.001
    text = out.read_text()
    assert "| backward |" in text and "| matcher |" in text and "training images/s" in text
