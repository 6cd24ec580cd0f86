"""Deployment: ONNX / OpenVINO export with parity checks (:mod:`~hmpe.engine.deploy.export`), INT8
quantisation (:mod:`~hmpe.engine.deploy.quantize`), latency per runtime (:mod:`~hmpe.engine.deploy.backends`)
and the efficiency report of ``hmpe bench``: parameters, GFLOPs, latency (:mod:`~hmpe.engine.deploy.bench`)."""
