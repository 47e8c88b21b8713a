"""Data-parallel training on TensorFlow's MultiWorkerMirroredStrategy (resnet_tf.distributed):
two CPU worker processes started by common.commands.launch, each stepping on its half of every global
batch, against one process stepping on the whole batch.

This file is also the workers' script (`python tests/test_distributed_tf.py OUT CASE`): one
launch runs every numerical case in turn on one strategy (a second strategy in the same process
is not possible, and each TensorFlow start costs seconds), and worker 0 also runs the single
process's steps, without the strategy, after the workers' steps.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # the workers: `python tests/...` puts tests/, not the root, first
    sys.path.insert(0, str(ROOT))

from common.commands.launch import launch  # noqa: E402

WORKERS = 2
GLOBAL_BATCH = 8
STEPS = 3
DEADLINE = 240.0  # seconds for one launch: TensorFlow's start and the steps take ~20 s
# name: (dtype, sync_bn, BatchNorm frozen)
CASES = {"frozen": ("float32", False, True),
         "sync": ("float64", True, False),
         "local": ("float32", False, False)}


def _spec():
    from common.core.spec import ResNetSpec, Stage, Stem
    return ResNetSpec("tiny", (Stage(4, 1), Stage(8, 1, 2, True)), stem=Stem(4, 3, 1, False),
                      in_channels=1, num_classes=4)


def _batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(GLOBAL_BATCH, 1, 8, 8)).astype(np.float32),
             rng.integers(0, 4, GLOBAL_BATCH)) for _ in range(STEPS)]


def _adapter(dtype: str, frozen: bool, engine=None):
    from tensorflow import keras

    from common.core.init import init_weights
    from common.core.optim import OptimizerConfig
    from resnet_tf.adapter import Adapter
    opt = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-2)
    adapter = Adapter(_spec(), init_weights(_spec(), 0), optimizer=opt, dtype=dtype,
                      engine=engine)
    if frozen:  # eval-mode statistics in training; gamma and beta still learn (as torch's eval())
        for layer in adapter.model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return adapter


def _train(adapter, rank: int, workers: int, first: int = 0) -> dict[str, np.ndarray]:
    """Steps first.. on this worker's rows of each global batch; the weights after the first
    step and after the last, the optimiser state, eval logits and the per-step metrics."""
    share = GLOBAL_BATCH // workers
    out, losses, correct = {}, [], []
    for step, (x, y) in enumerate(_batches()[first:], start=first):
        rows = slice(rank * share, (rank + 1) * share)
        loss, right = adapter.train_step(x[rows], y[rows])
        losses.append(loss)
        correct.append(right)
        if step == 0:
            out |= {f"step1/{k}": v for k, v in _weights(adapter).items()}
    out |= {f"last/{k}": v for k, v in _weights(adapter).items()}
    out |= {f"opt/{k}": v for k, v in adapter.optimizer_state().items()}
    out["logits"] = adapter.logits(_batches()[0][0])
    out["loss"], out["correct"] = np.asarray(losses, np.float64), np.asarray(correct, np.float64)
    return out


def _weights(adapter) -> dict[str, np.ndarray]:
    """Every canonical weight in the adapter's dtype (get_weights gives float32 copies, which
    would hide float64 differences)."""
    from resnet_tf.weights import canonical_variables, to_canonical_layout
    return {name: to_canonical_layout(v.numpy())
            for name, v in canonical_variables(adapter.model).items()}


def worker(out: Path, case: str) -> None:
    workers, rank = int(os.environ["RESNET3_WORKERS"]), int(os.environ["RESNET3_RANK"])
    from resnet_tf.model import set_threads
    set_threads(1)  # before join: TensorFlow fixes its threads at its start
    from resnet_tf.distributed import Engine, join
    engine = join(workers, rank)
    if case == "die":
        if rank == 1:
            os._exit(3)
        engine.barrier()  # worker 1 never comes: the launcher must stop this one
        return
    for name, (dtype, sync_bn, frozen) in CASES.items():
        start = time.perf_counter()
        # One strategy serves every case; the engine says whether BatchNorm synchronises.
        dist = _train(_adapter(dtype, frozen, Engine(engine.strategy, workers, rank, sync_bn)),
                      rank, workers)
        # The metrics the training loop aggregates: sums over the workers.
        dist["loss_sum"] = np.stack([engine.all_sum(np.asarray([loss, right]))
                                     for loss, right in zip(dist["loss"], dist["correct"])])
        if name == "frozen":  # a resumed run: weights and optimiser state set on every worker
            resumed = _adapter(dtype, frozen, Engine(engine.strategy, workers, rank, sync_bn))
            resumed.set_weights(_strip(dist, "step1/"))
            resumed.set_optimizer_state(_first_step_state(dtype, frozen))
            dist |= {f"resumed/{k}": v for k, v in
                     _train(resumed, rank, workers, first=1).items() if k.startswith("last/")}
        dist["seconds"] = np.asarray(time.perf_counter() - start)
        np.savez(out / f"{name}-rank{rank}.npz", **dist)
        if rank == 0:  # one process on the whole batch, no strategy
            np.savez(out / f"{name}-single.npz", **_train(_adapter(dtype, frozen), 0, 1))
    engine.close()


def _strip(result: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in result.items() if k.startswith(prefix)}


def _first_step_state(dtype: str, frozen: bool) -> dict[str, np.ndarray]:
    """The optimiser state after one single-process step (what a checkpoint holds)."""
    adapter = _adapter(dtype, frozen)
    x, y = _batches()[0]
    adapter.train_step(x, y)
    return adapter.optimizer_state()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
    sys.exit(0)


# ---- the tests ----

def _launch(tmp: Path, case: str, deadline: float = DEADLINE):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    result = launch("tf", WORKERS, [__file__, str(tmp), case], deadline, env=env)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{case: {"rank0", "rank1", "single": results}} from one launch of two workers."""
    tmp = tmp_path_factory.mktemp("tf_dist")
    result, seconds = _launch(tmp, "all")
    assert result.returncode == 0, result.failure
    print(f"\nlaunch of {WORKERS} TensorFlow workers: {seconds:.1f} s")
    return {case: {who: dict(np.load(tmp / f"{case}-{who}.npz"))
                   for who in ("rank0", "rank1", "single")} for case in CASES}


