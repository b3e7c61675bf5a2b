"""Execution modes of the one measuring pipeline: several local devices, several worker processes.

* :mod:`ckptfix.scaling.devices`: ``--devices`` resolved to device names, and :class:`DevicePool`, which runs
  whole batches on one session per device and hands the results back in batch order.
* :mod:`ckptfix.scaling.cluster`: a ``TF_CONFIG`` cluster (MultiWorkerMirroredStrategy's convention): this
  process's share of the batches, and the partial statistics of every worker combined with TensorFlow's
  collective ops.

The batch loop, the batch checks, the estimator, the agreement check and the writer stay in
:mod:`ckptfix.pipeline`; these modules only decide where each batch runs and how partial sums meet
(docs/scaling-out.md).
"""

from ckptfix.scaling.cluster import Cluster, join_cluster
from ckptfix.scaling.devices import DevicePool, parse_devices, resolve_devices

__all__ = ["Cluster", "DevicePool", "join_cluster", "parse_devices", "resolve_devices"]
