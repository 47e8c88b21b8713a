"""Data-parallel PyTorch (DDP over gloo) with two local CPU worker processes, against one
process on the whole batch.

This file is also the worker: `python tests/test_distributed_torch.py OUT [die]` joins the
group from the environment (RESNET3_WORKERS, RESNET3_RANK or torchrun's RANK, MASTER_ADDR,
MASTER_PORT), trains every case below on its share of each global batch and writes its
weights, BatchNorm statistics, momentum buffers, losses and counts to OUT/rank<k>.npz.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # when run as the worker script

from common.core.init import init_weights  # noqa: E402
from common.commands.launch import launch  # noqa: E402
from common.core.optim import OptimizerConfig  # noqa: E402
from common.core.spec import ResNetSpec, Stage, Stem  # noqa: E402
from resnet_torch.adapter import Adapter  # noqa: E402

SPEC = ResNetSpec("tiny", (Stage(8, 1), Stage(16, 1, 2, True)), stem=Stem(8, 3, 1, False),
                  in_channels=1, num_classes=4)
OPT = OptimizerConfig("sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
WORKERS, BATCH, STEPS, SIDE = 2, 8, 3, 12
SAVED_AFTER = (1, STEPS)  # steps after which the state is written: one, and several
# frozen: BatchNorm in eval mode (running statistics), float32; sync: --sync-bn, float64;
# local: each worker normalises its own share (the default), float64.
CASES = {"frozen": ("float32", False, True), "sync": ("float64", True, False),
         "local": ("float64", False, False)}
DEADLINE = 240.0  # seconds for one launch; these take ~10 s on 2 shared cores


def global_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(14)
    return [(rng.normal(size=(BATCH, 1, SIDE, SIDE)).astype(np.float32),
             rng.integers(0, SPEC.num_classes, BATCH)) for _ in range(STEPS)]


def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm layer stays in eval mode (running statistics) when the adapter calls
    model.train(): the function of a batch is then the same on a share as on the whole."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = lambda mode=True, m=m: nn.Module.train(m, False)
            m.train()


def run_case(case: str, engine=None) -> dict[str, np.ndarray]:
    """Train STEPS steps of `case`: on the whole batches, or with an engine on this worker's
    rows [k*B/N, (k+1)*B/N) of each. Returns the state (float64) after SAVED_AFTER steps."""
    dtype, _, frozen = CASES[case]
    adapter = Adapter(SPEC, init_weights(SPEC, 0), optimizer=OPT, dtype=dtype, engine=engine)
    if frozen:
        freeze_batchnorm(adapter.model)
    out = {}
    for step, (x, y) in enumerate(global_batches(), start=1):
        if engine is not None:
            share = BATCH // engine.workers
            rows = slice(engine.rank * share, (engine.rank + 1) * share)
            x, y = x[rows], y[rows]
        loss, correct = adapter.train_step(x, y)
        out[f"{case}/{step}/loss"], out[f"{case}/{step}/correct"] = np.float64(loss), correct
        if step in SAVED_AFTER:
            state = dict(adapter.model.state_dict())
            state |= {f"{k}.momentum": v for k, v in adapter.optimizer_state().items()}
            # copies: state_dict's tensors share memory with the model's, which trains on
            out |= {f"{case}/{step}/{k}": np.array(v.double() if torch.is_tensor(v) else v,
                                                   np.float64, copy=True)
                    for k, v in state.items()}
    return out


def worker(out: Path, die: bool) -> None:
    from resnet_torch.distributed import join
    torch.set_num_threads(1)
    workers = int(os.environ["RESNET3_WORKERS"])
    rank = int(os.environ.get("RESNET3_RANK", os.environ.get("RANK", "-1")))
    (out / f"pid{rank}").write_text(str(os.getpid()))
    engine = join(workers, rank)
    if die:  # the last worker dies at once; the others would wait far past the deadline
        if rank == workers - 1:
            print(f"RuntimeError: worker {rank} gave up on purpose", flush=True)
            os._exit(3)
        time.sleep(DEADLINE)
    results = {}
    for case, (_, sync_bn, _) in CASES.items():
        results |= run_case(case, join(workers, rank, sync_bn))
    np.savez(out / f"rank{rank}.npz", **results)
    engine.barrier()
    engine.close()
    engine.close()  # idempotent


def run_launch(args: list[str]):
    """Two workers of `python args...` under common.commands.launch (torchrun), one thread each."""
    return launch("torch", WORKERS, args, DEADLINE,
                  env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


# ---- the tests --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One launch of two workers for every case, and one process on the whole batches."""
    tmp = tmp_path_factory.mktemp("dist_torch")
    t0 = time.perf_counter()
    result = run_launch([__file__, str(tmp)])
    assert result.returncode == 0, (result.failure, result.outputs)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(1)
    single = {}
    for case in CASES:
        single |= run_case(case)
    ranks = [dict(np.load(tmp / f"rank{k}.npz")) for k in range(WORKERS)]
    return {"single": single, "ranks": ranks, "seconds": seconds}