def _max_diff(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) <= set(b), sorted(set(keys) - set(b))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def _moving(result: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in result.items()
            if k.startswith(prefix) and k.endswith(("running_mean", "running_var"))}


def _check_equal_to_single(case: dict, tol: float) -> dict[str, float]:
    single, diffs = case["single"], {}
    for who in ("rank0", "rank1"):
        for prefix in ("step1/", "last/", "opt/"):
            diffs[f"{who} {prefix}"] = _max_diff(case[who], single, prefix)
        diffs[f"{who} logits"] = float(np.max(np.abs(case[who]["logits"] - single["logits"])))
    # The loop's metrics: the workers' summed local mean losses over the workers = the mean.
    diffs["loss"] = float(np.max(np.abs(case["rank0"]["loss_sum"][:, 0] / WORKERS
                                        - single["loss"])))
    assert np.array_equal(case["rank0"]["loss_sum"][:, 1], single["correct"])
    assert np.array_equal(case["rank0"]["loss_sum"], case["rank1"]["loss_sum"])
    print({k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= tol, diffs
    return diffs


def test_steps_with_frozen_batchnorm_equal_one_process_on_the_global_batch(runs):
    case = runs["frozen"]
    _check_equal_to_single(case, 1e-6)
    assert _max_diff(case["rank0"], case["rank1"], "last/") <= 1e-6


def test_resumed_workers_continue_as_the_uninterrupted_run(runs):
    case = runs["frozen"]
    for who in ("rank0", "rank1"):
        resumed = {k.removeprefix("resumed/"): v for k, v in case[who].items()
                   if k.startswith("resumed/")}
        diff = _max_diff(resumed, case["single"], "last/")
        print(f"{who} resumed at step 2: {diff:.1e}")
        assert diff <= 1e-6


def test_steps_with_sync_batchnorm_equal_one_process_in_float64(runs):
    case = runs["sync"]
    _check_equal_to_single(case, 1e-10)
    # The running statistics too (inside "last/"), on both workers.
    moving = _moving(case["rank1"], "last/")
    assert moving
    assert max(float(np.max(np.abs(v - case["single"][k]))) for k, v in moving.items()) <= 1e-10


def test_steps_without_sync_batchnorm_differ_from_one_process(runs):
    """Each worker normalises its own half: the gradients (all-reduced) are not the single
    process's, and each worker keeps its own running statistics."""
    case = runs["local"]
    weights = {k: v for k, v in case["rank0"].items() if k.startswith("last/")
               and not k.endswith(("running_mean", "running_var"))}
    same = _max_diff(weights, case["rank1"], "last/")
    off = _max_diff(weights, case["single"], "last/")
    stats = _max_diff(_moving(case["rank0"], "last/"), case["rank1"], "last/")
    print(f"trainable weights rank0 vs rank1 {same:.1e}, vs one process {off:.1e}; "
          f"running statistics rank0 vs rank1 {stats:.1e}")
    assert same <= 1e-6
    assert off > 1e-4
    assert stats > 1e-4


def test_a_dying_worker_fails_the_launch_naming_it(tmp_path):
    result, seconds = _launch(tmp_path, "die", deadline=120.0)
    print(f"failed launch: {seconds:.1f} s")
    assert result.returncode == 3, result
    assert result.failure.startswith("worker-1 failed (exit status 3)"), result.failure
    # launch() stops and reaps every process it started; none of ours may still run.
    ours = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and _cmdline(p).count(str(tmp_path))]
    assert not ours, [(p.name, _cmdline(p)) for p in ours]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("config, message", [
    (None, "TF_CONFIG: expected the cluster's JSON"),
    ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]},
      "task": {"type": "worker", "index": 0}}, "TF_CONFIG: expected 2 workers"),
    ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
      "task": {"type": "worker", "index": 1}}, "TF_CONFIG: expected task index 0"),
    ({"cluster": {}}, "TF_CONFIG: expected {\"cluster\""),
])
def test_join_refuses_a_tf_config_that_disagrees(monkeypatch, config, message):
    """Checked before the strategy is made (no process of the test's own joins a group)."""
    import json

    from resnet_tf.distributed import join
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)):
        join(2, 0)


