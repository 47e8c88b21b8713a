"""resnet_mx in both of MXNet's modes: the classic one and NumPy's (d2l's `npx.set_np()`).

The mode is process-wide state, so the other mode always runs in a child process: this file's
own run is in the mode tests/conftest.py set (classic unless RESNET3_MX_NUMPY=1), and the child
in the other one. Every child has a deadline.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.core.init import init_weights
from common.core.spec import ResNetSpec, Stage, Stem, get_spec

ROOT = Path(__file__).resolve().parent.parent
MX_NUMPY = os.environ.get("RESNET3_MX_NUMPY") == "1"  # as tests/conftest.py reads it
OTHER_MODE_ENV = {**os.environ, "RESNET3_MX_NUMPY": "0" if MX_NUMPY else "1"}

# One small network per code path that differs between the modes: d2l's (relu), option A's
# zero-padded shortcut (slice, pad), Keras's v2 (zero-padded stem pool, 1x1 max-pool shortcut).
_SMALL = dict(in_channels=3, num_classes=5)
SPECS = {
    "d2l": get_spec("d2l_resnet18", num_classes=5, in_channels=3),
    "option_a": ResNetSpec("cifar_small", (Stage(8, 1), Stage(16, 1, 2, True)), shortcut="pad",
                           stem=Stem(8, 3, 1, False), **_SMALL),
    "keras_v2": ResNetSpec("keras_v2_small", (Stage(16, 2, 2, True),), block="bottleneck",
                           preact=True, stride_at="last",
                           stem=Stem(8, 3, 2, pool=True, norm=False, pool_zeros=True), **_SMALL),
}


def batch(seed: int = 0, size: int = 19) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(4, 3, size, size)).astype(np.float32),
            rng.integers(0, 5, size=4))


def mode_outputs() -> dict[str, np.ndarray]:
    """What resnet_mx computes from the same canonical weights and batch, in the mode in force:
    the model's own eval logits (imperative and hybridized), and the adapter's train-mode
    logits, gradients and weights after two SGD steps with momentum."""
    import resnet_mx
    from common.core.optim import OptimizerConfig
    from resnet_mx.modes import array
    out = {}
    x, y = batch()
    for name, spec in SPECS.items():
        weights = init_weights(spec, 1)
        model = resnet_mx.from_canonical(resnet_mx.build(spec, init="framework"), weights)
        out[f"{name}.eval"] = model(array(x)).asnumpy()
        model.hybridize()
        out[f"{name}.eval_hybrid"] = model(array(x)).asnumpy()
        adapter = resnet_mx.Adapter(spec, weights, optimizer=OptimizerConfig(momentum=0.9))
        out[f"{name}.train_logits"] = adapter.logits(x, training=True)
        loss, grads = adapter.loss_and_grads(x, y)
        out[f"{name}.loss"] = np.float32(loss)
        out |= {f"{name}.grad.{k}": v for k, v in grads.items()}
        adapter.train_step(x, y)
        adapter.train_step(x, y)
        out |= {f"{name}.stepped.{k}": v for k, v in adapter.get_weights().items()}
    return out


def child_main(folder: str) -> None:
    """The other mode's half (run by other_mode below): its outputs, the weights it reads from
    this mode's .params file, and a .params file of its own."""
    import mxnet as mx
    from mxnet import npx
    if MX_NUMPY:  # read from the child's own environment, which the parent set
        npx.set_np()
    import resnet_mx
    out = mode_outputs()
    spec = SPECS["d2l"]
    read = resnet_mx.load_native(resnet_mx.build(spec, init="framework"), f"{folder}/parent.params")
    out |= {f"read.{k}": v for k, v in resnet_mx.to_canonical(read).items()}
    resnet_mx.save_native(resnet_mx.build(spec, seed=2), f"{folder}/child.params")
    out["mode_was_numpy"] = np.bool_(mx.util.is_np_array())
    np.savez(f"{folder}/child.npz", **out)


@pytest.fixture(scope="module")
def other_mode(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    """Runs child_main in the other mode, after writing this mode's .params file for it."""
    import resnet_mx
    folder = tmp_path_factory.mktemp("other_mode")
    resnet_mx.save_native(resnet_mx.build(SPECS["d2l"], seed=3), str(folder / "parent.params"))
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_mx_modes import child_main; "
                               "child_main(sys.argv[1])", str(folder)],
        cwd=ROOT, env=OTHER_MODE_ENV, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(folder / "child.npz") as data:
        outputs = dict(data)
    assert bool(outputs.pop("mode_was_numpy")) != MX_NUMPY  # it really ran in the other mode
    return outputs, folder


