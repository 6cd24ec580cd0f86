"""Part B's D-FINE-N row: transformers' D-FINE-N trained by hmpe's own loop (:class:`hmpe.engine.train.trainer.Trainer`
with an externally built model), so it gets exactly hmpe-n's recipe: the data pipeline, AdamW, warm-up + cosine,
gradient clipping, EMA, ``time_limit`` sizing, and validation by hmpe's evaluator. Its loss is D-FINE's own
(``outputs.loss``: the matching, VFL / FGL / DDF terms of the HF implementation).
"""

from __future__ import annotations

import time

from torch import Tensor, nn

from hmpe.engine.deploy.bench import count_params
from hmpe.engine.train.trainer import ModelParts, Trainer
from hmpe.models.rtdetr.postprocess import PostProcessor
from benchmarks._common import epochs_trained
from benchmarks.peers.models import SMOKE_QUERIES, dfine_n_config, require


class HFDetector(nn.Module):
    """A transformers DETR-family detector behind the Trainer's model contract: ``(images, targets)`` in train
    mode -> its heads and its own ``loss``; ``(images)`` -> ``pred_logits`` / ``pred_boxes``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict:
        labels = None if targets is None else [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        out = self.hf(pixel_values=images, labels=labels)
        heads = {"pred_logits": out.logits, "pred_boxes": out.pred_boxes}
        return heads if labels is None else {**heads, "loss": out.loss}


class HFLoss:
    """The detector's own loss as the Trainer's one loss term."""

    loss_groups = {"loss_dfine": "loss_dfine"}

    def __call__(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        return {"loss_dfine": outputs["loss"]}


def train_dfine(cfg: dict, smoke: bool = False) -> dict:
    """Train D-FINE-N with ``cfg`` (the training config of hmpe's rows, :func:`benchmarks.peers.training.
    trainer_config`): the model is built after the seed, with the dataset's class names."""
    require("transformers")
    from transformers import DFineForObjectDetection

    queries = SMOKE_QUERIES if smoke else 300

    def parts(names: list[str]) -> ModelParts:
        hf = DFineForObjectDetection(dfine_n_config(len(names), queries))
        return ModelParts(HFDetector(hf), HFLoss(), PostProcessor(len(names), queries), {"name": "dfine-n"})

    t0 = time.time()
    trainer = Trainer(dict(cfg, name="dfine-n"), model=parts)
    metrics = trainer.fit()
    return {"metrics": metrics, "epochs": trainer.epochs, "train_min": (time.time() - t0) / 60,
            "epochs_trained": epochs_trained(trainer),
            "params": count_params(trainer.model), "run_dir": str(trainer.run_dir)}
