"""The fast default paths are the same functions, and the speed flags take effect: --threads in
every framework from the command line alone, first steps timed apart, TensorFlow's padding."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common.commands import compare
from common.frameworks import FRAMEWORKS
from common.commands.train import StepClock, parser
from resnet_tf.blocks import PaddedConv2D, PaddedMaxPool2D
from resnet_tf.model import ResNet
from common.core.spec import get_spec
from tests.helpers import MODULES, bf16_refused_here


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_threads_flag_alone_sets_the_frameworks_thread_count(fw, tmp_path):
    """`--threads 1` from the command line, with no OMP_NUM_THREADS in the environment, is
    what the framework then reports using (MXNet included, which reads it only when it loads)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = tmp_path / fw
    cmd = [sys.executable, "-m", f"resnet_{fw}.train", "--arch", "cifar_resnet20",
           "--dataset", "digits", "--epochs", "1", "--limit", "64", "--batch-size", "32",
           "--resize", "0", "--threads", "1",
           "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["threads"] == 1
    # Two steps of 32: the first (tracing) is apart, the second is the whole steady figure.
    assert run["first_step_seconds"] > 0
    assert run["history"][0]["examples_per_sec"] == pytest.approx(
        32 / run["history"][0]["seconds"])
    assert "first step" in done.stdout


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_default_thread_count_is_all_cores(fw):
    """In a fresh process, each package's default is every core (MXNet's own is half)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = f"import resnet_{fw} as m; m.set_threads({os.cpu_count()}); print(m.get_threads())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == os.cpu_count()


def test_step_clock_keeps_the_first_step_apart(monkeypatch):
    ticks = iter([0.0, 5.0, 10.0, 10.5, 20.0, 20.25])  # a 5 s first step, then 0.5 s and 0.25 s
    monkeypatch.setattr("common.commands.train.time.perf_counter", lambda: next(ticks))
    clock = StepClock()
    assert [clock.time(lambda: i, 8) for i in range(3)] == [0, 1, 2]
    assert (clock.first, clock.seconds, clock.examples) == (5.0, 0.75, 16)
    assert clock.rate() == pytest.approx(16 / 0.75)
    assert StepClock().rate() is None


def test_compare_passes_the_speed_flags_to_every_train_script(tmp_path):
    args = parser("x").parse_args(["--compile", "--precision", "bf16", "--threads", "1",
                                   "--channels-last"])
    flags = compare.train_flags(args, tmp_path)
    assert "--compile" in flags and flags[flags.index("--compile") + 1].startswith("--")
    assert "--channels-last" in flags
    assert flags[flags.index("--precision") + 1] == "bf16"
    assert flags[flags.index("--threads") + 1] == "1"
    assert "--compile" not in compare.train_flags(parser("x").parse_args([]), tmp_path)
    assert "--channels-last" not in compare.train_flags(parser("x").parse_args([]), tmp_path)


@pytest.mark.parametrize("given", [[], ["--channels-last"]])
def test_train_speed_flags_reach_the_adapters_constructor(given):
    """The train script's --compile, --precision and --channels-last are the Adapter's
    keywords (the adapters' tests check what each keyword does)."""
    from types import SimpleNamespace
    from common.commands.train import make_adapter
    seen = {}

    def adapter(spec, weights, **kwargs):
        seen.update(kwargs, spec=spec, weights=weights)
        return SimpleNamespace()
    args = parser("x").parse_args(["--compile", "--precision", "bf16", *given])
    run = SimpleNamespace(package=SimpleNamespace(Adapter=adapter), spec=get_spec("resnet18"),
                          args=args, engine=None)
    make_adapter(run, {"w": 1}, {})
    assert (seen["compile"], seen["precision"], seen["channels_last"]) == (
        True, "bf16", bool(given))
    assert seen["weights"] == {"w": 1} and seen["spec"] is run.spec


def test_compare_speed_section_puts_each_figure_in_its_column():
    runs = {"torch": {"train_examples_per_sec": 111.0, "infer_examples_per_sec": 222.0,
                      "first_step_seconds": 3.25, "first_eval_step_seconds": 0.5,
                      "peak_rss_mib": 700.0}}
    rows = [{"framework": "torch", "phase": "train", "ratio_wall": 0.991, "peak_share": 0.123},
            {"framework": "torch", "phase": "infer", "ratio_wall": 1.004, "peak_share": 0.456}]
    text = compare.speed_section(runs, rows, ["probe note."])
    header, _, row = text.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["train img/s"] == "111.0" and cells["infer img/s"] == "222.0"
    assert cells["first train step s"] == "3.25" and cells["peak RSS MiB"] == "700"
    assert cells["train ratio to reference"] == "0.991"
    assert cells["infer ratio to reference"] == "1.004"
    assert cells["train % FP32 peak"] == "12.3%" and cells["infer % FP32 peak"] == "45.6%"
    assert "probe note." in text


def test_tensorflow_pads_explicitly_only_where_same_is_asymmetric():
    """Stride-1 convolutions use Keras's 'same' (no extra copy); only strided ones pad."""
    model = ResNet(get_spec("d2l_resnet18"))
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, PaddedConv2D)]
    assert len(convs) == 1 + 16  # the stem and two 3x3 per block
    for conv in convs:
        if conv.strides == (1, 1):
            assert (conv.padding, conv.explicit_padding) == ("same", 0)
        else:
            assert (conv.padding, conv.explicit_padding) == ("valid", conv.kernel_size[0] // 2)
    assert sum(c.strides == (2, 2) for c in convs) == 4


@pytest.mark.parametrize("size", [7, 8, (8, 9), 2])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (7, 2), (3, 1), (5, 3)])
def test_tensorflow_padded_conv_equals_symmetric_padding(size, kernel, stride):
    """Every route of PaddedConv2D (same, same on reversed axes, explicit pad) computes PyTorch's
    symmetric padding: outputs and gradients equal a plain pad-then-'valid' convolution."""
    h, w = (size, size) if isinstance(size, int) else size
    p = kernel // 2
    rng = np.random.default_rng(0)
    X = tf.constant(rng.standard_normal((2, h, w, 3)), tf.float32)
    kernel_w = rng.standard_normal((kernel, kernel, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    layers = [PaddedConv2D(4, kernel, strides=stride, padding=p, flip=flip) for flip in (True, False)]
    for layer in layers:
        layer.build(X.shape)
        layer.set_weights([kernel_w, bias])

    def plain(X):
        Xp = tf.pad(X, [[0, 0], [p, p], [p, p], [0, 0]])
        return tf.nn.conv2d(Xp, kernel_w, stride, "VALID") + bias

    results = []
    for fn in (lambda X: layers[0](X, training=True), lambda X: layers[0](X, training=False),
               lambda X: layers[1](X, training=True), plain):
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = fn(X)
            loss = tf.reduce_sum(Y * tf.range(1.0, 1.0 + Y.shape[-1]))
        results.append((Y.numpy(), tape.gradient(loss, X).numpy()))
    for Y, dX in results[:3]:
        assert Y.shape == results[3][0].shape
        np.testing.assert_allclose(Y, results[3][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dX, results[3][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [7, 8, (8, 9), 2, 1])
def test_tensorflow_padded_max_pool_equals_minus_infinity_padding(size):
    """The pool's 'same' routes equal padding with -inf then 'valid', values and gradients,
    on an all-negative input (where a zero pad would win the max)."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(1)
    X = tf.constant(-np.abs(rng.standard_normal((2, h, w, 3))) - 0.1, tf.float32)
    pool = PaddedMaxPool2D(3, strides=2, padding=1)
    results = []
    for fn in (lambda X: pool(X, training=True), lambda X: tf.nn.max_pool2d(
            tf.pad(X, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf")),
            3, 2, "VALID")):
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = fn(X)
            loss = tf.reduce_sum(Y * tf.range(1.0, 1.0 + Y.shape[-1]))
        results.append((Y.numpy(), tape.gradient(loss, X).numpy()))
    assert results[0][0].shape == results[1][0].shape and results[0][0].max() < 0
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("size", [96, 95, 32, (32, 33), 2])
def test_tensorflow_stem_on_reversed_axes_equals_the_layer_by_layer_stem(size, monkeypatch):
    """The stem's fast route (the whole stem on the reversed input where both its convolution
    and its pool need it) computes what its layers compute one by one: outputs, input and
    weight gradients, in train mode."""
    from resnet_tf.weights import from_canonical
    from common.core.init import init_weights
    spec = get_spec("d2l_resnet18")
    model = from_canonical(ResNet(spec), init_weights(spec, 0))
    h, w = (size, size) if isinstance(size, int) else size
    X = tf.constant(np.random.default_rng(2).random((2, h, w, 1)), tf.float32)
    expected = {96: [1, 2], 95: None, 32: [1, 2], (32, 33): [1], 2: None}[size]
    assert model.stem.reversed_axes(X.shape) == expected
    results = []
    for fast in (True, False):
        if not fast:  # the layer-by-layer route
            monkeypatch.setattr(model.stem, "reversed_axes", lambda shape: None)
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = model.stem(X, training=True)
            loss = tf.reduce_sum(Y * tf.range(1.0, 1.0 + Y.shape[-1]))
        grads = tape.gradient(loss, [X, model.stem.conv.kernel])
        results.append([Y.numpy()] + [g.numpy() for g in grads])
    # Float32 sums in another order: the kernel gradient (9,216 terms of up to 1e3 at 96 px)
    # differs by 2e-5 of its largest element; the project's gradient tolerance is 1e-4.
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_train_flags_reach_the_adapter(fw, tmp_path):
    """--precision bf16 from the train flags trains in bf16 (other final weights than fp32's,
    still float32) and is recorded in run.json."""
    from common.commands.train import train
    from common.core.weights import load_weights
    from tests.test_training import FLAGS, tiny_data

    def run(name, *extra):
        # cifar_resnet20 at the data's 12 px: its last stage is 3x3. (ResNet-18's is 1x1 there,
        # where TensorFlow's bf16 BatchNorm over 16 values sometimes ends in NaN weights,
        # thread-dependent, which the loop refuses.)
        args = parser("test").parse_args([*FLAGS, "--epochs", "1", "--arch", "cifar_resnet20",
                                          "--out", str(tmp_path / name), *extra])
        return train(fw, args, data=tiny_data(), log=lambda *_: None)

    if bf16_refused_here(MODULES[fw], lambda: run("bf16", "--precision", "bf16")):
        return
    plain, bf16 = run("fp32"), run("bf16", "--precision", "bf16")
    assert (plain["precision"], bf16["precision"]) == ("fp32", "bf16")
    a = load_weights(tmp_path / "fp32" / "weights.safetensors")
    b = load_weights(tmp_path / "bf16" / "weights.safetensors")
    assert all(v.dtype == np.float32 for v in b.values())
    change = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert change > 1e-5, "bf16 training ended with the fp32 weights"
    assert np.isfinite(bf16["history"][0]["train_loss"])


def test_compares_speed_settings_run_through_bench_for_every_framework(monkeypatch):
    """compare's speed section calls bench.run with a settings namespace of its own (the tests
    that train pass --bench-rounds 0): every framework gets one bench process with the runs'
    network, size and batch, and none more (no --tuned process options)."""
    from argparse import Namespace
    from common.commands import bench
    started = []

    def fake_process(fw, args, log=print, extra_env=None):
        started.append((fw, args.arch, args.input_size, args.batch_size, extra_env))
        return [{"framework": fw, "phase": "train", "error": "not measured here"}]
    monkeypatch.setattr(bench, "run_framework", fake_process)
    run = {"arch": "cifar_resnet20", "input_size": 16, "in_channels": 3, "num_classes": 10}
    args = Namespace(batch_size=32, precision="fp32", compile=False, channels_last=False,
                     device="auto", threads=1,
                     bench_rounds=1)
    rows, lines = compare.measure_speed({fw: run for fw in FRAMEWORKS}, args)
    assert started == [(fw, "cifar_resnet20", 16, 32, None) for fw in FRAMEWORKS]
    assert [r["framework"] for r in rows] == list(FRAMEWORKS) and lines
