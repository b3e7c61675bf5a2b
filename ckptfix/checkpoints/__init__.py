"""Where checkpoints are found, read and (atomically) written."""

from ckptfix.checkpoints.locate import CheckpointFiles, locate_checkpoint
from ckptfix.checkpoints.writer import write_recalibrated_checkpoint

__all__ = ["CheckpointFiles", "locate_checkpoint", "write_recalibrated_checkpoint"]
