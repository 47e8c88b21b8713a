"""resnet_jax: what the cross-framework tests (which take JAX in through the registry) leave
out.

- two of this project's library options (Gluon v2's input BatchNorm; Keras's ResNetV2 stem and
  stride on the last block): with the same canonical weights, eval- and train-mode logits equal
  PyTorch's to 1e-5 (float32); gradients and ten SGD steps with momentum and weight decay equal
  PyTorch's in float64 (1e-10); running statistics follow the documented formula (Flax folds in
  the biased variance, PyTorch the unbiased one: docs/framework-differences.md);
- round trips: canonical bit-exact, Flax's msgpack file, torch -> jax -> torch; the optimiser's
  state into a fresh adapter;
- JAX's own: float64 without leaking jax_enable_x64, XLA's thread settings, Flax's padding,
  the launch plan and the data-parallel refusals;
- the network's two faster layers (resnet_jax.model): Conv's small-map matrix product equals
  XLA's convolution, value and gradient, and is taken only up to SMALL_MAP output positions;
  BatchNorm's values are nn.BatchNorm's bit for bit and its gradient the same to rounding; the
  network on them equals the one on Flax's layers(the ONNX file's Conv nodes: test_export).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

import resnet_jax
from common.core.checks import InputError
from common.core.optim import OptimizerConfig
from common.core.oracle import zero_gradient_biases
from common.core.spec import ResNetSpec, Stage, Stem, get_spec
from common.core.weights import WeightsError
from resnet_jax.weights import flax_path
from tests.helpers import MODULES
from tests.test_fidelity import CASES, batches, random_weights, rel
from tests.test_optimizers import SPEC as OPT_SPEC, trainable_float64

ROOT = Path(__file__).resolve().parents[1]
TORCH = MODULES["torch"]
STEPS, SGD = 10, OptimizerConfig("sgd", 0.05, momentum=0.9, weight_decay=5e-4)
_SMALL = dict(stem=Stem(8, 3, 1, False), in_channels=3, num_classes=5)
# The block kinds' small networks and d2l's ResNet-18 are in tests/test_fidelity.py (every
# framework); here two of this project's library options, against PyTorch.
JAX_CASES = {
    # Gluon v2: a BatchNorm of the raw input (statistics only), pre-activation basic blocks.
    "gluon_v2_input_bn@9": (ResNetSpec("gluon_v2_small", (Stage(8, 1), Stage(16, 1, 2, True)),
                                       preact=True, input_bn=True, **_SMALL), 9),
    # Keras ResNetV2: no stem BN, zero-padded stem pool, the stride on a stage's last block,
    # biases on some convolutions only.
    "keras_v2@17": (ResNetSpec("keras_v2_small", (Stage(16, 2, 2, True),), block="bottleneck",
                               preact=True, stride_at="last", conv_bias=("stem", "conv3", "conv4"),
                               stem=Stem(8, 3, 2, True, norm=False, pool_zeros=True),
                               in_channels=3, num_classes=5), 17),
}


def exactly_zero_gradients(spec: ResNetSpec) -> set[str]:
    """The oracle's conv biases with an exact gradient of 0, less the stem's where its pool pads
    with zeros (Keras's ResNetV2): max(x + b, 0) at the border depends on b, so that bias has a
    gradient (the oracle counts it as 0: a note for common/core/oracle.py)."""
    zero = zero_gradient_biases(spec)
    return zero - {"stem.conv.bias"} if spec.stem.pool and spec.stem.pool_zeros else zero


def jax_trainable_float64(adapter) -> dict[str, np.ndarray]:
    """The JAX adapter's trainable parameters in the canonical layout, in the compute dtype
    (get_weights rounds to float32, which would hide everything below 6e-8)."""
    from resnet_jax.weights import to_canonical_layout
    flat = traverse_util.flatten_dict(adapter.params)
    return {n: np.array(to_canonical_layout(np.asarray(flat[flax_path(n)[1:]])))
            for n in adapter.trainable}


def run(module, spec: ResNetSpec, size: int) -> dict:
    """What the tests compare, each from a fresh adapter: float32 logits and running
    statistics; float64 gradients and ten SGD steps (momentum 0.9, weight decay 5e-4)."""
    w = random_weights(spec, 0)
    data = batches(spec, size, STEPS)
    x, y = data[0]
    out: dict = {"weights_in": w}
    a = module.Adapter(spec, w)
    out["round_trip"], out["eval"] = a.get_weights(), a.logits(x)
    a = module.Adapter(spec, w)
    out["train"], out["after_one_forward"] = a.logits(x, training=True), a.get_weights()
    a = module.Adapter(spec, w, optimizer=SGD, dtype="float64")
    out["loss"], out["grads"] = a.loss_and_grads(x, y)
    a = module.Adapter(spec, w, optimizer=SGD, dtype="float64")
    out["losses"] = [a.train_step(xb, yb)[0] for xb, yb in data]
    out["final"] = a.get_weights()
    read = jax_trainable_float64 if module is resnet_jax else trainable_float64
    out["final64"] = read(a)
    return out


@pytest.fixture(scope="module", params=list(JAX_CASES))
def case(request):
    spec, size = JAX_CASES[request.param]
    return spec, size, {"jax": run(resnet_jax, spec, size), "torch": run(TORCH, spec, size)}


# --- against PyTorch on the same weights ----------------------------------------------------

def test_round_trip_through_jax_is_bit_exact(case):
    _, _, res = case
    r = res["jax"]
    assert list(r["round_trip"]) == list(r["weights_in"])
    for name, a in r["weights_in"].items():
        assert r["round_trip"][name].dtype == np.float32
        assert np.array_equal(r["round_trip"][name], a), name


def test_torch_jax_torch_chain_leaves_every_weight_bit_identical(case):
    spec, _, res = case
    w = res["jax"]["weights_in"]
    current = TORCH.Adapter(spec, resnet_jax.Adapter(spec, TORCH.Adapter(spec, w)
                                                     .get_weights()).get_weights()).get_weights()
    assert all(np.array_equal(current[n], w[n]) for n in w)


def test_eval_and_train_mode_logits_equal_pytorchs(case):
    _, _, res = case
    j, t = res["jax"], res["torch"]
    scale = float(np.abs(t["eval"]).max())
    assert 0.05 < scale < 100, f"logit scale {scale} is not a meaningful test"
    for mode in ("eval", "train"):
        diff = np.abs(j[mode] - t[mode]).max()
        assert diff <= 1e-5 * max(scale, 1), f"{mode}: max |diff| {diff:.2e}, |logits| <= {scale:.2f}"
    assert np.abs(j["train"] - j["eval"]).max() > 1e-3, "train mode must use batch statistics"


def test_float64_gradients_equal_pytorchs(case):
    spec, _, res = case
    j, t = res["jax"], res["torch"]
    assert abs(j["loss"] - t["loss"]) <= 1e-12
    trainable = [n for n in j["weights_in"] if not n.endswith(("running_mean", "running_var"))]
    assert list(j["grads"]) == trainable and sorted(t["grads"]) == sorted(trainable)
    assert all(g.dtype == np.float64 for g in j["grads"].values())
    zero = exactly_zero_gradients(spec)
    total = np.sqrt(sum(float(np.sum(t["grads"][n] ** 2)) for n in trainable))
    for n in zero:  # exactly 0 in exact arithmetic: rounding noise far below the gradient
        assert np.linalg.norm(j["grads"][n]) <= 1e-12 * total, n
    worst = max((n for n in trainable if n not in zero),
                key=lambda n: rel(j["grads"][n], t["grads"][n]))
    assert rel(j["grads"][worst], t["grads"][worst]) <= 1e-10, \
        f"{worst}: relative error {rel(j['grads'][worst], t['grads'][worst]):.2e}"


def test_ten_float64_sgd_steps_with_momentum_and_weight_decay_equal_pytorchs(case):
    spec, _, res = case
    j, t = res["jax"], res["torch"]
    assert np.abs(np.array(j["losses"]) - np.array(t["losses"])).max() <= 1e-10, \
        f"losses {j['losses']} vs {t['losses']}"
    params = [n for n in j["final64"] if n not in exactly_zero_gradients(spec)]
    worst = max(params, key=lambda n: rel(j["final64"][n], t["final64"][n]))
    assert rel(j["final64"][worst], t["final64"][worst]) <= 1e-10, worst
    moved = max(rel(j["final64"][n], j["weights_in"][n]) for n in params)
    assert moved > 1e-3, "SGD did not move the parameters"


def check_running_statistics(spec, size, steps, old, jax_w, torch_w) -> None:
    """Running means equal; running variances: PyTorch folds in the unbiased batch variance,
    Flax the biased one, so (torch - 0.9**steps old) == (jax - 0.9**steps old) * n / (n - 1),
    n = N*H*W (the formula test_fidelity.py holds Keras and Gluon to)."""
    from common.core.oracle import layers
    kept = 0.9 ** steps
    moved = 0.0
    for layer in (ly for ly in layers(spec, size, 4) if ly.kind == "bn"):
        mean, var = f"{layer.path}.running_mean", f"{layer.path}.running_var"
        n = layer.out_shape[0] * layer.out_shape[2] * layer.out_shape[3]
        np.testing.assert_allclose(jax_w[mean], torch_w[mean], rtol=1e-5, atol=1e-6, err_msg=mean)
        torch_part, jax_part = (w[var] - kept * old[var] for w in (torch_w, jax_w))
        np.testing.assert_allclose(torch_part, jax_part * n / (n - 1), rtol=2e-4, atol=1e-5,
                                   err_msg=f"{var} (n={n})")
        moved = max(moved, float(np.abs(jax_w[mean] - old[mean]).max()))
    assert moved > 1e-3, "the running statistics did not move"


def test_running_statistics_after_one_forward_and_ten_steps_follow_the_formula(case):
    spec, size, res = case
    j, t = res["jax"], res["torch"]
    check_running_statistics(spec, size, 1, j["weights_in"], j["after_one_forward"],
                             t["after_one_forward"])
    check_running_statistics(spec, size, STEPS, j["weights_in"], j["final"], t["final"])


# --- the optimiser's state ----------------------------------------------------------------

ADAM = OptimizerConfig("adam", 0.01, weight_decay=5e-4)


def test_optimizer_state_round_trips_into_a_fresh_adapter():
    """A resumed adapter (weights and slots) takes the same next step as an uninterrupted one."""
    x, y = batches(OPT_SPEC, 8, 1)[0]
    a = resnet_jax.Adapter(OPT_SPEC, random_weights(OPT_SPEC, 0), optimizer=ADAM)
    a.train_step(x, y)
    b = resnet_jax.Adapter(OPT_SPEC, a.get_weights(), optimizer=ADAM)
    state = a.optimizer_state()
    assert {k.rsplit(".", 1)[1] for k in state} == {"exp_avg", "exp_avg_sq", "step"}
    b.set_optimizer_state(state)
    assert a.train_step(x, y) == b.train_step(x, y)
    wa, wb = a.get_weights(), b.get_weights()
    assert all(np.array_equal(wa[n], wb[n]) for n in wa)


# --- files ---------------------------------------------------------------------------------

def test_msgpack_file_round_trips_and_a_bad_one_is_refused_by_name(tmp_path):
    spec = CASES["preact_bottleneck@9"][0]
    w = random_weights(spec, 0)
    path = tmp_path / "net.msgpack"
    resnet_jax.save_native(resnet_jax.from_canonical(resnet_jax.build(spec), w), str(path))
    loaded = resnet_jax.to_canonical(resnet_jax.load_native(resnet_jax.build(spec, init="framework"),
                                                            str(path)))
    assert all(np.array_equal(loaded[n], w[n]) for n in w)
    other = get_spec(spec, num_classes=7)
    with pytest.raises(WeightsError, match=rf"^weights file {re.escape(str(path))}: weights do not fit "
                                           r"'preact_bn': mis-shaped 2: head\.fc\.weight"):
        resnet_jax.load_native(resnet_jax.build(other), str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match=rf"^weights file {re.escape(str(path))}: expected a Flax msgpack "
                                           r"file .*could not read it"):
        resnet_jax.load_native(resnet_jax.build(spec), str(path))


def test_a_network_called_in_training_moves_its_running_statistics_and_eval_uses_them():
    spec, size = CASES["cifar_option_a@9"][:2]
    net = resnet_jax.from_canonical(resnet_jax.build(spec), random_weights(spec, 0))
    x = np.transpose(batches(spec, size, 1)[0][0], (0, 2, 3, 1))
    before, eval_before = resnet_jax.to_canonical(net), np.asarray(net(x))
    train = np.asarray(net(x, training=True))
    after = resnet_jax.to_canonical(net)
    assert np.abs(train - eval_before).max() > 1e-3
    moved = [n for n in before if not np.array_equal(before[n], after[n])]
    assert moved and all(n.endswith(("running_mean", "running_var")) for n in moved)
    assert np.abs(np.asarray(net(x)) - eval_before).max() > 1e-4, "eval must use the new stats"
    with pytest.raises(InputError, match=r"^input: expected 3 channel\(s\) on axis 3 \(NHWC\)"):
        net(x[..., :2])


def test_threads_are_all_cores_and_another_count_is_refused_once_jax_runs():
    import os

    from common.core.errors import Error
    spec = CASES["one_block@11"][:2][0]
    resnet_jax.Adapter(spec, random_weights(spec, 0))  # JAX's backend runs from here on
    assert resnet_jax.get_threads() == (os.cpu_count() or 1)
    resnet_jax.set_threads(resnet_jax.get_threads())  # the count in force: nothing to change
    with pytest.raises(Error, match=r"^threads: expected \d+ \(JAX's CPU runtime .*\), got 3$"):
        resnet_jax.set_threads(3)


# --- the same refusals as the other frameworks ------------------------------------------------

def message(make) -> str:
    with pytest.raises(ValueError) as info:
        make()
    return str(info.value)


def test_float64_adapter_computes_in_float64_and_leaves_jax_in_float32():
    import jax.numpy as jnp
    spec, size = CASES["one_block@11"][:2]
    w = random_weights(spec, 0)
    x = batches(spec, size, 1)[0][0]
    lo32 = resnet_jax.Adapter(spec, w).logits(x)
    lo64 = resnet_jax.Adapter(spec, w, dtype="float64").logits(x)
    assert lo32.dtype == np.float32 and lo64.dtype == np.float64
    assert 0 < np.abs(lo64 - lo32).max() <= 1e-5
    assert jnp.asarray(np.ones(2)).dtype == jnp.float32, "jax_enable_x64 leaked out of the adapter"


# --- why the blocks write their padding out ------------------------------------------------

def test_flax_pads_a_max_pool_with_minus_infinity_and_same_is_asymmetric():
    """Why blocks.py writes its padding out: Flax's max-pool padding never wins (an
    all-negative map stays negative), and a strided 'SAME' convolution pads bottom-right only,
    unlike the symmetric padding PyTorch and Gluon use."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    x = -jnp.ones((1, 4, 4, 1))
    assert float(nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).max()) == -1.0
    ramp = jnp.arange(16.0).reshape(1, 4, 4, 1)
    conv = lambda padding: nn.Conv(1, (3, 3), strides=(2, 2), padding=padding,  # noqa: E731
                                   use_bias=False)
    params = conv("SAME").init(jax.random.PRNGKey(0), ramp)
    same, sym = (conv(p).apply(params, ramp) for p in ("SAME", ((1, 1), (1, 1))))
    assert same.shape == sym.shape and float(jnp.abs(same - sym).max()) > 1e-3