def test_a_worker_sent_sigterm_stops_at_once_and_the_launch_names_it(tmp_path):
    """TensorFlow's coordination service replaces the SIGTERM handler with one that only records
    the signal (its preemption notifier): a worker told to stop trained on until SIGKILL. join
    gives SIGTERM back to the train script, which stops with 143, as in the other frameworks."""
    import signal
    out = tmp_path / "run"
    sent = []

    def echo(name, line):  # at the first epoch line: SIGTERM to both workers, once
        if "epoch 1/" in line and not sent:
            sent.append(time.monotonic())
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit() and str(out) in _cmdline(proc) \
                        and "resnet_tf.train" in _cmdline(proc):
                    os.kill(int(proc.name), signal.SIGTERM)
    result = launch("tf", WORKERS, ["-m", "resnet_tf.train", "--arch", "cifar_resnet20",
                                    "--dataset", "digits", "--limit", "64", "--resize", "0",
                                    "--batch-size", "16", "--epochs", "5000", "--out", str(out)],
                    deadline=150.0, echo=echo)
    assert sent, result.outputs
    stopped = time.monotonic() - sent[0]
    assert result.returncode == 143, (result.failure, stopped)
    assert re.match(r"worker-[01] failed \(exit status 143\)", result.failure), result.failure
    assert stopped < 20, f"the launch ended {stopped:.1f} s after the SIGTERM"


def test_close_meets_the_others_only_when_the_run_ended_normally():
    """close's last barrier is a collective operation: while an exception propagates (SIGTERM's
    Terminated, an error), the other workers may never reach it, and its failure would replace
    the exception that says why the worker stops. In CI a SIGTERMed worker exited 1 (its
    barrier aborted) instead of 143."""
    from common.commands.cli import Terminated
    from resnet_tf.distributed import Engine

    met = []
    engine = Engine(None, 2, 0, False)
    engine.barrier = lambda: met.append(True)
    with pytest.raises(Terminated):
        try:  # as common.commands.train.train leaves: close in a finally block
            raise Terminated
        finally:
            engine.close()
    assert met == [] and engine.closed
    engine.close()  # closed: nothing more
    assert met == []

    engine = Engine(None, 2, 0, False)
    engine.barrier = lambda: met.append(True)
    engine.close()
    engine.close()
    assert met == [True] and engine.closed
