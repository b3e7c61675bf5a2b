"""Several workers: one ``ckptfix`` process per task of the ``TF_CONFIG`` cluster, partial sums combined with
TensorFlow's collective ops.

``TF_CONFIG`` is MultiWorkerMirroredStrategy's convention::

    {"cluster": {"chief": ["host0:port"], "worker": ["host1:port", ...]}, "task": {"type": "worker", "index": 0}}

Workers are ranked chief first (when there is a ``chief`` job), then ``worker`` 0, 1, ...; rank 0 is the chief,
the one process that writes the output and reports. With ``W`` workers, **batch i (counted from 0 in the
order the data gives them, after --shuffle/--seed) runs on the worker of rank i mod W**; every worker is given
the same data, lays the batches out on the positions of its reading order before reading anything, and reads
and decodes only its own (:class:`ckptfix.data.batching.Share`).

Each worker pools its own batches in batch order; the partial sums per layer (count, mean, M2, and the
batch-mean sums, float64) are all-gathered with TensorFlow's collective gather op (on the gRPC server that
``MultiWorkerMirroredStrategy`` started) and merged in rank order with Chan's update (:meth:`ckptfix.stats.PooledMoments.merge`), the same on every worker. The
result equals the one-process statistics to float64 rounding. A worker that dies is reported by TensorFlow's
coordination service (missing heartbeats, ~10 s); one that hangs by the collective timeout. Either way every
other worker stops with :class:`WorkerError` and nothing is written.

**``--until-stable`` in a cluster** is decided in rounds: after each of its batches, a worker all-gathers its
partial sums with a flag saying whether its share has ended (:meth:`Cluster.progress`); every worker merges the
rows in rank order and applies the same rule to the same figures, so all stop after the same round, the one at
which batches ``0 .. k`` (a prefix of the batch order) are stable. A worker whose share ended (the data split
unevenly) keeps joining the rounds, with its sums unchanged, until the rule is met or every share has ended.

**Start-up is bounded by the same timeout** (``--cluster-timeout`` / ``CKPTFIX_WORKER_TIMEOUT`` seconds, default
3600). The coordination service is configured before the strategy is built (MultiWorkerMirroredStrategy keeps a
service that is already configured): every task registers at a barrier (``cluster_register_with_barrier``)
with ``cluster_register_timeout_in_ms`` set to it. Without the barrier, TensorFlow 2.21's leader waits for the
others in its device-propagation barrier, whose timeout is a fixed hour; with it, a task that never starts, or
dies before it registers, makes every other one fail with the list of the tasks missing at the barrier (the
leader's answer), or with the leader's own silence when the leader is the missing one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
import numpy as np

from ckptfix.errors import CkptfixError
from ckptfix.stats import PooledMoments

#: how long (seconds) a worker waits for the others: to register at start-up, and to send their statistics
DEFAULT_TIMEOUT_SECONDS = 3600
#: where the timeout is read from when ``--cluster-timeout`` is not given
TIMEOUT_VARIABLE = "CKPTFIX_WORKER_TIMEOUT"
#: the collective group of ckptfix's gathers (one CPU per task), apart from MultiWorkerMirroredStrategy's own keys
_GROUP_KEY = 0x636B66
_INSTANCE_KEYS = 0x636B0000  # int32, like the op's key


class WorkerError(CkptfixError):
    """TF_CONFIG is unusable, or another worker of the cluster failed or stopped answering."""


@dataclass(frozen=True)
class Progress:
    """The cluster's figures after a round: the merged moments, the batches behind them, whether every share ended."""

    pooled: dict[str, PooledMoments]
    num_batches: int
    ended: bool