def test_a_hyperparameter_float32_cannot_hold_gets_pytorchs_message_first():
    spec, _ = CASES["one_block@11"][:2]
    bad = dict(lr=1e300, dtype="float16")  # two faults: the optimiser's is named, as in PyTorch
    got, want = (message(lambda m=m: m.Adapter(spec, random_weights(spec, 0), **bad))
                 for m in (resnet_jax, TORCH))
    assert got == want and got.startswith("--lr: expected")


# --- data-parallel: the launch plan and the refusals -----------------------------------------

def test_launch_gives_each_worker_the_coordinator_its_rank_and_on_several_hosts_the_interface():
    from common.commands.launch import plan
    procs = plan("jax", 2, ["-m", "resnet_jax.train"]).processes
    assert [name for name, _, _ in procs] == ["worker-0", "worker-1"]
    assert [env["RESNET3_RANK"] for _, _, env in procs] == ["0", "1"]
    coordinators = {env["RESNET3_JAX_COORDINATOR"] for _, _, env in procs}
    assert len(coordinators) == 1 and coordinators.pop().startswith("127.0.0.1:")
    assert all("RESNET3_JAX_IFACE" not in env for _, _, env in procs)
    second = plan("jax", 4, ["x.py"], hosts=["a", "b"], host_rank=1, port=9000,
                  iface="eth1").processes
    assert [(n, e["RESNET3_RANK"], e["RESNET3_JAX_COORDINATOR"], e["RESNET3_JAX_IFACE"])
            for n, _, e in second] == [("worker-2", "2", "a:9000", "eth1"),
                                       ("worker-3", "3", "a:9000", "eth1")]


