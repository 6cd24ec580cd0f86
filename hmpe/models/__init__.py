"""The detector: the RT-DETR baseline and the HMPE paper's four parts, assembled by :mod:`hmpe.models.detector`.

- :mod:`hmpe.models.rtdetr`: the RT-DETR blocks (HGNetv2 backbone, hybrid encoder, decoder, matching, loss,
  post-processing). With every HMPE switch off the detector is this baseline.
- The paper's contributions, one name each:

  - :mod:`hmpe.models.heatmap`: HeatMap Embedding, the heatmap-guided position encoding (sec. 3.1);
  - :mod:`hmpe.models.mohfe`: MOHFE, the multi-scale ObjectBox-heatmap fusion encoder (sec. 3.2.1);
  - :mod:`hmpe.models.hidq`: HIDQ, the heatmap-induced decoder queries (sec. 3.2.2);
  - :mod:`hmpe.models.lsconv`: LSConv, the Linear-Snake convolution in the backbone (sec. 3.3).

  The paper's 3-layer decoder is a config value (``decoder.num_layers``), not a part.
- :mod:`hmpe.models.detector`: builds the detector, its criterion and post-processor from a model config.

Imports go one way, ``rtdetr`` <- the parts <- ``detector``; the parts do not import each other
(tests/test_layering.py).
"""