def test_same_weights_give_the_same_results_in_both_modes(other_mode):
    """Eval logits (imperative and hybridized) are bit for bit the same in both modes for every
    network, and so is everything of d2l's network (train-mode logits, loss, gradients, weights
    after two SGD steps with momentum). The two small networks' training-mode results differ
    by float32 rounding only (seen: 5e-7 at most, the same in every run), bounded here by 1e-6
    of each array's scale; each mode alone is deterministic."""
    theirs, _ = other_mode
    ours = mode_outputs()
    assert set(ours) <= set(theirs)
    exact = [k for k in ours if k.startswith("d2l.") or k.endswith((".eval", ".eval_hybrid"))]
    differ = {k: float(np.abs(ours[k] - theirs[k]).max()) for k in exact
              if not np.array_equal(ours[k], theirs[k])}
    assert not differ, f"expected bit-identical results in both modes, got differences {differ}"
    differ = {k: float(np.abs(ours[k] - theirs[k]).max()) for k in ours
              if np.abs(ours[k] - theirs[k]).max() > 1e-6 * max(1.0, np.abs(theirs[k]).max())}
    assert not differ, f"expected float32 rounding (1e-6 of scale), got differences {differ}"


def test_weights_file_saved_in_one_mode_loads_in_the_other(other_mode):
    """save_native writes the classic format in both modes; load_native reads either; and
    Gluon's own load_parameters reads the file in this mode, whichever wrote it."""
    import resnet_mx
    theirs, folder = other_mode
    spec = SPECS["d2l"]
    want = resnet_mx.to_canonical(resnet_mx.build(spec, seed=3))
    assert all(np.array_equal(theirs[f"read.{k}"], v) for k, v in want.items())
    model = resnet_mx.load_native(resnet_mx.build(spec, init="framework"),
                                  str(folder / "child.params"))
    want = init_weights(spec, 2)
    assert all(np.array_equal(v, want[k]) for k, v in resnet_mx.to_canonical(model).items())
    gluon_own = resnet_mx.build(spec, init="framework")
    gluon_own.load_parameters(str(folder / "child.params"))
    assert all(np.array_equal(v, want[k]) for k, v in resnet_mx.to_canonical(gluon_own).items())


# --- runs in the child's selection too (see MODE_RUN) -----------------------------------------

def test_mxnet_runs_in_the_mode_the_environment_asks_for():
    """RESNET3_MX_NUMPY=1 really puts the tests in NumPy mode, and the model then returns
    mx.np arrays (what that mode's user expects); classic NDArrays otherwise."""
    import mxnet as mx
    import resnet_mx
    from resnet_mx.modes import array
    assert mx.util.is_np_array() == MX_NUMPY
    model = resnet_mx.build(SPECS["option_a"])
    out = model(array(batch()[0]))
    assert isinstance(out, mx.np.ndarray) == MX_NUMPY
    assert isinstance(out, mx.nd.NDArray)


def test_bf16_is_refused_in_numpy_mode_with_expected_and_given():
    import resnet_mx
    spec = SPECS["option_a"]
    if not MX_NUMPY:  # classic mode: AMP's rewrite works (tests/test_precision.py pins it)
        from tests.helpers import bf16_refused_here
        make = lambda: resnet_mx.Adapter(spec, init_weights(spec, 0), precision="bf16")  # noqa: E731
        if not bf16_refused_here(resnet_mx, make):  # where the CPU computes bf16
            assert make().precision == "bf16"
        return
    with pytest.raises(ValueError, match=r"precision: expected fp32 under npx.set_np\(\) .*"
                                         r"got 'bf16'"):
        resnet_mx.Adapter(spec, init_weights(spec, 0), precision="bf16")


# --- the copied blocks.py ----------------------------------------------------------------------