def test_join_refuses_sync_bn_and_a_missing_coordinator_before_connecting(monkeypatch):
    from common.core.errors import Error
    from resnet_jax.distributed import join
    with pytest.raises(Error, match=r"^--sync-bn: expected it off for JAX, got it on; Flax's "):
        join(2, 0, sync_bn=True)
    monkeypatch.delenv("RESNET3_JAX_COORDINATOR", raising=False)
    with pytest.raises(Error, match="^RESNET3_JAX_COORDINATOR: expected the coordinator's"):
        join(2, 0)


# (input side, channels in, out, kernel, stride, padding): 2x2 and 1x1 outputs, strided,
# asymmetric, 'SAME' (bottom-right) and 'VALID', and 9 output positions (XLA's convolution).
SMALL_MAPS = [(2, 8, 5, 3, 1, ((1, 1), (1, 1))), (1, 8, 5, 3, 1, ((1, 1), (1, 1))),
              (4, 8, 5, 3, 2, ((1, 1), (1, 1))), (2, 8, 5, 1, 2, ((0, 0), (0, 0))),
              (5, 3, 4, 3, 2, ((0, 1), (0, 1))), (2, 3, 4, 3, 2, "SAME"), (3, 3, 4, 2, 1, "VALID"),
              (3, 4, 6, 3, 1, ((1, 1), (1, 1)))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SMALL_MAPS, ids=lambda c: f"{c[0]}px-k{c[3]}-s{c[4]}-{c[5]}")
