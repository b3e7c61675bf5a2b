"""Where calibration batches come from: arrays, image folders, or batches the caller already has."""

from ckptfix.data.sources import PREPROCESSING, CalibrationBatches, open_calibration_data

__all__ = ["PREPROCESSING", "CalibrationBatches", "open_calibration_data"]