@dataclass
class Cluster:
    """This process's place in the cluster: ``rank`` of ``size`` (rank 0: the chief), ``strategy`` when
    ``size > 1`` (the MultiWorkerMirroredStrategy that started the gRPC server and the collective executor the
    gathers run on)."""

    rank: int = 0
    size: int = 1
    #: (job, index) of every task, in rank order
    tasks: list[tuple[str, int]] = field(default_factory=list)
    strategy: object = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    _gathers: int = field(default=0, repr=False)  # gathers made so far: the next one's instance key

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"worker {self.rank} of {self.size}"

    def combine(self, pooled: dict[str, PooledMoments], facts: dict) -> tuple[dict[str, PooledMoments], list[dict]]:
        """Every worker's partial ``pooled`` moments merged in rank order, and every worker's ``facts`` (JSON: its
        devices' shares, the files it skipped), in rank order; the same answer on every worker. One process:
        ``pooled`` and ``[facts]``."""
        if self.size == 1:
            return pooled, [facts]
        merged, _ = self._merged(pooled)
        encoded = np.frombuffer(json.dumps(facts).encode(), np.uint8).astype(np.float64)
        lengths = self._gather(np.array([float(self.rank), encoded.size]))
        width = int(lengths[:, 1].max())
        texts = self._gather(np.concatenate([[float(self.rank), encoded.size], encoded, np.zeros(width - encoded.size)]))
        everyone = []
        for row in sorted(texts, key=lambda r: r[0]):
            everyone.append(json.loads(row[2 : 2 + int(row[1])].astype(np.uint8).tobytes().decode()))
        return merged, everyone

    def progress(self, pooled: dict[str, PooledMoments], num_batches: int, ended: bool) -> Progress:
        """One round of ``--until-stable``: every worker's partial moments so far merged in rank order, the batches
        they hold, and whether every worker's share has ended (``ended``: this one's has). Every worker calls it
        once per round, the same number of times. One process: its own figures."""
        if self.size == 1:
            return Progress(pooled, num_batches, ended)
        merged, flags = self._merged(pooled, [float(num_batches), float(ended)])
        return Progress(merged, int(flags[:, 0].sum()), bool(flags[:, 1].all()))

    def _merged(self, pooled: dict[str, PooledMoments], flags=()) -> tuple[dict[str, PooledMoments], np.ndarray]:
        """Every worker's ``pooled`` merged in rank order (Chan's update), and every worker's ``flags`` (floats, a
        row per worker in rank order)."""
        names, width = list(pooled), len(flags)
        vector = np.concatenate([[float(self.rank)], np.asarray(flags, np.float64),
                                 *(pooled[name].to_array() for name in names)])
        rows = np.array(sorted(self._gather(vector), key=lambda row: row[0]))
        merged = {name: PooledMoments(pooled[name].channels) for name in names}
        for row in rows:
            offset = 1 + width
            for name in names:
                size = pooled[name].array_size
                merged[name].merge(PooledMoments.from_array(pooled[name].channels, row[offset : offset + size]))
                offset += size
        return merged, rows[:, 1 : 1 + width]

    def _gather(self, vector: np.ndarray) -> np.ndarray:
        """One row per worker: ``vector`` (same length on every worker) all-gathered over the cluster.

        TensorFlow's collective gather op, run eagerly on this task's CPU (a few ms on loopback, against ~140 ms
        through ``strategy.run``); every worker makes the same sequence of gathers, so the n-th gets instance key
        ``_INSTANCE_KEYS + n`` everywhere."""
        import tensorflow as tf

        self._gathers += 1
        job, index = self.tasks[self.rank]
        try:
            with tf.device(f"/job:{job}/replica:0/task:{index}/device:CPU:0"):
                gathered = tf.raw_ops.CollectiveGatherV2(
                    input=tf.constant(np.asarray(vector, np.float64)[None, :]), group_size=self.size,
                    group_key=_GROUP_KEY, instance_key=_INSTANCE_KEYS + self._gathers, ordering_token=[],
                    communication_hint="ring", timeout_seconds=self.timeout)
            return np.asarray(gathered.numpy())
        except (tf.errors.OpError, RuntimeError) as error:
            raise WorkerError(f"{self.describe()}: {self._failure(error)}; nothing was written: see that worker's "
                              "own error.") from None

    def _failure(self, error: Exception) -> str:
        """What TensorFlow's error says of the other workers, in ranks: the task it names (the one whose
        heartbeats stopped, or the coordination leader that went away), or the timeout."""
        import tensorflow as tf

        if isinstance(error, tf.errors.DeadlineExceededError):
            return f"not every worker sent its statistics within {self.timeout:g} s (--cluster-timeout)"
        text = str(getattr(error, "message", error))
        others = sorted({self.tasks.index(task) for task in _tasks_in(text) if task in self.tasks} - {self.rank})
        if others:
            named = ", ".join(_worker_name(self.tasks, self.tasks[rank]) for rank in others)
            return f"{named} stopped answering (died, killed or cut off)"
        return f"another worker failed or stopped answering ({type(error).__name__})"


def _ranked(cluster: dict) -> list[tuple[str, int]]:
    tasks = [("chief", k) for k in range(len(cluster.get("chief", [])))]
    return tasks + [("worker", k) for k in range(len(cluster.get("worker", [])))]


def read_tf_config(environ=os.environ) -> tuple[int, list[tuple[str, int]]] | None:
    """``(rank, [(job, index) of every task in rank order])`` from ``TF_CONFIG``; None when it names no cluster
    of several tasks."""
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
    except (ValueError, AttributeError):
        raise WorkerError("TF_CONFIG is not a JSON object with \"cluster\" and \"task\": fix it or unset it.") from None
    ranked = _ranked(cluster)
    place = (task.get("type"), task.get("index", 0))
    if ranked and place[0] in ("chief", "worker") and place not in ranked:  # one task too: a wrong index is a mistake
        raise WorkerError(f"TF_CONFIG's task {place[0]} {place[1]} is not in its cluster of {len(ranked)} task(s): set "
                          "task.type to chief or worker and task.index to this process's place in that list.")
    if len(ranked) <= 1:
        return None
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise WorkerError(f"TF_CONFIG has {', '.join(other)} jobs: ckptfix runs only chief and worker tasks.")
    return ranked.index(place), ranked


