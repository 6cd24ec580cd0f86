"""Speed-accuracy front of trained hmpe models against trained ultralytics YOLO models on the CPU (issue 33).

    python -m benchmarks.front --hmpe hmpe-n=W1[,W2,...] [--hmpe NAME=...] --yolo yolo11n=Y1[,Y2,...] \\
        --data nwpu-vhr10 --sizes 320 384 448 512 576 640 --threads 2 --rounds 20 --warmup 3 \\
        [--no-int8] [--calib-images 300] [--val-images N] --workdir runs/front --out benchmarks/results/front.json
    python -m benchmarks.front --recheck benchmarks/results/front.json   # the front check again, from the points

A user picks a CPU detector by its accuracy at a latency. For every model (several comma-separated checkpoints of
one model are seeds) and every input size S this measures operating points, each on the files a user deploys:

  hmpe     fp32: ``hmpe export`` at S (hmpe.engine.deploy.export: ONNX and OpenVINO IR, the top-k post-processing
           inside the graph, no NMS). INT8: hmpe.engine.deploy.quantize.export_int8(format="openvino") (NNCF),
           calibrated on ``--calib-images`` train images; its fp32 IR, written and parity-checked beside the INT8
           one, is the OpenVINO fp32 file. Accuracy: the exported OpenVINO file itself run over the
           val split and scored by hmpe's COCOEvaluator (hmpe.engine.deploy.quantize.runtime_metrics); the fp32 IR
           stands for both fp32 runtimes (ONNX Runtime and OpenVINO give the same detections up to float error).
  YOLO     fp32: ultralytics' own export at S (format="onnx" and "openvino"); accuracy of the .pt by
           benchmarks.peers.scoring.score_yolo (hmpe's evaluator, ultralytics' letterbox predictor and NMS).
           INT8: ultralytics' own export(format="openvino", quantize=8: ultralytics 8.4's name for int8=True),
           calibrated (NNCF) on at most ``--calib-images`` TRAIN images (split="train", fraction=N) of the
           YOLO-format copy of ``--data``; accuracy: score_yolo on the exported folder.

Latency: ONE interleaved run over every file of every size (hmpe ONNX Runtime fp32, OpenVINO fp32, OpenVINO
INT8; YOLO the same three), so that points of different sizes compare: ``--warmup`` untimed calls each, then
``--rounds`` rounds that time every file once in a rotated order (hmpe.engine.deploy.backends.interleaved_times),
so that load from other processes hits all alike; one untimed call of the same file precedes each timed one, so
that no time includes the threads another session left spinning (each is the latency of the file run alone).
Each file runs in a session with ``--threads`` threads (hmpe.engine.deploy.export.runtime_session: ONNX Runtime
intra-op threads, OpenVINO INFERENCE_NUM_THREADS at f32 inference precision), batch 1, on a fixed
random preprocessed tensor: the runtime's forward only. hmpe's graph includes its top-k post-processing; YOLO's
excludes NMS, as ultralytics exports it. Median and p90 per file. Latency is measured on the first seed's files
(the seeds share one architecture); accuracy is the mean over the seeds, with the spread (max - min).

Points: per model, precision and size, the model's fastest runtime of that precision (lowest median; fp32: ONNX
Runtime or OpenVINO, INT8: OpenVINO); every runtime's timing stays in the result. The front check: for each
precision, every YOLO point and the fastest hmpe point with a median no higher, a higher mAP50 and a higher
AP_small (benchmarks.front.check), or else why none is (``why``: none as fast, none as fast with a higher mAP50,
or those with one all lower in AP_small, with the nearest miss), and whether every YOLO point is beaten
(``all_beaten``). ``--recheck FILE`` recomputes that check in a result file from its points.

Writes ``--out`` (default benchmarks/results/front.json: date, CPU, versions, command, settings, models with their
weights and INT8 calibration, points, timings, front_check) and a PNG beside it (mAP50 and AP_small against
milliseconds). Exports and scores are cached as JSON records in ``--workdir`` (a rerun with the same settings
reuses them; result files name paths under it RUNS/...); the latency run is always fresh. ``--prepare-seeds I``
exports and scores only seed I of each model and stops (no timing, no result file): two such runs pinned one per
core prepare two seeds in half the time, and the full command then finds every file cached. Nothing is downloaded:
every network connection is refused during the run. ``--smoke``: the whole path on the given models and data with
tiny sizes, one round and few images, written into the work folder.

Needs the export extra (onnx, onnxruntime, openvino), the int8 extra for INT8 points (NNCF) and, for ``--yolo``,
ultralytics (``pip install "hmpe[peers]"``).
"""

from benchmarks._common import set_offline_env

set_offline_env()  # before ultralytics is imported by any module of this package

from benchmarks.front.cli import main, parse_args  # noqa: E402

__all__ = ["main", "parse_args"]
