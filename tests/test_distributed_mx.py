"""Data-parallel MXNet (a Gluon Trainer on a KVStore dist_sync) with two local CPU worker
processes, a scheduler and a server, against one process on the whole batch.

This file is also the worker: `python tests/test_distributed_mx.py OUT [die]` joins the group
from the environment (common.commands.launch's DMLC_* variables, RESNET3_WORKERS, RESNET3_RANK), trains
on its share of each global batch and writes its weights, momentum, losses and counts to
OUT/rank<k>.npz. One Adapter per process (the engine's one KVStore, resnet_mx.distributed), so
the cases run one after the other on it: FROZEN steps with BatchNorm's running statistics (the
single-process step, exactly), then LOCAL steps with batch statistics, which each worker takes
from its own share (not the single-process step).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # when run as the worker script

from common.core.init import init_weights  # noqa: E402
from common.commands.launch import launch  # noqa: E402
from common.core.optim import OptimizerConfig  # noqa: E402
from common.core.spec import ResNetSpec, Stage, Stem  # noqa: E402

SPEC = ResNetSpec("tiny", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=1, num_classes=4)
OPT = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
WORKERS, BATCH, SIDE = 2, 8, 12
FROZEN, LOCAL = 3, 1  # steps with frozen BatchNorm statistics, then with per-worker ones
SAVED_AFTER = (1, FROZEN, FROZEN + LOCAL)
DEADLINE = 180.0  # seconds for one launch; these take ~10 s on 2 shared cores
STATS = ("running_mean", "running_var")  # BatchNorm's running statistics (canonical names)
TAG = "RESNET3_TEST_DIST_MX"  # in every launched process's environment, to find survivors


def global_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(14)
    return [(rng.normal(size=(BATCH, 1, SIDE, SIDE)).astype(np.float32),
             rng.integers(0, SPEC.num_classes, BATCH)) for _ in range(FROZEN + LOCAL)]


def use_running_statistics(model, on: bool) -> None:
    """Every BatchNorm normalises with its running statistics (`use_global_stats`) in training
    too, or not: the step's function of a batch is then the same on a share as on the whole."""
    from mxnet.gluon import nn
    stack = [model]
    while stack:
        block = stack.pop()
        if isinstance(block, nn.BatchNorm):
            block._kwargs["use_global_stats"] = on
        stack.extend(block._children.values())
    model.hybridize()  # drops the cached graph, which has the old setting in it


def train(engine=None) -> dict[str, np.ndarray]:
    """FROZEN then LOCAL steps: on the whole batches, or with an engine on this worker's rows
    [k*B/N, (k+1)*B/N) of each. Returns the state after the SAVED_AFTER steps."""
    from resnet_mx.adapter import Adapter
    adapter = Adapter(SPEC, init_weights(SPEC, 0), optimizer=OPT, engine=engine)
    use_running_statistics(adapter.model, True)
    # The KVStore is ready before any gradient exists (resnet_mx.distributed, point 2).
    out = {"kvstore_ready": engine is None or (adapter.trainer._kv_initialized
                                               and not adapter.trainer._params_to_init)}
    for step, (x, y) in enumerate(global_batches(), start=1):
        if step == FROZEN + 1:
            use_running_statistics(adapter.model, False)
        if engine is not None:
            share = BATCH // engine.workers
            rows = slice(engine.rank * share, (engine.rank + 1) * share)
            x, y = x[rows], y[rows]
        loss, correct = adapter.train_step(x, y)
        out[f"{step}/loss"], out[f"{step}/correct"] = np.float64(loss), correct
        if step in SAVED_AFTER:
            state = adapter.get_weights() | {f"{k}.momentum": v
                                             for k, v in adapter.optimizer_state().items()}
            out |= {f"{step}/{k}": np.asarray(v, np.float64) for k, v in state.items()}
    return out


def worker(out: Path, die: bool) -> None:
    if os.environ.get("RESNET3_MX_NUMPY") == "1":  # the suite's mode (tests/conftest.py)
        from mxnet import npx
        npx.set_np()
    from resnet_mx.distributed import join
    workers, rank = int(os.environ["RESNET3_WORKERS"]), int(os.environ["RESNET3_RANK"])
    engine = join(workers, rank)
    if die and rank == workers - 1:  # the others then wait for it in the KVStore's init
        os._exit(3)
    results = train(engine)
    results["sum"] = engine.all_sum(np.array([rank + 1.0, 0.25]))
    results["sum0d"] = engine.all_sum(np.float64(rank))
    np.savez(out / f"rank{rank}.npz", **results)
    engine.barrier()
    engine.close()
    engine.close()  # idempotent