def test_small_map_conv_equals_xlas_convolution_in_value_and_gradient(shape, dtype):
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental import enable_x64
    from resnet_jax.model import small_map_conv
    side, c, o, k, s, padding = shape
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, side, side, c)), rng.normal(size=(k, k, c, o))
    numbers = ("NHWC", "HWIO", "NHWC")
    with enable_x64(dtype == "float64"):
        x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
        numbers = lax.conv_dimension_numbers(x.shape, w.shape, numbers)  # as Flax passes them
        ours = lambda x, w: small_map_conv(x, w, (s, s), padding, (1, 1), (1, 1), numbers)  # noqa: E731
        xla = lambda x, w: lax.conv_general_dilated(x, w, (s, s), padding,  # noqa: E731
                                                    dimension_numbers=numbers)
        a, b = ours(x, w), xla(x, w)
        cube = lambda f: jax.grad(lambda x, w: (f(x, w) ** 3).sum(), argnums=(0, 1))  # noqa: E731
        grads = zip(cube(ours)(x, w), cube(xla)(x, w))
        assert a.dtype == b.dtype == jnp.dtype(dtype) and a.shape == b.shape
        tol = 1e-12 if dtype == "float64" else 1e-5
        assert float(jnp.abs(a - b).max()) <= tol * float(jnp.abs(b).max())
        for ga, gb in grads:
            assert float(jnp.abs(ga - gb).max()) <= tol * float(jnp.abs(gb).max())


