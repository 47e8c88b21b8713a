"""Files of the Gluon model zoo and of Keras applications, offline: the libraries' own networks
are built with random weights and random BatchNorm statistics, their files saved, read into
canonical weights and run in all four frameworks, which must reproduce the library's logits;
then our weights are written back in the library's format and its own network loads them."""
import numpy as np
import pytest

from common.core.spec import get_spec
from common.core.weights import canonical_layout
from common import frameworks
from tests.helpers import MODULES

RTOL = 1e-5  # of the largest logit


def randomise(values, rng):
    """name -> array: BatchNorm variances in [0.5, 2], gammas in [0.5, 1.5], fixed gammas 1 and
    betas 0 kept, everything else N(0, 0.05)."""
    out = {}
    for name, (shape, fixed) in values.items():
        if name.endswith(("running_var", "moving_variance")):
            out[name] = rng.uniform(0.5, 2.0, shape)
        elif fixed:
            out[name] = np.ones(shape) if name.endswith("gamma") else np.zeros(shape)
        elif name.endswith("gamma"):
            out[name] = rng.uniform(0.5, 1.5, shape)
        else:
            out[name] = rng.normal(0.0, 0.05, shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


def close(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("preset", ["gluon_resnet18_v1", "gluon_resnet50_v1",
                                    "gluon_resnet18_v2", "gluon_resnet50_v2"])
def test_gluon_model_zoo_file_gives_the_zoos_logits_in_every_framework(preset, tmp_path):
    import mxnet as mx
    from resnet_mx.modes import classic
    mxw = frameworks.module("mx", "library")
    spec = get_spec(preset, num_classes=10)
    rng = np.random.default_rng(0)
    zoo = mxw.zoo_network(spec)
    params = zoo.collect_params()
    values = randomise({n: (p.shape, p.grad_req == "null" and n.endswith(("gamma", "beta")))
                        for n, p in params.items()}, rng)
    x = rng.normal(size=(2, 3, 37, 37)).astype(np.float32)
    path = tmp_path / "zoo.params"
    with classic():  # the zoo's network calls classic operators only, in either mode
        for name, p in params.items():
            p.set_data(mx.nd.array(values[name]))
        params.save(str(path))  # the zoo's own names, as its pretrained files: resnetv10_...
        want = zoo(mx.nd.array(x)).asnumpy()
    weights = mxw.load_zoo(spec, str(path))
    for fw, module in MODULES.items():
        assert close(module.Adapter(spec, weights).logits(x), want) <= RTOL, fw
    # Back: our weights in the zoo's format, loaded by the zoo's own network.
    back = tmp_path / "ours.params"
    mxw.save_zoo(spec, weights, str(back))
    fresh = mxw.zoo_network(spec)
    with classic():
        fresh.load_parameters(str(back))
        assert close(fresh(mx.nd.array(x)).asnumpy(), want) <= RTOL


@pytest.mark.parametrize("preset", ["keras_resnet50", "keras_resnet50_v2"])
def test_keras_applications_file_gives_the_applications_logits_in_every_framework(preset,
                                                                                   tmp_path):
    tfw = frameworks.module("tf", "library")
    spec = get_spec(preset, num_classes=10)
    rng = np.random.default_rng(1)
    app = tfw.app_network(spec)
    values = randomise({v.path: (tuple(v.shape), False) for v in app.weights}, rng)
    for v in app.weights:
        v.assign(values[v.path])
    path = tmp_path / "app.weights.h5"
    app.save_weights(str(path))
    x = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)  # the application's fixed size
    want = app(x.transpose(0, 2, 3, 1), training=False).numpy()
    weights = tfw.load_app(spec, str(path))
    for fw, module in MODULES.items():
        assert close(module.Adapter(spec, weights).logits(x), want) <= RTOL, fw
    back = tmp_path / "ours.weights.h5"
    tfw.save_app(spec, weights, str(back))
    fresh = tfw.app_network(spec)
    fresh.load_weights(str(back))
    assert close(fresh(x.transpose(0, 2, 3, 1), training=False).numpy(), want) <= RTOL


@pytest.mark.parametrize("preset", ["keras_resnet101", "keras_resnet152", "keras_resnet101_v2",
                                    "keras_resnet152_v2"])
def test_every_keras_application_variable_has_a_canonical_name(preset):
    """The deeper applications: every variable of Keras's network is reached exactly once."""
    tfw = frameworks.module("tf", "library")
    spec = get_spec(preset)
    app = tfw.app_network(spec)
    found = tfw.app_variables(app, spec)
    assert len({id(v) for v in found.values()}) == len(found) == len(app.weights)


def test_a_zoo_file_of_another_network_is_refused_with_a_short_message(tmp_path):
    import mxnet as mx
    mxw = frameworks.module("mx", "library")
    small = mxw.zoo_network(get_spec("gluon_resnet18_v1", num_classes=10))
    small.collect_params().save(str(tmp_path / "r18.params"))
    with pytest.raises(ValueError) as err:
        mxw.load_zoo(get_spec("gluon_resnet34_v1", num_classes=10), str(tmp_path / "r18.params"))
    message = str(err.value)
    assert str(tmp_path / "r18.params") in message and "missing" in message
    assert len(message) < 600
    del mx


@pytest.mark.parametrize("preset,library_file,fmt", [
    ("gluon_resnet18_v2", "zoo.params", "gluon"), ("keras_resnet50", "app.weights.h5", "keras")])
def test_resnet_convert_detects_the_library_file_and_writes_one_back(preset, library_file, fmt,
                                                                      tmp_path, capsys):
    """`resnet-convert` tells the library's file from the project's own by its names, reads it
    into canonical weights, and with --to writes a file the library's network loads."""
    from common.commands import convert
    from common.core.weights import load_weights
    spec = get_spec(preset, num_classes=10)
    library = frameworks.module("mx" if fmt == "gluon" else "tf", "library")
    if fmt == "gluon":
        from resnet_mx.modes import classic
        with classic():  # the zoo's classic arrays, in either of MXNet's modes
            library.zoo_network(spec).collect_params().save(str(tmp_path / library_file))
    else:
        library.app_network(spec).save_weights(str(tmp_path / library_file))
    flags = ["--arch", preset, "--num-classes", "10"]
    assert convert.main([str(tmp_path / library_file), str(tmp_path / "w.safetensors"),
                         *flags]) == 0
    assert f"({fmt})" in capsys.readouterr().out
    weights = load_weights(tmp_path / "w.safetensors")
    out = tmp_path / ("back.params" if fmt == "gluon" else "back.weights.h5")
    assert convert.main([str(tmp_path / "w.safetensors"), str(out), *flags, "--to", fmt]) == 0
    again = (library.load_zoo if fmt == "gluon" else library.load_app)(spec, str(out))
    assert all(np.array_equal(again[n], weights[n]) for n in weights)


def test_each_package_load_native_reads_its_ecosystems_file(tmp_path):
    """load_native of each package takes its own ecosystem's file too: torchvision's names for
    PyTorch, Keras applications' for Keras, the model zoo's for Gluon."""
    from common.commands import convert
    cases = {"torch": ("resnet18", "w.pth", "torchvision"),
             "tf": ("keras_resnet50", "w.weights.h5", "keras"),
             "mx": ("gluon_resnet18_v1", "w.params", "gluon")}
    for fw, (preset, name, fmt) in cases.items():
        spec = get_spec(preset, num_classes=10)
        weights = MODULES[fw].to_canonical(MODULES[fw].build(spec, seed=3))
        convert.write(weights, tmp_path / name, spec, fmt)
        model = MODULES[fw].load_native(MODULES[fw].build(spec, init="framework"),
                                        str(tmp_path / name))
        back = MODULES[fw].to_canonical(model)
        assert all(np.array_equal(back[n], weights[n]) for n in weights), fw


# --- the running statistics after a train-mode step ---------------------------------------------

def library_step(spec, values, x):
    """The library's own network with canonical `values` (read through its file), after one
    train-mode forward on x: its canonical weights after the step and its BatchNorm momentum in
    PyTorch's convention (the weight of the batch's statistics), read from the library itself."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        if spec.name.startswith("keras_"):
            tfw = frameworks.module("tf", "library")
            tfw.save_app(spec, values, f"{folder}/before.weights.h5")
            app = tfw.app_network(spec)
            app.load_weights(f"{folder}/before.weights.h5")
            app(x.transpose(0, 2, 3, 1), training=True)
            app.save_weights(f"{folder}/after.weights.h5")
            bn = next(la for la in app.layers if la.__class__.__name__ == "BatchNormalization")
            return tfw.load_app(spec, f"{folder}/after.weights.h5"), 1 - bn.momentum
        import mxnet as mx
        from mxnet import autograd
        from resnet_mx.modes import classic
        mxw = frameworks.module("mx", "library")
        mxw.save_zoo(spec, values, f"{folder}/before.params")
        zoo = mxw.zoo_network(spec)
        with classic():
            zoo.load_parameters(f"{folder}/before.params")
            with autograd.record(train_mode=True):
                out = zoo(mx.nd.array(x))
            out.backward(mx.nd.zeros_like(out))  # MXNet moves the statistics in the backward pass
            zoo.save_parameters(f"{folder}/after.params")
        bn = next(b for b in _blocks(zoo) if b.__class__.__name__ == "BatchNorm")
        return mxw.load_zoo(spec, f"{folder}/after.params"), 1 - bn._kwargs["momentum"]


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def torch_running_var(spec, size, batch, before, after, momentum):
    """PyTorch's running variance from the library's (which takes the biased batch variance):
    the documented difference, torch_batch = other_batch * n/(n-1) with n = N*H*W of that BN
    (docs/framework-differences.md, row 6)."""
    from common.core.oracle import layers
    n = {la.path: la.out_shape[0] * la.out_shape[2] * la.out_shape[3]
         for la in layers(spec, size, batch) if la.kind == "bn"}
    out = {}
    for name in after:
        if name.endswith("running_var"):
            other = (after[name] - (1 - momentum) * before[name]) / momentum
            k = n[name.rsplit(".", 1)[0]]
            out[name] = (1 - momentum) * before[name] + momentum * other * k / (k - 1)
    return out


# Each library's v1 and v2 (Keras: bottlenecks; the Gluon zoo: basic blocks, v2 with its input
# BatchNorm). The zoo's ResNet-50s move their statistics by the same rule through the same
# layers as Keras's bottlenecks and its own ResNet-18s (their logits: the tests above).
@pytest.mark.parametrize("preset,size", [
    ("keras_resnet50", 64), ("keras_resnet50_v2", 64), ("gluon_resnet18_v1", 64),
    ("gluon_resnet18_v2", 64)])
def test_a_train_mode_step_updates_running_statistics_as_the_library_does(preset, size):
    """The presets' training-time detail, which eval logits do not show: from the same weights
    and statistics, one train-mode forward moves every running mean and variance as the
    library's own network moves them (Keras applications: momentum 0.99; the Gluon zoo: 0.9),
    in every framework, to 1e-4 of each statistic's scale (float32 sums through 50 layers).
    PyTorch's variance takes the unbiased batch variance: compared after the documented
    correction."""
    spec = get_spec(preset, num_classes=10)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3, size, size)).astype(np.float32)
    values = randomise({n: (shape, n.endswith(("gamma", "beta")) and "input_bn" in n)
                        for n, shape in canonical_layout(spec).items()}, rng)
    want, momentum = library_step(spec, values, x)
    # Not the Gluon v2 input BatchNorm's: MXNet moves statistics in the backward pass, which
    # never reaches that layer (no parameters to train, an input without a gradient), so the zoo
    # (and resnet_mx) leave them as they were, while PyTorch and Keras move them.
    stats = [n for n in want if n.endswith(("running_mean", "running_var"))
             and not n.startswith("stem.input_bn.")]
    assert stats and all(not np.allclose(want[n], values[n]) for n in stats)  # it moved them
    for fw, module in MODULES.items():
        adapter = module.Adapter(spec, values)
        adapter.logits(x, training=True)
        got = adapter.get_weights()
        expected = want | (torch_running_var(spec, size, 4, values, want, momentum)
                           if fw == "torch" else {})
        off = {n: float(np.abs(got[n] - expected[n]).max()) for n in stats
               if np.abs(got[n] - expected[n]).max() > 1e-4 * max(1.0, np.abs(expected[n]).max())}
        assert not off, f"{fw}: {len(off)} of {len(stats)} statistics differ, e.g. " \
                        f"{dict(list(off.items())[:3])}"
