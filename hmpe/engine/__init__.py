"""What runs a model: :mod:`hmpe.engine.train` (the training loop and its setup), :mod:`hmpe.engine.eval`
(evaluation and inference: COCO metrics, prediction helpers, sliced and GeoTIFF inference) and
:mod:`hmpe.engine.deploy` (ONNX / OpenVINO / INT8 export, runtime latency), with
:mod:`hmpe.engine.checkpoint` (reading and writing weights) shared by all three.

Imports go one way: ``train`` and ``deploy`` use ``eval`` and ``checkpoint``; ``eval`` and ``checkpoint``
use neither of the others, and ``train`` and ``deploy`` not each other (tests/test_layering.py).
"""
