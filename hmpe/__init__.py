"""hmpe: heatmap-embedding transformer detectors (RT-DETR family) for small objects."""

__version__ = "0.1.0"

__all__ = ["Detector", "__version__"]


def __getattr__(name):
    # Lazy so that `import hmpe` stays cheap for the data tools.
    if name == "Detector":
        from hmpe.api import Detector

        return Detector
    raise AttributeError(name)