def test_small_map_conv_multiplies_matrices_up_to_four_output_positions_only():
    import jax
    import jax.numpy as jnp
    from resnet_jax.model import SMALL_MAP, Conv

    def primitives(side, stride=1, groups=1):
        x = jnp.ones((2, side, side, 4))
        layer = Conv(4, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                     feature_group_count=groups)
        variables = layer.init(jax.random.PRNGKey(0), x)
        return str(jax.make_jaxpr(layer.apply)(variables, x))
    assert SMALL_MAP == 4
    for side, stride in [(1, 1), (2, 1), (4, 2), (3, 2)]:  # 1, 4, 4 and 4 output positions
        text = primitives(side, stride)
        assert "dot_general" in text and "conv_general_dilated" not in text, (side, stride)
    for side, stride, groups in [(3, 1, 1), (5, 2, 1), (2, 1, 2)]:  # 9, 9 positions; grouped
        text = primitives(side, stride, groups)
        assert "conv_general_dilated" in text and "dot_general" not in text, (side, groups)


@pytest.mark.parametrize("case", [((9, 9), (3, 3), (2, 2), ((1, 1), (1, 1))),
                                  ((16, 16), (3, 3), (2, 2), ((1, 1), (1, 1))),
                                  ((10, 7), (3, 2), (2, 1), ((0, 2), (1, 0))),
                                  ((8, 8), (3, 3), (2, 2), "VALID")])