D2L_EXAMPLES = textwrap.dedent("""
    import sys
    import mxnet as mx
    from mxnet import np, npx
    from mxnet.gluon import nn
    from blocks import Residual, resnet_block

    def examples(uniform):  # random arrays of the mode in force
        blk = Residual(3)
        blk.initialize()
        X = uniform((4, 3, 6, 6))
        assert blk(X).shape == (4, 3, 6, 6), blk(X).shape
        blk = Residual(6, use_1x1conv=True, strides=2)
        blk.initialize()
        assert blk(X).shape == (4, 6, 3, 3), blk(X).shape
        net = nn.Sequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
                nn.BatchNorm(), nn.Activation('relu'),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        net.add(resnet_block(64, 2, first_block=True),
                resnet_block(128, 2),
                resnet_block(256, 2),
                resnet_block(512, 2))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
        net.initialize()
        X = uniform((1, 1, 224, 224))
        shapes = []
        for layer in net:
            X = layer(X)
            print(layer.name, 'output shape:\\t', X.shape)
            shapes.append(X.shape)
        net.hybridize()
        out = net(uniform((1, 1, 224, 224)))
        return shapes + [out.shape], isinstance(out, np.ndarray)

    print("classic", examples(lambda shape: mx.nd.random.uniform(shape=shape)))
    npx.set_np()  # after the first blocks ran: the file reads the mode at call time
    print("numpy", examples(lambda shape: np.random.uniform(size=shape)))  # d2l's own
    import blocks  # the copy, and nothing of the project
    assert blocks.__file__ == sys.path[0] + "/blocks.py" and "resnet_mx" not in sys.modules
""")

# d2l's table: conv, BatchNorm, ReLU, max-pool, the four stages, pooling, dense; hybridized.
D2L_SHAPES = [(1, 64, 112, 112)] * 3 + [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28),
                                        (1, 256, 14, 14), (1, 512, 7, 7), (1, 512, 1, 1),
                                        (1, 10), (1, 10)]


def test_copied_blocks_file_runs_d2l_examples_in_both_modes(tmp_path):
    """blocks.py alone, copied into a folder with nothing else of the project, runs d2l's
    MXNet examples (Residual shapes, the ResNet-18 layer table, hybridized) in the classic
    mode and after npx.set_np(), as the d2l chapter runs them."""
    shutil.copy(ROOT / "resnet_mx" / "blocks.py", tmp_path / "blocks.py")
    (tmp_path / "d2l.py").write_text(D2L_EXAMPLES)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESNET3_MX_NUMPY")}
    run = subprocess.run([sys.executable, "-s", "d2l.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    results = dict(line.split(" ", 1) for line in run.stdout.splitlines()
                   if line.startswith(("classic ", "numpy ")))
    assert results["classic"] == repr((D2L_SHAPES, False))
    assert results["numpy"] == repr((D2L_SHAPES, True))  # mx.np arrays out, as d2l expects


# --- the MXNet tests, run in the other mode ------------------------------------------------------

# Every resnet_mx API: blocks, model (build, resnet18, param_counts, part_shapes, input checks),
# weights (canonical, native files, the model zoo), the adapter (train_step, loss_and_grads,
# logits, optimiser state through a resumed run), common.commands.train.main, convert, summary.
# About 25 s in the child. Not crosscheck's tests: they compute every framework, and the mode's
# agreement with the classic one (which crosscheck pins against the others) is
# test_same_weights_give_the_same_results_in_both_modes above. (The init rule and the optimiser
# tests run in classic mode only: they check NumPy-side formulas through the same adapter calls.)
MODE_RUN = [
    "tests/test_mx_modes.py::test_mxnet_runs_in_the_mode_the_environment_asks_for",
    "tests/test_mx_modes.py::test_bf16_is_refused_in_numpy_mode_with_expected_and_given",
    "tests/test_models.py", "tests/test_training.py", "tests/test_zoo.py", "tests/test_commands.py",
    "tests/test_summary.py::test_summary_reports_agreement_for_all_frameworks",
    "-k", "(mx or gluon_resnet18_v2 or params or summary) and not crosscheck",
]


def test_mx_tests_pass_in_the_other_mode():
    """The selection above, in a pytest child in the other mode: every test passes, none is
    skipped, and the mode check among them ran."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          "-n", "0", *MODE_RUN],  # in the child's own process, not on workers
                         cwd=ROOT, env=OTHER_MODE_ENV, capture_output=True, text=True, timeout=300)
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    assert re.search(r"^PASSED tests/test_mx_modes.py::test_mxnet_runs_in_the_mode_the_environment",
                     run.stdout, re.M), tail
    summary = run.stdout.strip().splitlines()[-1]
    counts = dict((what, int(n)) for n, what in re.findall(r"(\d+) (\w+)", summary))
    assert set(counts) == {"passed", "deselected"} and counts["passed"] >= 30, summary
