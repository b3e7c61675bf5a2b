"""Where checkpoints are found (:mod:`~ckptfix.io.locate`), read (:mod:`~ckptfix.io.checkpoint_reader`,
:mod:`~ckptfix.io.bundle_index`) and written (:mod:`~ckptfix.io.checkpoint_writer`), and how every output
is put in place (:mod:`~ckptfix.io.atomic`)."""

from ckptfix.io.locate import CheckpointFiles, locate_checkpoint
from ckptfix.io.checkpoint_writer import write_recalibrated_checkpoint

__all__ = ["CheckpointFiles", "locate_checkpoint", "write_recalibrated_checkpoint"]
