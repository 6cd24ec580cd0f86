"""hmpe beside what users would pick instead: ultralytics YOLO11n / RT-DETR-L and HF transformers' D-FINE-N.

Part A (default): speed and size, in one run.

    python -m benchmarks.peers [--imgsz 640] [--rounds 20] [--threads 2] [--nc 80]

  Every model is built from its config with random weights -- nothing is downloaded: the offline
  switches of huggingface_hub / transformers / ultralytics are set before they are imported, and
  every socket connection or DNS look-up raises inside the run (``_common.no_network``), so a
  library that tried to fetch anything would fail the run. Rows:

    hmpe-n, hmpe-s, rtdetr-n     hmpe presets (a row whose preset is missing is skipped, with the
                                 reason); any preset or YAML path with dotted overrides works as a
                                 row: ``--models "rtdetr-n:decoder.num_layers=3,hmpe-n"``
    yolo11n                      ultralytics.nn.tasks.DetectionModel("yolo11n.yaml")
    rtdetr-l                     ultralytics.nn.tasks.RTDETRDetectionModel("rtdetr-l.yaml")
    dfine-n                      transformers DFineForObjectDetection with the D-FINE-N config
                                 (HGNetv2-B0 backbone, S4/S5 only (strides 16/32), hidden 128,
                                 3 decoder layers, depth_mult 0.5, hidden_expansion 0.34), as
                                 transformers' own conversion script sets it for ``dfine_n_coco``

  Each model is timed on the raw module forward (``model(x)``, eval mode, ``no_grad``, batch 1, no
  pre/post-processing, no NMS, no BN fusion), interleaved: every round times each model once, in
  a rotated order, so load from other processes hits all alike, each timed call after ``--settle`` (1)
  untimed calls of the same model (a runtime session leaves threads spinning after a call, which would
  otherwise be timed with the next model); figures are the median / p90 over
  rounds, and speed is compared as ratios within this one run. Params and GFLOPs are counted the
  same way for all (``hmpe.engine.deploy.bench``: FlopCounterMode on the same raw forward at batch 1,
  2 FLOPs per multiply-accumulate of convs and matmuls). ``--nc`` (default 80, COCO, so the sizes
  can be checked against the published ones) sets every model's class count.
  Writes ``benchmarks/results/peers.md``.

Part B (``--train``): a same-budget training comparison on NWPU VHR-10 (train split -> val split).

    python -m benchmarks.peers --train [--minutes 35] [--imgsz 512] [--batch 8] [--seed 0] [--curve-every N]

  From scratch, the same minutes of this CPU and the same image size for every model:
    hmpe-n    ``hmpe train`` with ``time_limit=MINUTES`` (after every epoch the trainer sizes the
              run in iterations so that the whole schedule fits); its default recipe, overridable with
              ``--hmpe-args key=value ...``.
    yolo11n   ultralytics' own trainer, schedule and mosaic, with a FIXED epoch count that fits the
              minutes (so its schedule and close_mosaic are not cut short): ``--yolo-epochs N``, or
              calibrated by a two-epoch run first (its second epoch timed; not counted).
              Trained on a YOLO-format copy written by ``hmpe data convert`` into the work folder.
    dfine-n   the HF model and its built-in loss (``outputs.loss``) trained by hmpe's Trainer: hmpe's
              data pipeline and optimiser recipe (AdamW, warm-up + cosine, grad clip, EMA, ``time_limit``
              sizing; the training keys of ``--hmpe-args`` -- lr, warmup_iters, augment / mosaic -- apply
              to it too).
  All three are scored by hmpe's COCOEvaluator on the same val samples (faster-coco-eval: P, R at
  the best-F1 confidence, mAP50, mAP50-95, AP_small/medium/large); hmpe-n and D-FINE-N see the val
  images through hmpe's eval transform (square resize), YOLO11n through its own letterbox predictor,
  boxes mapped back to original pixels in both cases. Writes ``benchmarks/results/peers_train.md``
  (``--out``) and a JSON beside it with the run's settings, date, CPU and versions; ``--curve-every N``
  keeps a checkpoint every N epochs and scores each after the run (:mod:`benchmarks.peers.curve`).
  ``python -m benchmarks.peers.combine`` gathers the runs of one budget (several seeds) into
  ``benchmarks/results/peers_train.json`` with the mean and spread per model.

``--smoke``: a tiny run of the chosen part (64 px inputs, 2 rounds; for ``--train`` a few synthetic
images, one epoch each) that checks the whole path in seconds; its markdown goes to the work
folder, not to ``benchmarks/results``. Rows whose package (ultralytics, transformers: ``pip install
hmpe[peers]``) is missing are skipped with a message.

Modules: ``models`` (row builders), ``speed`` + ``runtimes`` (Part A), ``training``, ``train_yolo``,
``train_dfine`` (Part B's adapters), ``scoring`` (hmpe's evaluator for every row), ``curve`` (learning
curves), ``combine`` (the combined result file), ``report`` (markdown), ``cli`` (arguments).
"""

from benchmarks._common import set_offline_env

set_offline_env()  # before ultralytics / transformers are imported by any module of this package

from benchmarks.peers.cli import main, parse_args  # noqa: E402
from benchmarks.peers.models import Built, build, split_models  # noqa: E402

__all__ = ["Built", "build", "main", "parse_args", "split_models"]