def test_max_pool_equals_flaxs_in_value_and_gradient_with_tied_maxima(case):
    """resnet_jax.model.max_pool against nn.max_pool in float64, on integers, so that most
    windows hold tied maxima: the same values, and each window's gradient on its first
    maximum, as XLA's select-and-scatter gives it (not split among the ties)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from jax.experimental import enable_x64
    from resnet_jax.model import max_pool
    hw, window, strides, padding = case
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(2, *hw, 3)))  # ties in most windows
    w = rng.normal(size=nn.max_pool(jnp.asarray(x), window, strides, padding).shape)
    with enable_x64():
        x, w = jnp.asarray(x), jnp.asarray(w)
        ours = lambda x: max_pool(x, window, strides, padding)  # noqa: E731
        flax_ = lambda x: nn.max_pool(x, window, strides, padding)  # noqa: E731
        assert np.array_equal(ours(x), flax_(x))
        ga, gb = (jax.grad(lambda x, f=f: (f(x) * w).sum())(x) for f in (ours, flax_))
        assert ga.dtype == jnp.float64
        assert float(jnp.abs(ga - gb).max()) <= 1e-12
        split = jax.grad(lambda x: (jnp.maximum(x[:, :-1], x[:, 1:]) * 1.0).sum())(x)
        assert not np.array_equal(split, jnp.round(split))  # jnp.maximum splits ties: 0.5


def test_the_networks_training_step_has_no_select_and_scatter():
    """The stem's max-pool of the network goes through max_pool, whose gradient is slices and
    pads; nn.max_pool's is XLA's select-and-scatter (the Flax reference keeps it)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from resnet_jax.model import build
    net = build("d2l_resnet18", num_classes=10, in_channels=1)
    X = jnp.zeros((2, 32, 32, 1))

    def grad_text(module):
        loss = lambda p: module.clone(training=True).apply(  # noqa: E731
            {**net.variables, "params": p}, X, mutable=["batch_stats"])[0].sum()
        return str(jax.make_jaxpr(jax.grad(loss))(net.variables["params"]))
    assert "select_and" not in grad_text(net.module)
    assert "select_and" in grad_text(net.module.clone(pool=nn.max_pool))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_networks_batchnorm_gives_flaxs_values_bit_for_bit_and_its_gradient(dtype):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from resnet_jax.model import BatchNorm
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3, 2, size=(8, 5, 5, 6)), dtype)
    for training in (True, False):
        flax_bn, ours = (layer(not training, momentum=0.9, epsilon=1e-5,
                               use_fast_variance=False) for layer in (nn.BatchNorm, BatchNorm))
        variables = flax_bn.init(jax.random.PRNGKey(0), x)
        assert (jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x))
                == jax.tree_util.tree_structure(variables))
        variables = jax.tree_util.tree_map(  # scale, bias, mean and var away from 1 and 0
            lambda v: v + jnp.asarray(rng.normal(0.5, 0.1, v.shape), v.dtype), variables)
        (y_flax, s_flax), (y_ours, s_ours) = (
            layer.apply(variables, x, mutable=["batch_stats"]) for layer in (flax_bn, ours))
        assert y_ours.dtype == y_flax.dtype and bool(jnp.all(y_ours == y_flax)), training
        assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree_util.tree_leaves(s_ours),
                                                         jax.tree_util.tree_leaves(s_flax)))
        if training:
            assert not bool(jnp.all(s_ours["batch_stats"]["mean"]
                                    == variables["batch_stats"]["mean"]))  # they moved

        def grads(layer):
            loss = lambda v, x: (layer.apply(v, x, mutable=["batch_stats"])[0]  # noqa: E731
                                 .astype(jnp.float32) ** 3).sum()
            return jax.tree_util.tree_leaves(jax.grad(loss, argnums=(0, 1))(variables, x))
        for g_ours, g_flax in zip(grads(ours), grads(flax_bn)):
            g_ours, g_flax = np.asarray(g_ours, np.float64), np.asarray(g_flax, np.float64)
            assert np.abs(g_ours - g_flax).max() <= 1e-6 * max(np.abs(g_flax).max(), 1e-30)


