"""The arithmetic of several workers, without a cluster: partial sums merged in rank order equal one pass over
every batch (both estimators), and TF_CONFIG's tasks ranked chief first."""

import json

import numpy as np
import pytest

from ckptfix.errors import CkptfixError
from ckptfix.scaling.cluster import Cluster, WorkerError, read_tf_config
from ckptfix.stats import BatchMoments, Estimator, PooledMoments


def _moments(x: np.ndarray) -> BatchMoments:
    mean = x.mean(axis=0)
    return BatchMoments(len(x), mean, ((x - mean) ** 2).sum(axis=0))


@pytest.mark.parametrize("workers", [2, 3])
def test_partial_sums_merged_in_rank_order_equal_one_pass(workers):
    rng = np.random.default_rng(0)
    batches = [rng.normal(1e3, 2.0, (n, 5)) for n in (7, 7, 7, 7, 3)]  # |mean| >> std, uneven last batch
    one = PooledMoments(5)
    for batch in batches:
        one.add(_moments(batch))
    partial = [PooledMoments(5) for _ in range(workers)]
    for i, batch in enumerate(batches):
        partial[i % workers].add(_moments(batch))  # batch i on worker i mod W
    merged = PooledMoments(5)
    for part in partial:
        merged.merge(PooledMoments.from_array(5, part.to_array()))  # as sent over the cluster

    values = np.concatenate(batches)
    assert merged.count == one.count == len(values)
    for estimator in Estimator:
        for bessel in (False, True):
            expected = one.mean_and_variance(estimator, bessel)
            got = merged.mean_and_variance(estimator, bessel)
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
            np.testing.assert_allclose(got[1], expected[1], rtol=1e-9)
    np.testing.assert_allclose(merged.m2 / merged.count, values.var(axis=0), rtol=1e-9)


def test_batches_are_shared_round_robin():
    from ckptfix.data.batching import Share

    assert [i for i in range(10) if Share(1, 3).owns(i)] == [1, 4, 7]
    positions, batches = Share(1, 3).positions(21, 4)  # batches 0..4, the last of 5 (a rest of 1 merged)
    assert batches.tolist() == [1] * 4 + [4] * 5 and positions.tolist() == [4, 5, 6, 7, 16, 17, 18, 19, 20]


def _config(cluster, task):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}


def test_tf_config_ranks_the_chief_first():
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    tasks = [("chief", 0), ("worker", 0), ("worker", 1)]
    assert read_tf_config(_config(cluster, {"type": "chief", "index": 0})) == (0, tasks)
    assert read_tf_config(_config(cluster, {"type": "worker", "index": 1})) == (2, tasks)
    assert read_tf_config(_config({"worker": ["a:1"]}, {"type": "worker", "index": 0})) is None  # one task
    assert read_tf_config({}) is None


@pytest.mark.parametrize("environ, message", [
    ({"TF_CONFIG": "not json"}, "TF_CONFIG is not a JSON object"),
    (_config({"worker": ["a:1", "b:1"], "ps": ["c:1"]}, {"type": "worker", "index": 0}), "TF_CONFIG has ps jobs"),
    (_config({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 2}), "task worker 2 is not in its cluster"),
])
def test_unusable_tf_config_is_a_clear_error(environ, message):
    with pytest.raises(WorkerError, match=message):
        read_tf_config(environ)