def cluster_timeout(timeout: float | None = None, environ=os.environ) -> float:
    """Seconds a worker waits for the others: ``timeout`` (``--cluster-timeout``), else ``CKPTFIX_WORKER_TIMEOUT``,
    else :data:`DEFAULT_TIMEOUT_SECONDS`."""
    if timeout is not None:
        return float(timeout)
    text = environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return float(DEFAULT_TIMEOUT_SECONDS)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise WorkerError(f"{TIMEOUT_VARIABLE}={text} is not a number of seconds above 0: fix it or unset it.")
    return value


def never_joined(text: str, tasks: list[tuple[str, int]], rank: int) -> str | None:
    """Which workers TensorFlow's failed registration says never joined: the tasks missing at the registration
    barrier (the leader's list: at most two names, and the count), or the leader itself when it never answered."""
    if "Wait_for_all_tasks_to_register" in text and "timed out task names:" in text:
        listed = text.split("timed out task names:")[1].split("Additional GRPC")[0]
        missing = list(dict.fromkeys(task for task in _tasks_in(listed) if task in tasks and task != tasks[rank]))
        reached = re.search(r"reached the barrier: (\d+)/(\d+)", text)
        more = (int(reached.group(2)) - int(reached.group(1)) - len(missing)) if reached else 0
        if missing:
            return ", ".join(_worker_name(tasks, task) for task in missing) + (f" and {more} more" if more > 0 else "")
    if "RegisterTask" in text and tasks[0] in _tasks_in(text) and rank != 0:
        return f"{_worker_name(tasks, tasks[0])} (the cluster's leader)"
    return None


def _tasks_in(text: str) -> list[tuple[str, int]]:
    """The ``(job, index)`` of every task a TensorFlow message names (``/job:worker/replica:0/task:1``)."""
    return [(job, int(k)) for job, k in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)]


def _worker_name(tasks: list[tuple[str, int]], task: tuple[str, int]) -> str:
    """``worker 2``, by rank; with the TF_CONFIG task when it differs (``worker 0 (TF_CONFIG task chief 0)``)."""
    rank = tasks.index(task)
    return f"worker {rank}" + ("" if task == ("worker", rank) else " (TF_CONFIG task {} {})".format(*task))


_JOINED: dict[str, Cluster] = {}


def _configure_registration(tasks: list[tuple[str, int]], timeout: float) -> None:
    """The coordination service MultiWorkerMirroredStrategy would configure, with registration at a barrier
    bounded by ``timeout``; a service the process configured already is kept."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=sum(1 for j, _ in tasks if j == job))
            for job in dict.fromkeys(job for job, _ in tasks)]
    milliseconds = max(1, int(timeout * 1000))
    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:{}/replica:0/task:{}".format(*tasks[0]),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=milliseconds)
    context.context().coordination_service.cluster_register_with_barrier = True


def join_cluster(timeout: float | None = None) -> Cluster:
    """This process's :class:`Cluster`: one process when ``TF_CONFIG`` names no cluster, else a worker of it.

    Joining starts MultiWorkerMirroredStrategy (its gRPC server and collective ops), before the model is loaded:
    TensorFlow renames the process's devices then. It waits at most :func:`cluster_timeout` seconds for every
    task to register; a task missing then is a :class:`WorkerError` naming it. Once per process and ``TF_CONFIG``.
    """
    place = read_tf_config()
    if place is None:
        return Cluster()
    key = os.environ["TF_CONFIG"]
    if key not in _JOINED:
        import tensorflow as tf

        seconds = cluster_timeout(timeout)
        rank, tasks = place
        _configure_registration(tasks, seconds)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=seconds)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            text = str(getattr(error, "message", error))
            missing = never_joined(text, tasks, rank) if isinstance(error, tf.errors.DeadlineExceededError) else None
            if missing is not None:
                raise WorkerError(f"{Cluster(rank, len(tasks)).describe()}: {missing} did not join the TF_CONFIG "
                                  f"cluster within {seconds:g} s (--cluster-timeout); nothing was written: start every "
                                  "worker, or raise --cluster-timeout above the spread of their start times.") from None
            raise WorkerError(f"cannot join the TF_CONFIG cluster: {text.strip().splitlines()[0]}") from None
        _JOINED[key] = Cluster(rank, len(tasks), tasks, strategy, seconds)
    return _JOINED[key]
