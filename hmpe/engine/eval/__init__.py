"""Evaluation and inference: COCO metrics (:mod:`~hmpe.engine.eval.evaluator`, its matching and COCO
back ends in :mod:`~hmpe.engine.eval.matching` / :mod:`~hmpe.engine.eval.cocoeval`), the prediction
helpers of ``Detector.predict`` (:mod:`~hmpe.engine.eval.predict`), sliced inference
(:mod:`~hmpe.engine.eval.slicing`) and GeoTIFF inference (:mod:`~hmpe.engine.eval.raster`)."""