def _max_diff(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix) and not k.endswith(("/loss", "/correct"))]
    assert keys and all(k in b for k in keys)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def _check_equal_to_single(runs: dict, case: str, tol: float) -> None:
    single, ranks = runs["single"], runs["ranks"]
    for step in SAVED_AFTER:
        prefix = f"{case}/{step}/"
        for k, rank in enumerate(ranks):
            diff = _max_diff(rank, single, prefix)
            print(f"{case} after {step} steps: worker {k} vs one process, max |diff| {diff:.2e}")
            assert diff <= tol, f"{prefix}: worker {k} differs from one process by {diff}"
        assert _max_diff(ranks[0], ranks[1], prefix) == 0, "the workers' weights differ"
    for step in range(1, STEPS + 1):  # the mean of the local means is the global mean loss
        loss = np.mean([r[f"{case}/{step}/loss"] for r in ranks])
        np.testing.assert_allclose(loss, single[f"{case}/{step}/loss"], rtol=0, atol=tol)
        assert sum(int(r[f"{case}/{step}/correct"]) for r in ranks) == \
            single[f"{case}/{step}/correct"]


def test_ddp_steps_with_frozen_batchnorm_equal_one_process_float32(runs):
    _check_equal_to_single(runs, "frozen", 1e-6)


def test_sync_bn_steps_equal_one_process_with_running_stats_float64(runs):
    _check_equal_to_single(runs, "sync", 1e-10)
    assert any(k.endswith("running_var") for k in runs["single"] if k.startswith("sync/"))


def test_without_sync_bn_workers_agree_but_differ_from_one_process(runs):
    """Documented: without --sync-bn each worker normalises its share, another function. The
    running means are averaged over the workers, which after one step is the single
    process's update; the running variances are not (each share's variance is smaller)."""
    single, ranks = runs["single"], runs["ranks"]
    for step in SAVED_AFTER:
        assert _max_diff(ranks[0], ranks[1], f"local/{step}/") == 0
    weights = max(float(np.max(np.abs(ranks[0][k] - single[k]))) for k in single
                  if k.startswith("local/1/") and k.endswith((".weight", ".bias")))
    print(f"local after 1 step: max |weight diff| to one process {weights:.2e}")
    assert weights > 1e-4
    mean = _max_diff(ranks[0], single, "local/1/stem.bn.running_mean")
    var = _max_diff(ranks[0], single, "local/1/stem.bn.running_var")
    assert mean < 1e-12 and var > 1e-6, (mean, var)


def test_a_dying_worker_fails_the_launch_and_leaves_no_process(tmp_path):
    t0 = time.perf_counter()
    result = run_launch([__file__, str(tmp_path), "die"])
    seconds = time.perf_counter() - t0
    assert result.returncode != 0
    # torchrun's report of its first failure (or the launcher's own "worker-1 ... status 3")
    root = (result.failure or "").split("Root Cause")[-1]
    assert re.search(rf"(rank\s*:\s*|worker-){WORKERS - 1}\b", root) and \
        re.search(r"(exitcode\s*:\s*|exit status )3\b", root), result.failure
    # the cause quoted from the worker's own output, not from torchrun's summary
    assert f"its cause: RuntimeError: worker {WORKERS - 1} gave up on purpose" in \
        result.failure.splitlines()[0], result.failure
    assert seconds < DEADLINE / 2, f"the other worker was waited for, not stopped ({seconds} s)"
    pids = [int((tmp_path / f"pid{k}").read_text()) for k in range(WORKERS)]
    assert not [p for p in pids if alive(p)], "a worker process survived the launch"


if __name__ == "__main__":
    worker(Path(sys.argv[1]), die=sys.argv[2:] == ["die"])
