"""ckptfix: repair stale BatchNorm moving statistics in TensorFlow checkpoints.

>>> import ckptfix
>>> report = ckptfix.recalibrate("train/model.ckpt-1000", "calibration-images/")
>>> report.output_checkpoint

The API is loaded lazily so that ``import ckptfix`` (and the CLI) can quiet TensorFlow before it is imported.
"""

from ckptfix.errors import CkptfixError

__version__ = "0.1.0"
__all__ = ["CkptfixError", "LayerReport", "RecalibrationReport", "recalibrate"]


def __getattr__(name: str):
    if name == "recalibrate":
        from ckptfix.api import recalibrate

        return recalibrate
    if name in {"RecalibrationReport", "LayerReport"}:
        from ckptfix import report

        return getattr(report, name)
    raise AttributeError(f"module 'ckptfix' has no attribute {name!r}")
