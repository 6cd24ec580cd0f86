"""Adapters that let other libraries drive an hmpe checkpoint. Each sits above :mod:`hmpe.api` (it wraps a
:class:`~hmpe.api.Detector`) and needs its own optional extra; nothing here is imported by ``import hmpe``:

    from hmpe.integrations.sahi import HmpeDetectionModel      # SAHI's DetectionModel (extra hmpe[sahi])
"""
