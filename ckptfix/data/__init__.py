"""Where calibration batches come from: image folders, numpy files, TFRecords, or what the caller passes.

* :mod:`~ckptfix.data.sources` -- :func:`open_calibration_data`, the one entry point, and file discovery
* :mod:`~ckptfix.data.images` -- image files decoded in a ``tf.data`` pipeline, bad files skipped by name
* :mod:`~ckptfix.data.tfrecord` -- ``tf.train.Example`` records (encoded image or raw float feature)
* :mod:`~ckptfix.data.arrays` -- ``.npy`` / ``.npz`` rows read at their offsets, and in-memory arrays
* :mod:`~ckptfix.data.python` -- ``tf.data.Dataset`` and iterables of batches
* :mod:`~ckptfix.data.preprocessing` -- image presets (with formulas) and ``module:function``
* :mod:`~ckptfix.data.conventions` -- which preprocessing a run uses: given, or read from the model
* :mod:`~ckptfix.data.batching` -- batch sizes, the too-small last batch, skipped files, finite checks
"""

from ckptfix.data.preprocessing import PREPROCESSING, PRESETS
from ckptfix.data.sources import FORMATS, CalibrationBatches, DataKeys, open_calibration_data
from ckptfix.data.spec import InputSpec

__all__ = ["FORMATS", "PREPROCESSING", "PRESETS", "CalibrationBatches", "DataKeys", "InputSpec", "open_calibration_data"]
