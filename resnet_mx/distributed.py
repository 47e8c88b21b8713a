"""Data-parallel MXNet: a Gluon Trainer on a KVStore `dist_sync` (a parameter server).

`common.commands.launch` starts one scheduler and one server (`python -m resnet_mx.distributed`, this
file; importing mxnet with DMLC_ROLE=scheduler or server runs that role until the workers
leave) and N workers, all with the DMLC_* variables. Each worker calls `join`, and hands the
engine to its `Adapter(..., engine=)`.

How the Trainer uses the KVStore (resnet_mx.adapter): `update_on_kvstore=False`. The server
only sums: each step pushes every worker's gradient and pulls the sum, and every worker then
runs the same Gluon optimiser as a single process, on its own copy. So the optimiser's slots
stay where `optimizer_state` reads them, and the server holds no optimiser (with
update_on_kvstore=True it would unpickle and run its own copy).

Three things that make or break `dist_sync`, found while making the project's models train
(MXNet 1.9.1's src/kvstore/kvstore_dist.h and kvstore_dist_server.h are the reference):
1. One KVStore per process. KVStoreDist numbers the KVStores of a process (ps-lite customer
   ids), and only customer 0 of rank 0 pushes a key's initial value: a second `dist_sync`
   KVStore in the same process (say `kvstore="dist_sync"` given to a Trainer after one was made
   for the rank) initialises nothing, and its workers wait in its first barrier for ever. The
   engine's KVStore is the only one, shared by the Trainer and by `all_sum`, whose keys lie far
   above the Trainer's 0..P-1; and one Adapter may use it (`attach` refuses a second Trainer,
   whose keys would collide with the first's).
2. The first step's race. Gluon initialises the KVStore lazily, inside the first `step()`:
   for each parameter, `broadcast` (rank 0 pushes its value, barrier, every worker pulls it),
   then that step's `pushpull` of the gradient. The pull of the initial weight and the pushpull
   of the gradient of the same key are queued on MXNet's engine at the same priority with no
   dependency between them, so a worker may send the pushpull first: the server then replaces
   the key's value by the sum of the gradients before the pull reads it, and that worker takes
   the gradient sum for its weight. Seen with the tests' tiny model: in one run of three (and
   one of four) a worker's weights were 0.5 off after the first step. `attach` initialises
   the KVStore when the Adapter is made and waits for every pull before any gradient exists.
   When a pull reaches the server before rank 0's first push of that key, the server aborts
   with `kvstore_dist_server.h:611: Check failed: !stored.is_none(): init <key> first`: a
   key pulled that nobody initialised (point 1), or workers whose barriers do not pair up.
3. Leaving. The server stops only when rank 0's KVStore is destroyed (its destructor sends
   kStopServer) and the scheduler when every node has called ps::Finalize. Left to Python
   (the Trainer and its Parameters refer to each other, so it is freed, if at all, during
   interpreter teardown), the workers hung after their last step (seen: all four processes
   alive at the deadline); freed explicitly before exit, all four end at once with status 0.
   `close()` waits for the engine and frees the KVStore; `join` also registers it at exit.
A worker that raises must not wait for the others in that leaving barrier (they wait in a
pushpull for it, and would all stay until the launcher's deadline): `close()` does nothing
while an exception is propagating, and `join` makes an uncaught exception print its traceback
and end the process at once with status 1, so that the launcher sees the failure and stops
the rest.

BatchNorm across workers (`sync_bn=True`) is refused: MXNet 1.9's synchronised BatchNorm,
`mxnet.gluon.contrib.nn.SyncBatchNorm`, shares the statistics between the devices of one
process (an in-process barrier and buffers keyed by layer, src/operator/contrib/
sync_batch_norm-inl.h), not between KVStore workers. Without it each worker normalises its own
share of the batch: the function of a training step then is not the single process's (only
BatchNorm with frozen statistics gives the single-process step).

ps-lite numbers the KVStore's workers itself (seen: RESNET3_RANK 0 was its rank 1), so its
rank 0, whose initial values every worker starts from, need not be RESNET3_RANK 0. Nothing
depends on it: every worker is given the same weights, and `rank` here is the launcher's,
which picks the share of each batch.
"""
from __future__ import annotations

import atexit
import os
import sys

import mxnet as mx  # with DMLC_ROLE=scheduler or server, this import runs that role and exits
import numpy as np
from mxnet.base import _LIB, check_call

from common.core.errors import Error

