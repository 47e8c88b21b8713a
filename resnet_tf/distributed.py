"""Data-parallel training on TensorFlow's own engine: MultiWorkerMirroredStrategy.

`common.commands.launch` starts N worker processes, each with `TF_CONFIG` naming every worker's address
and its own index; `join` makes the strategy from it. The adapter (resnet_tf.adapter, engine=)
then makes its model and optimiser in the strategy's scope, so every variable is mirrored and
the optimiser sums the workers' gradients; Keras's loss divides each worker's mean loss by the
number of workers, so the step equals one process's step on the whole global batch.

Two TensorFlow rules shape the order of a worker's start: the strategy configures TensorFlow's
collective operations, which must happen before the first TensorFlow operation, and the thread
counts are fixed at that first operation too. So: `resnet_tf.set_threads(n)`, then `join(...)`,
then everything else (the adapter, `build(init="framework")`).
"""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

from common.core.errors import Error
from common.frameworks import import_first, record

# MXNet loads before TensorFlow (resnet_tf/__init__.py)
import_first((record("mx").package, record("mx").imports))
import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402


class Engine:
    """This worker's place in the group, and the small collective operations the training loop
    needs beside the training step (metrics, barrier)."""

    def __init__(self, strategy: tf.distribute.Strategy, workers: int, rank: int,
                 sync_bn: bool):
        self.strategy = strategy
        self.workers = workers
        self.rank = rank
        self.sync_bn = bool(sync_bn)
        self.closed = False

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise float64 sum of `values` over the workers (every worker calls it
        with the same shape, in the same order)."""
        if self.closed:
            raise RuntimeError("all_sum: expected an engine in its group, got a closed one")
        return self._all_sum(tf.constant(np.asarray(values, np.float64))).numpy()

    @tf.function(reduce_retracing=True, autograph=False)  # eager strategy.run is slow, and warns
    def _all_sum(self, local: tf.Tensor) -> tf.Tensor:
        def reduce(value: tf.Tensor) -> tf.Tensor:
            # The copy is placed on the replica's device; the traced argument has none, and
            # all_reduce then fails ("destinations can not be empty").
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                  tf.identity(value))
        # One replica (the CPU, or one device) per worker: its result is the sum.
        return self.strategy.experimental_local_results(
            self.strategy.run(reduce, args=(local,)))[0]

    def barrier(self) -> None:
        """Return when every worker has reached its barrier (a sum of one zero)."""
        self.all_sum(np.zeros(1))

    def close(self) -> None:
        """Leave the group: a last barrier, so that no worker exits while another still waits
        on a collective operation (idempotent). TensorFlow has no call that dissolves the
        group; the process's exit does. While an exception propagates (an error, SIGTERM's
        Terminated) there is no barrier: the other workers may be inside another collective
        or gone, and the barrier's own failure would replace the exception that says why the
        worker stops (a SIGTERMed worker then exited 1, not 143)."""
        if not self.closed and sys.exc_info()[1] is None:
            self.barrier()
        self.closed = True


def _cluster() -> tuple[list[str], int]:
    """The workers' addresses and this worker's index from TF_CONFIG."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise Error("TF_CONFIG: expected the cluster's JSON (set by common.commands.launch), got "
                    "none; start the workers with python -m common.commands.launch --framework tf")
    try:
        config = json.loads(raw)
        return list(config["cluster"]["worker"]), int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise Error(f"TF_CONFIG: expected {{\"cluster\": {{\"worker\": [...]}}, "
                    f"\"task\": {{\"type\": \"worker\", \"index\": k}}}}, got {raw!r} "
                    f"({e})") from None


def join(workers: int, rank: int, sync_bn: bool = False) -> Engine:
    """Join the group of `workers` worker processes that TF_CONFIG describes, as worker `rank`.
    Call it after resnet_tf.set_threads and before any other TensorFlow operation."""
    cluster, index = _cluster()
    if len(cluster) != workers:
        raise Error(f"TF_CONFIG: expected {workers} workers (RESNET3_WORKERS), got "
                    f"{len(cluster)}: {cluster}")
    if index != rank:
        raise Error(f"TF_CONFIG: expected task index {rank} (RESNET3_RANK), got {index}")
    if context.context()._context_handle is not None:
        # TensorFlow's own error here ("Collective ops must be configured at program startup")
        # does not say what to move.
        raise RuntimeError("join: expected to run before the first TensorFlow operation "
                           "(MultiWorkerMirroredStrategy configures the runtime), got a "
                           "runtime already started; call set_threads, then join, then the rest")
    # RING: collectives over gRPC between the processes, the implementation for CPUs (NCCL
    # needs a GPU on every worker).
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    # TensorFlow's coordination service replaces the SIGTERM handler with its own preemption
    # notifier, which only records the signal: a worker told to stop trained on for 30 s and
    # more, until the launcher's SIGKILL. SIGTERM goes back to what it was (the train
    # script's: stop, as in the other frameworks).
    before = signal.getsignal(signal.SIGTERM)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
    if strategy.num_replicas_in_sync != workers:
        raise Error(f"MultiWorkerMirroredStrategy: expected one replica per worker "
                         f"({workers}), got {strategy.num_replicas_in_sync} replicas; give "
                         f"each worker one device (CUDA_VISIBLE_DEVICES)")
    return Engine(strategy, workers, rank, sync_bn)