# what TensorFlow 2.21 raised in the two-worker tests: the chief when the worker was killed, the worker when the
# chief (the coordination leader) was
WORKER_DIED = ("Graph execution error:\n\nCollective ops is aborted by: The following tasks are unhealthy (stopped "
               "sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
CHIEF_DIED = ("Graph execution error:\n\nCollective ops is aborted by: Failed to send RPC to coordination service. "
              "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while calling "
              "/tensorflow.CoordinationService/Heartbeat")


@pytest.mark.parametrize("rank, text, reason", [
    (0, WORKER_DIED, "worker 1 stopped answering"),
    (1, CHIEF_DIED, "worker 0 stopped answering"),
])
def test_a_dead_worker_is_named_by_its_rank(rank, text, reason):
    import tensorflow as tf

    cluster = Cluster(rank=rank, size=2, tasks=[("worker", 0), ("worker", 1)])
    assert cluster._failure(tf.errors.UnavailableError(None, None, text)).startswith(reason)
    timed_out = cluster._failure(tf.errors.DeadlineExceededError(None, None, "timeout"))
    assert timed_out == "not every worker sent its statistics within 3600 s (--cluster-timeout)"
    chief = Cluster(rank=1, size=2, tasks=[("chief", 0), ("worker", 0)])
    assert chief._failure(tf.errors.UnavailableError(None, None, CHIEF_DIED.replace("worker/replica:0/task:0",
                                                                                     "chief/replica:0/task:0"))
                          ).startswith("worker 0 (TF_CONFIG task chief 0) stopped answering")


# what TensorFlow 2.21 raised at start-up with registration at a barrier: the leader when worker 1 never started
# (the list names at most two tasks, the count all), and worker 1 when the leader never started
NEVER_REGISTERED = ("Barrier timed out. Id: [Init]Wait_for_all_tasks_to_register::0. This usually happens because a task "
                    "triggered the barrier too early or too slowly. Please look at the task logs (both timed out and "
                    "first task) to debug further.\n# of tasks that reached the barrier: 1/{size}.\nThe first task at "
                    "the barrier: /job:worker/replica:0/task:0. Some timed out task names:\n{names}\n\n"
                    "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while calling "
                    "/tensorflow.CoordinationService/RegisterTask")
LEADER_NEVER_STARTED = ("Deadline Exceeded\nAdditional GRPC error information from remote target "
                        "/job:worker/replica:0/task:0 while calling /tensorflow.CoordinationService/RegisterTask:\n"
                        ":UNKNOWN:Error received from peer  {grpc_message:\"Deadline Exceeded\", grpc_status:4}")


def test_the_workers_that_never_joined_are_named_by_their_rank():
    from ckptfix.scaling.cluster import never_joined

    two = [("worker", 0), ("worker", 1)]
    assert never_joined(NEVER_REGISTERED.format(size=2, names="/job:worker/replica:0/task:1"), two, 0) == "worker 1"
    four = [("chief", 0), ("worker", 0), ("worker", 1), ("worker", 2)]
    text = NEVER_REGISTERED.replace("job:worker/replica:0/task:0", "job:chief/replica:0/task:0").format(
        size=4, names="/job:worker/replica:0/task:0\n/job:worker/replica:0/task:2")
    assert never_joined(text, four, 0) == "worker 1 (TF_CONFIG task worker 0), worker 3 (TF_CONFIG task worker 2) and 1 more"
    assert never_joined(LEADER_NEVER_STARTED, two, 1) == "worker 0 (the cluster's leader)"
    assert never_joined("Deadline Exceeded", two, 1) is None


def test_the_cluster_timeout_comes_from_the_option_then_the_environment():
    from ckptfix.options import Options
    from ckptfix.scaling.cluster import cluster_timeout

    assert cluster_timeout(None, {}) == 3600
    assert cluster_timeout(None, {"CKPTFIX_WORKER_TIMEOUT": "90"}) == 90
    assert cluster_timeout(5, {"CKPTFIX_WORKER_TIMEOUT": "90"}) == 5
    with pytest.raises(WorkerError, match=r"CKPTFIX_WORKER_TIMEOUT=soon is not a number of seconds above 0"):
        cluster_timeout(None, {"CKPTFIX_WORKER_TIMEOUT": "soon"})
    with pytest.raises(CkptfixError, match=r"--cluster-timeout must be a number of seconds above 0 \(got 0\)"):
        Options(cluster_timeout=0)