# all_sum's keys: far above the Trainer's 0..P-1 (one per parameter), in the same KVStore.
_SUM_KEYS = 1 << 24


def _refuse_sync_bn(sync_bn: bool) -> None:
    if sync_bn:
        raise Error("--sync-bn: expected it off for MXNet, got it on; MXNet 1.9's only "
                    "synchronised BatchNorm (mxnet.gluon.contrib.nn.SyncBatchNorm) "
                    "shares statistics between the devices of one process, not between "
                    "KVStore dist_sync workers")


class Engine:
    """This worker's place in a `dist_sync` group: the one KVStore of the process."""

    def __init__(self, workers: int, rank: int, sync_bn: bool = False):
        _refuse_sync_bn(sync_bn)
        if os.environ.get("DMLC_ROLE") != "worker":
            raise Error(f"DMLC_ROLE: expected 'worker' (common.commands.launch sets it), got "
                        f"{os.environ.get('DMLC_ROLE')!r}")
        self.workers, self.rank, self.sync_bn = workers, rank, sync_bn
        self.kvstore = mx.kv.create("dist_sync")
        if self.kvstore.num_workers != workers:
            raise Error(f"workers: expected the KVStore's {self.kvstore.num_workers} "
                             f"(DMLC_NUM_WORKER), got {workers}")
        self._sum_keys: dict[tuple[int, ...], int] = {}
        self._trainer = None
        self._closed = False

    def attach(self, trainer: mx.gluon.Trainer) -> None:
        """Initialise the KVStore's keys for a Trainer made with kvstore=self.kvstore and
        update_on_kvstore=False, now, and wait for it (point 2 of the module's doc): every
        worker then holds the KVStore's rank 0's values."""
        if self._trainer is not None:
            raise ValueError("engine: expected one Adapter per engine (the Trainer's keys are "
                             "its parameters' positions), got a second one")
        if trainer._kvstore_params != {"kvstore": self.kvstore, "update_on_kvstore": False}:
            raise ValueError(f"trainer: expected kvstore=engine.kvstore and "
                             f"update_on_kvstore=False, got {trainer._kvstore_params}")
        self._trainer = trainer
        # Gluon's own lazy initialisation, called early: there is no public way to run it.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise float64 sum of `values` over the workers (every worker calls it,
        in the same order, with arrays of the same shape)."""
        values = np.asarray(values, np.float64)
        flat = values.reshape(-1)  # classic NDArrays have no 0-d shape
        key = self._sum_keys.get(flat.shape)
        if key is None:  # a collective too: every worker meets the same new shape here
            key = self._sum_keys[flat.shape] = _SUM_KEYS + len(self._sum_keys)
            self.kvstore.init(key, mx.nd.zeros(flat.shape, dtype=np.float64))
        arr = mx.nd.array(flat, dtype=np.float64)
        # dist_sync's server answers a pushpull once every worker has pushed: the sum.
        self.kvstore.pushpull(key, arr, out=arr)
        return arr.asnumpy().reshape(values.shape)

    def barrier(self) -> None:
        mx.nd.waitall()
        self.kvstore._barrier()  # ps-lite's worker barrier; KVStore has no public one

    def close(self) -> None:
        """Leave the group: wait for the engine, then free the KVStore (its destructor meets
        the other workers, stops the server and leaves ps-lite). Idempotent. Does nothing while
        an exception propagates (see the module's doc)."""
        if self._closed or sys.exc_info()[1] is not None:
            return
        self._closed = True
        mx.nd.waitall()
        check_call(_LIB.MXKVStoreFree(self.kvstore.handle))
        self.kvstore.handle = None  # KVStore.__del__ frees it again: a NULL handle is a no-op


def join(workers: int, rank: int, sync_bn: bool = False) -> Engine:
    """Join the `dist_sync` group that common.commands.launch started (DMLC_* variables)."""
    _refuse_sync_bn(sync_bn)  # before anything connects: the refusal must not hang
    engine = Engine(workers, rank, sync_bn)
    atexit.register(engine.close)
    previous = sys.excepthook

    def fail_fast(kind, value, tb):  # see the module's doc: do not wait for the others
        previous(kind, value, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = fail_fast
    return engine


if __name__ == "__main__":
    # Reached only as a worker or without DMLC_ROLE: the scheduler and server ran and exited
    # inside `import mxnet` above.
    sys.exit(f"python -m resnet_mx.distributed: expected DMLC_ROLE=scheduler or server "
             f"(common.commands.launch starts these), got {os.environ.get('DMLC_ROLE')!r}")
