"""ckptfix: repair stale BatchNorm moving statistics in TensorFlow checkpoints.

>>> import ckptfix
>>> report = ckptfix.recalibrate("train/model.ckpt-1000", "calibration-images/")
>>> report.output_checkpoint
>>> ckptfix.diagnose("train/model.ckpt-1000", "calibration-images/").stale

The API is loaded lazily so that ``import ckptfix`` (and the CLI) can quiet TensorFlow before it is imported.
"""

from ckptfix.errors import CkptfixError

__version__ = "0.1.0"
__all__ = [
    "CkptfixError", "DiagnosisReport", "InspectionReport", "LayerReport", "RecalibrationReport",
    "diagnose", "inspect", "recalibrate",
]


def __getattr__(name: str):
    if name in {"recalibrate", "diagnose", "inspect"}:
        from ckptfix import api

        return getattr(api, name)
    if name in {"RecalibrationReport", "DiagnosisReport", "InspectionReport", "LayerReport"}:
        from ckptfix import report

        return getattr(report, name)
    raise AttributeError(f"module 'ckptfix' has no attribute {name!r}")