def run_launch(args: list[str], tag: str):
    """Two workers of `python args...` under common.commands.launch, one thread each."""
    return launch("mx", WORKERS, args, DEADLINE,
                  env={"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1",
                       "PYTHONPATH": str(ROOT), TAG: tag})


def survivors(tag: str) -> list[int]:
    """Processes (not zombies) whose environment carries TAG=tag."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"{TAG}={tag}".encode() in (proc / "environ").read_bytes().split(b"\0") and \
                    (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


# ---- the tests --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One launch of two workers (and the scheduler and server), and one process on the
    whole batches."""
    tmp, tag = tmp_path_factory.mktemp("dist_mx"), uuid.uuid4().hex
    t0 = time.perf_counter()
    result = run_launch([__file__, str(tmp)], tag)
    seconds = time.perf_counter() - t0
    assert result.returncode == 0, (result.failure, result.outputs)
    assert survivors(tag) == []
    single = train()
    ranks = [dict(np.load(tmp / f"rank{k}.npz")) for k in range(WORKERS)]
    return {"single": single, "ranks": ranks, "seconds": seconds, "outputs": result.outputs}


def _max_diff(a: dict, b: dict, step: int, without: tuple[str, ...] = ()) -> float:
    keys = [k for k in a if k.startswith(f"{step}/")
            and not k.endswith(("/loss", "/correct", *without))]
    assert keys and all(k in b for k in keys)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


@pytest.mark.parametrize("step", [1, FROZEN])
def test_two_workers_take_the_single_process_sgd_steps_with_frozen_batchnorm(runs, step):
    for rank in runs["ranks"]:
        assert _max_diff(runs["single"], rank, step) < 1e-6
    # The global batch's mean loss is the mean of the workers' means over equal shares.
    losses = [r[f"{step}/loss"] for r in runs["ranks"]]
    assert abs(np.mean(losses) - runs["single"][f"{step}/loss"]) < 1e-6
    assert sum(r[f"{step}/correct"] for r in runs["ranks"]) == runs["single"][f"{step}/correct"]


def test_the_workers_hold_identical_weights_and_momentum(runs):
    first, second = runs["ranks"]
    assert first["kvstore_ready"] and second["kvstore_ready"]
    for step in SAVED_AFTER[:-1]:
        assert _max_diff(first, second, step) == 0.0
    # With batch statistics too: the same summed gradient, the same step; only the running
    # statistics, each from the worker's own share, differ.
    step = SAVED_AFTER[-1]
    stats = [k for k in first if k.startswith(f"{step}/") and k.endswith(STATS)]
    assert stats and max(float(np.max(np.abs(first[k] - second[k]))) for k in stats) > 1e-3
    assert _max_diff(first, second, step, without=STATS) == 0.0


def test_without_sync_bn_each_worker_normalises_its_share_and_leaves_the_single_process(runs):
    step = FROZEN + LOCAL
    assert _max_diff(runs["single"], runs["ranks"][0], step) > 1e-4


def test_all_sum_adds_over_the_workers_in_float64(runs):
    for rank in runs["ranks"]:
        np.testing.assert_array_equal(rank["sum"], [3.0, 0.5])
        assert rank["sum0d"].shape == () and rank["sum0d"] == 1.0


def test_a_worker_that_dies_fails_the_launch_naming_it_and_nothing_survives(tmp_path):
    tag = uuid.uuid4().hex
    t0 = time.perf_counter()
    result = run_launch([__file__, str(tmp_path), "die"], tag)
    assert time.perf_counter() - t0 < DEADLINE / 2  # failed fast, not at the deadline
    assert result.returncode == 3
    assert f"worker-{WORKERS - 1} failed (exit status 3)" in result.failure
    time.sleep(0.5)
    assert survivors(tag) == []


def test_sync_bn_is_refused_with_the_reason_before_joining():
    from resnet_mx.distributed import join
    with pytest.raises(ValueError, match=r"--sync-bn: expected it off .*one process"):
        join(WORKERS, 0, sync_bn=True)


def test_the_server_module_refuses_a_process_without_a_server_role():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    done = subprocess.run([sys.executable, "-m", "resnet_mx.distributed"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "expected DMLC_ROLE=scheduler or server" in done.stderr


if __name__ == "__main__":
    worker(Path(sys.argv[1]), die=sys.argv[2:] == ["die"])