def test_the_network_on_its_layers_equals_the_network_on_flaxs_layers():
    """d2l's ResNet-18 at 16 px (4x4 maps in stage 1, 2x2 and 1x1 after): logits in both modes
    and float64 gradients, with resnet_jax.model's Conv, BatchNorm and max_pool against nn.Conv,
    nn.BatchNorm(use_fast_variance=False) and nn.max_pool."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from jax.experimental import enable_x64
    from resnet_jax.model import build
    net = build("d2l_resnet18", num_classes=10, in_channels=1)
    flax_layers = net.module.clone(conv=nn.Conv, norm=nn.BatchNorm, pool=nn.max_pool)
    X = np.random.default_rng(0).random((8, 16, 16, 1))
    for training in (False, True):
        a, b = (m.clone(training=training).apply(net.variables, jnp.asarray(X, jnp.float32),
                                                 mutable=["batch_stats"])[0]
                for m in (net.module, flax_layers))
        assert float(jnp.abs(a - b).max()) <= 1e-5, training
    with enable_x64():
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), net.variables)
        y = jnp.arange(8)

        def grads(module):
            def loss(params):
                logits = module.clone(training=True).apply(
                    {**v64, "params": params}, jnp.asarray(X), mutable=["batch_stats"])[0]
                return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()
            return jax.tree_util.tree_leaves(jax.grad(loss)(v64["params"]))
        ours, flax_ = grads(net.module), grads(flax_layers)
        scale = max(float(jnp.abs(g).max()) for g in flax_)  # conv biases' are rounding noise
        assert all(float(jnp.abs(a - b).max()) <= 1e-10 * scale for a, b in zip(ours, flax_))
