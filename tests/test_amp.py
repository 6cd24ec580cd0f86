"""Mixed precision on CUDA: bf16 (default) and fp16 with a grad scaler; heads and losses stay fp32.

Skipped without a GPU. The CPU side of the contract (``amp_dtype`` is None on CPU) is checked always.
"""

import math

import pytest
import torch

from conftest import tiny_data, tiny_model_cfg, tiny_train_cfg
from hmpe.engine.trainer import Trainer, amp_dtype


def test_amp_is_off_on_cpu_and_parses_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp16", cpu) is None
    assert amp_dtype("auto", cuda) is torch.bfloat16 and amp_dtype("bf16", cuda) is torch.bfloat16
    assert amp_dtype("fp16", cuda) is torch.float16 and amp_dtype(False, cuda) is None
    with pytest.raises(ValueError):
        amp_dtype("fp8", cuda)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only (no GPU here)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_with_finite_losses_and_fp32_heads(amp, tmp_path):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = tiny_train_cfg(tmp_path, name=amp, amp=amp, device="cuda", epochs=2, batch=2, val_interval=1,
                         data=tiny_data(num_train=6, num_val=2, overfit=False), warmup_iters=2)
    trainer = Trainer(cfg, tiny_model_cfg())
    expected = torch.bfloat16 if amp == "bf16" else torch.float16
    assert trainer.amp_dtype is expected
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # the grad scaler only for fp16

    # one step by hand: autocast body, fp32 heads, fp32 losses
    images, targets = next(iter(trainer.train_loader))
    images = images.cuda()
    targets = [{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    trainer.model.train()
    with torch.autocast("cuda", dtype=expected):
        out = trainer.model(images, targets)
    assert out["pred_logits"].dtype == torch.float32 and out["pred_boxes"].dtype == torch.float32
    assert out["enc_outputs"]["pred_logits"].dtype == torch.float32
    assert all(o["pred_boxes"].dtype == torch.float32 for o in out["aux_outputs"])
    losses = trainer.criterion(out, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    trainer.optimizer.zero_grad(set_to_none=True)

    # a few real iterations through the trainer (2 epochs x 3 steps)
    for epoch in range(2):
        stats = trainer.train_one_epoch(epoch)
        assert math.isfinite(stats["loss"]) and stats["loss"] > 0, stats
    assert trainer.nan_count == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    metrics = trainer.validate()  # evaluation under autocast too
    assert 0.0 <= metrics["mAP50"] <= 1.0
