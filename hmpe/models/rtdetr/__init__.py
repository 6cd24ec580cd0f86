"""The RT-DETR baseline's blocks: HGNetv2 backbone (and its ImageNet weights), hybrid encoder, position
encodings, deformable attention and its sampling, decoder with query selection and denoising, Hungarian
matcher, set criterion, post-processing, and deploy-mode fusion.

The HMPE parts (:mod:`hmpe.models.heatmap`, :mod:`hmpe.models.mohfe`, :mod:`hmpe.models.hidq`,
:mod:`hmpe.models.lsconv`) plug in through hooks here (the backbone's ``strip_factory``, the encoder's
``pos_masks`` / ``embeds``, the decoder's ``query_selector``); nothing here imports them.
"""
