"""Files of the Gluon model zoo and of Keras applications, offline: the libraries' own networks
are built with random weights and random BatchNorm statistics, their files saved, read into
canonical weights and run in all three frameworks, which must reproduce the library's logits;
then our weights are written back in the library's format and its own network loads them."""
import numpy as np
import pytest

from common.core.spec import get_spec
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
