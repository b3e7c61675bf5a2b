"""ckptfix: repair stale BatchNorm moving statistics in TensorFlow checkpoints.

>>> import ckptfix
>>> report = ckptfix.recalibrate("train/model.ckpt-1000", "calibration-images/")
>>> report.output_checkpoint
>>> ckptfix.diagnose("train/model.ckpt-1000", "calibration-images/").stale
>>> ckptfix.check("train/graph.meta").verdict      # before training, or in CI: "pass", "fail" or "unknown"

Guards that stop training whose BN statistics are not updated: :mod:`ckptfix.guard`.

The API is loaded lazily so that ``import ckptfix`` (and the CLI) can quiet TensorFlow before it is imported.
"""

from ckptfix.errors import CkptfixError

__version__ = "0.1.0"
__all__ = [
    "CheckReport", "CkptfixError", "DiagnosisReport", "InspectionReport", "LayerReport", "RecalibrationReport",
    "check", "diagnose", "inspect", "recalibrate",
]


def __getattr__(name: str):
    if name in {"recalibrate", "diagnose", "inspect", "check"}:
        from ckptfix import api

        return getattr(api, name)
    if name in {"RecalibrationReport", "DiagnosisReport", "InspectionReport", "LayerReport", "CheckReport"}:
        from ckptfix import report

        return getattr(report, name)
    raise AttributeError(f"module 'ckptfix' has no attribute {name!r}")
