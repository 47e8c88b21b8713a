"""ResNet built from a `common` spec in JAX/Flax (linen), with parameter counts read from Flax's
variables.

A Flax module holds no weights: `ResNet(spec, training)` describes the network (d2l's JAX tab
builds its ResNet the same way) and its variables, `{"params": ..., "batch_stats": ...}`, live
beside it. `build()` returns a `Network`, the module and its variables together, which is what
the other packages' models are and what `param_counts`, `part_shapes`, the weights functions
and the adapter take. Batches are NHWC, Flax's layout.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from common.core.checks import check_batch, check_geometry, feature_parts
from common.core.errors import Error
from common.core.init import build_spec, init_weights, new_head
from common.core.oracle import ParamCounts, min_input_size
from common.core.spec import ResNetSpec
from resnet_jax.blocks import Bottleneck, PreActBottleneck, PreActResidual, Residual
from resnet_jax.weights import from_canonical, to_canonical

BLOCKS = {("basic", False): Residual, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


class BatchNorm(nn.BatchNorm):
    """Flax's BatchNorm (its fields, variables, names and arithmetic: the batch variance in two
    passes, E[(x - E[x])^2], statistics in at least float32), with the batch mean held constant
    inside the variance's gradient, where its derivative is zero (sum(x - E[x]) = 0), as
    TensorFlow's tf.nn.moments holds it. The values are those of nn.BatchNorm with
    use_fast_variance=False; the gradient is the same to rounding, and the training step of
    d2l's ResNet-18 at 96 px is about 5% faster (docs/performance.md). Features on the last axis
    only (NHWC), no cross-device statistics (axis_name) and no mask: what this package uses."""

    @nn.compact
    def __call__(self, x, use_running_average=None):
        if self.axis != -1 or self.axis_name is not None:
            raise NotImplementedError("BatchNorm: features on the last axis, one device only")
        ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = (x.shape[-1],)
        axes = tuple(range(x.ndim - 1))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        if ra:
            mean, var = running_mean.value, running_var.value
        else:
            x_stats = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
            mean = x_stats.mean(axes)
            var = jnp.square(x_stats - lax.stop_gradient(mean)).mean(axes)
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * mean
                running_var.value = m * running_var.value + (1 - m) * var
        scale = (self.param("scale", self.scale_init, features, self.param_dtype)
                 if self.use_scale else None)
        bias = (self.param("bias", self.bias_init, features, self.param_dtype)
                if self.use_bias else None)
        dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        y, mul = x - mean, lax.rsqrt(var + self.epsilon)
        if scale is not None:
            mul = mul * scale
        y = y * mul
        if bias is not None:
            y = y + bias
        return jnp.asarray(y, dtype)


def batch_norm(spec: ResNetSpec, training: bool, norm=BatchNorm, **kwargs) -> nn.BatchNorm:
    """The BatchNorm layer (`norm`) with the spec's epsilon and momentum (Flax's momentum
    weights the old value: 1 - the spec's PyTorch momentum) and the two-pass batch variance."""
    return norm(not training, momentum=1 - spec.bn.momentum, epsilon=spec.bn.eps,
                use_fast_variance=False, **kwargs)


SMALL_MAP = 4  # output positions (H x W) up to which Conv multiplies matrices instead
NHWC = ("NHWC", "HWIO", "NHWC")  # Flax's Conv: batch, kernel and output layouts


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
    """lax.conv_general_dilated as Flax's Conv calls it (NHWC input, HWIO kernel), except
    that an ungrouped, undilated convolution with at most SMALL_MAP output positions is one
    matrix product: the kernel's taps of the padded input (strided slices), side by side in
    the channel axis, times the kernel as a (kh*kw*C, O) matrix. The same sum in another
    order (float32 rounding apart). XLA's CPU runtime (Eigen) runs such convolutions at a few
    GFLOP/s: a 3x3 convolution of 128 maps of 2x2x256 took 109 ms as a convolution, 10 ms as
    this product (docs/performance.md); d2l's ResNet-18 at 32 px ends in 2x2 and 1x1 maps."""
    n, h, w, c = lhs.shape
    kh, kw, _, o = rhs.shape
    if isinstance(padding, str):
        padding = lax.padtype_to_pads((h, w), (kh, kw), window_strides, padding)
    (top, bottom), (left, right) = padding
    s1, s2 = window_strides
    ho, wo = (h + top + bottom - kh) // s1 + 1, (w + left + right - kw) // s2 + 1
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    nhwc = dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    if (not nhwc or feature_group_count != 1 or dilated or min(ho, wo) < 1
            or ho * wo > SMALL_MAP):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision)
    X = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    taps = [lax.slice(X, (0, i, j, 0), (n, i + s1 * (ho - 1) + 1, j + s2 * (wo - 1) + 1, c),
                      (1, s1, s2, 1)) for i in range(kh) for j in range(kw)]
    return jnp.matmul(jnp.concatenate(taps, axis=-1), rhs.reshape(kh * kw * c, o),
                      precision=precision)


class Conv(nn.Conv):
    """Flax's Conv, with its convolutions of at most SMALL_MAP output positions computed as a
    matrix product (small_map_conv): the same layer, parameters and names."""
    conv_general_dilated: Any = small_map_conv


def _windows(Xp, window: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]):
    """Each tap (i, j) of the windows over the padded Xp, in row-major order: a strided slice
    holding that tap of every window."""
    n, _, _, c = Xp.shape
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    return [((i, j), lax.slice(Xp, (0, i, j, 0),
                               (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                               (1, sh, sw, 1))) for i in range(kh) for j in range(kw)]


def _pool_geometry(X, window_shape, strides, padding):
    pads = ((0, 0), (0, 0)) if padding == "VALID" else tuple(tuple(p) for p in padding)
    Xp = jnp.pad(X, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    (kh, kw), (sh, sw) = window_shape, strides
    return Xp, pads, ((Xp.shape[1] - kh) // sh + 1, (Xp.shape[2] - kw) // sw + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(X, window_shape, strides, padding):
    Xp, _, hw = _pool_geometry(X, window_shape, strides, padding)
    return functools.reduce(jnp.maximum, (t for _, t in _windows(Xp, window_shape, strides, hw)))


def _max_pool_fwd(X, window_shape, strides, padding):
    out = _max_pool(X, window_shape, strides, padding)
    return out, (X, out)


def _max_pool_bwd(window_shape, strides, padding, residuals, g):
    """Each window's gradient to its first maximum (row-major), as XLA's select-and-scatter
    (Flax's max_pool), PyTorch, TensorFlow and MXNet give it: tied maxima are common after a
    ReLU on a constant background, and splitting the gradient among them (jnp.maximum's rule)
    would make another function's gradient."""
    X, out = residuals
    Xp, pads, hw = _pool_geometry(X, window_shape, strides, padding)
    (sh, sw), (ho, wo) = strides, hw
    taken, dXp = jnp.zeros(out.shape, bool), jnp.zeros(Xp.shape, g.dtype)
    for (i, j), tap in _windows(Xp, window_shape, strides, hw):
        first = (tap == out) & ~taken
        taken = taken | first
        dXp = dXp + lax.pad(jnp.where(first, g, jnp.zeros((), g.dtype)), jnp.zeros((), g.dtype),
                            ((0, 0, 0), (i, Xp.shape[1] - i - sh * (ho - 1) - 1, sh - 1),
                             (j, Xp.shape[2] - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
    (top, bottom), (left, right) = pads
    return (dXp[:, top:Xp.shape[1] - bottom, left:Xp.shape[2] - right, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(X, window_shape, strides=None, padding="VALID"):
    """nn.max_pool (NHWC, padding "VALID" or ((top, bottom), (left, right)) of -inf), computed
    as the maximum of the windows' taps (strided slices), with a gradient that goes to each
    window's first maximum, as nn.max_pool's does: the same function and gradient. XLA's CPU
    runtime computes nn.max_pool's gradient (select-and-scatter) slowly; in the training step
    of d2l's ResNet-18 at 32 px it took a tenth of the step (docs/performance.md)."""
    strides = tuple(strides or (1,) * len(window_shape))
    return _max_pool(X, tuple(window_shape), strides,
                     padding if padding == "VALID" else tuple(tuple(p) for p in padding))


class Stem(nn.Module):
    """d2l's b1: [input_bn], conv, [bn, relu], [3x3/2 max-pool], named as the canonical weights."""
    spec: ResNetSpec
    training: bool = True
    conv: Any = Conv
    norm: Any = BatchNorm
    pool: Any = max_pool

    @nn.compact
    def __call__(self, X):
        spec, st = self.spec, self.spec.stem
        if spec.input_bn:  # Gluon v2: the raw input normalised, no gamma or beta
            X = batch_norm(spec, self.training, self.norm, use_scale=False, use_bias=False,
                           name="input_bn")(X)
        p = st.padding
        X = self.conv(st.channels, (st.kernel_size,) * 2, strides=(st.stride,) * 2,
                      padding=((p, p), (p, p)), use_bias=spec.has_bias("stem"), name="conv")(X)
        if st.norm:
            X = nn.relu(batch_norm(spec, self.training, self.norm, name="bn")(X))
        if st.pool and st.pool_zeros:  # Keras's ResNetV2: zeros around a map that may be < 0
            X = self.pool(jnp.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (2, 2))
        elif st.pool:  # Flax pads a max-pool with -inf
            X = self.pool(X, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return X


class Stage(nn.Module):
    """Stage `index` (1-based) of the spec: its blocks, named "0", "1", ..."""
    spec: ResNetSpec
    index: int
    training: bool = True
    conv: Any = Conv
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, X):
        spec = self.spec
        stage = spec.stages[self.index - 1]
        block = BLOCKS[spec.block, spec.preact]
        for j in range(stage.blocks):
            s = spec.block_stride(stage, j)
            X = block(stage.channels,
                      use_1x1conv=j == 0 and stage.project and spec.shortcut == "conv",
                      strides=(s, s), training=self.training, conv=self.conv, norm=self.norm,
                      name=str(j),
                      **spec.block_kwargs(stage, momentum_of_old=True))(X)
        return X


class Head(nn.Module):
    """[bn, relu] (pre-activation nets), global average (or max) pool, dense; a headless net's
    (num_classes=0) ends at the pool, or with pooling=None before it. pooled=False: the map
    before the pool (forward_features)."""
    spec: ResNetSpec
    training: bool = True
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, X, pooled: bool = True):
        spec = self.spec
        if spec.preact:  # v2 blocks end un-normalised: one BN and ReLU before pooling
            X = nn.relu(batch_norm(spec, self.training, self.norm, name="bn")(X))
        if not pooled or spec.pooling is None:
            return X
        # Flax has no global pool layer
        X = jnp.mean(X, axis=(1, 2)) if spec.pooling == "avg" else jnp.max(X, axis=(1, 2))
        return nn.Dense(spec.num_classes, name="fc")(X) if spec.num_classes else X


class ResNet(nn.Module):
    """stem (d2l's b1), stage1..stageN (b2..b5), head: named parts, so that variables read
    params["stage2"]["0"]["conv1"]["kernel"]. `training`, as in d2l's JAX tab: batch statistics
    (and, with mutable=["batch_stats"], updated running ones) or the running ones. `conv`,
    `norm`, `pool`: the layer classes and the stem's pooling function (this module's Conv,
    BatchNorm and max_pool; Flax's nn.Conv, nn.BatchNorm and nn.max_pool compute the same
    functions, more slowly; the ONNX export takes nn.Conv and nn.max_pool)."""
    spec: ResNetSpec
    training: bool = True
    conv: Any = Conv
    norm: Any = BatchNorm
    pool: Any = max_pool

    def setup(self):
        self.stem = Stem(self.spec, self.training, self.conv, self.norm, self.pool)
        for i in range(1, len(self.spec.stages) + 1):
            setattr(self, f"stage{i}", Stage(self.spec, i, self.training, self.conv, self.norm))
        self.head = Head(self.spec, self.training, self.norm)

    def parts(self, X) -> dict[str, Any]:
        """The output of each part, in order (stem, stage1..stageN, head)."""
        out = {}
        for name in self.spec.part_names():
            X = getattr(self, name)(X)
            out[name] = X
        return out

    def forward_features(self, X):
        """The last feature map before pooling (after a pre-activation net's final BN-ReLU)."""
        for name in self.spec.part_names()[:-1]:
            X = getattr(self, name)(X)
        return self.head(X, pooled=False)

    def __call__(self, X):
        for name in self.spec.part_names():
            X = getattr(self, name)(X)
        return X


def check_input(X, spec: ResNetSpec, training: bool = False) -> None:
    """Raise common.core.checks.InputError unless X is an NHWC floating-point batch of the
    spec's channels that the network can run (common.core.checks)."""
    dtype = np.dtype(getattr(X, "dtype", np.asarray(X).dtype))
    shape = tuple(np.shape(X))
    check_batch(shape, dtype.name, np.issubdtype(dtype, np.floating), spec.in_channels, "NHWC")
    check_geometry(spec, shape, "NHWC", training)


class Network:
    """A Flax ResNet with its variables: what `build` returns and the other functions of this
    package take (a Flax module holds no weights; PyTorch's, Keras's and Gluon's do).
    `variables` is Flax's dict, {"params": ..., "batch_stats": ...}; calling the network with
    training=True updates its running statistics, as a training forward pass does elsewhere."""

    def __init__(self, spec: ResNetSpec, variables: dict):
        self.spec = spec
        self.module = ResNet(spec, training=False)
        self.variables = variables

    def __call__(self, X, training: bool = False):
        check_input(X, self.spec, training)
        if not training:
            return self.module.apply(self.variables, X)
        logits, updates = self.module.clone(training=True).apply(self.variables, X,
                                                                  mutable=["batch_stats"])
        self.variables = {**self.variables, **updates}
        return logits


def variable_shapes(spec: ResNetSpec) -> dict:
    """The shapes of the network's variables, traced without computing anything."""
    x = jax.ShapeDtypeStruct((1, *(max(8, min_input_size(spec)),) * 2, spec.in_channels),
                             jnp.float32)
    return jax.eval_shape(ResNet(spec, training=False).init, jax.random.PRNGKey(0), x)


def build(name_or_spec: str | ResNetSpec = "d2l_resnet18", *, init: str = "common",
          seed: int = 0, **overrides) -> Network:
    """The network of a preset name or spec. `init="common"` loads the seeded NumPy
    initialisation shared by all frameworks; `init="framework"` keeps Flax's own (LeCun normal
    kernels, zero biases, BatchNorm scale 1, bias 0, mean 0, var 1) from PRNGKey(seed)."""
    spec = build_spec(name_or_spec, init, **overrides)
    if init == "common":
        return from_canonical(Network(spec, {}), init_weights(spec, seed))
    size = max(8, min_input_size(spec))
    x = jnp.zeros((1, size, size, spec.in_channels), jnp.float32)
    return Network(spec, ResNet(spec, training=False).init(jax.random.PRNGKey(seed), x))


def resnet18(num_classes: int = 10, in_channels: int = 1, **kwargs) -> Network:
    """d2l's ResNet-18 (conv biases on; 1 channel and 10 classes by default)."""
    return build("d2l_resnet18", num_classes=num_classes, in_channels=in_channels, **kwargs)


def _size(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def param_counts(module) -> ParamCounts:
    """Trainable parameters (Flax's "params") and BatchNorm running statistics ("batch_stats"),
    of a Network (or anything else holding `variables`: a bound Flax module) or of a variables
    dict (a part's)."""
    variables = module if isinstance(module, dict) else module.variables
    return ParamCounts(_size(variables.get("params", {})), _size(variables.get("batch_stats", {})))


def part_param_counts(model: Network) -> dict[str, ParamCounts]:
    """Parameter counts per part: stem, stage1..stageN, head."""
    return {name: param_counts({c: model.variables[c].get(name, {}) for c in model.variables})
            for name in model.spec.part_names()}


def part_shapes(model: Network, X) -> dict[str, tuple[int, ...]]:
    """Output shape (NHWC, Flax's layout) after each part for the NHWC batch X, in inference
    mode (BatchNorm statistics are not touched)."""
    check_input(X, model.spec)
    outs = jax.eval_shape(lambda v, x: model.module.apply(v, x, method=ResNet.parts),
                          model.variables, jnp.asarray(X))
    return {name: tuple(outs[name].shape) for name in model.spec.part_names()}


def features(model: Network, X, parts: Sequence[str] | None = None, *,
             training: bool = False) -> dict[str, jax.Array]:
    """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
    NHWC batch X, NHWC, in one pass in inference mode (training=True: batch statistics, and
    the network's running ones move); without `parts`, every part's
    (common.core.checks.feature_parts)."""
    check_input(X, model.spec, training)
    wanted = feature_parts(model.spec, parts)
    module, mutable = model.module, ["intermediates"]
    if training:
        module, mutable = module.clone(training=True), mutable + ["batch_stats"]
    outs, state = module.apply(model.variables, jnp.asarray(X), method=ResNet.parts,
                               mutable=mutable, capture_intermediates=lambda m, name:
                               name == "__call__" and m.name is not None and m.name.isdigit())
    if training:
        model.variables = {**model.variables, "batch_stats": state["batch_stats"]}
    found = dict(outs)
    for stage, blocks in state["intermediates"].items():  # each block's output: stage1.0, ...
        found |= {f"{stage}.{j}": calls["__call__"][0] for j, calls in blocks.items()}
    return {name: found[name] for name in wanted}


def forward_features(model: Network, X) -> jax.Array:
    """The last feature map (NHWC) before pooling, in inference mode: the last stage's output,
    or for pre-activation nets after the head's final BN-ReLU (timm's forward_features)."""
    check_input(X, model.spec)
    return model.module.apply(model.variables, jnp.asarray(X), method=ResNet.forward_features)


def reset_classifier(model: Network, num_classes: int, *, seed: int = 0) -> Network:
    """A network with the weights of `model` and a new `num_classes`-class head (0: headless,
    pooled features out), initialised as common's init of that spec with `seed` (what train's
    --new-head does); `model` is left as it was."""
    spec, weights = new_head(model.spec, to_canonical(model), num_classes, seed)
    return from_canonical(Network(spec, {}), weights)


_SINGLE = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _backend_started() -> bool:
    from jax._src import xla_bridge
    return bool(xla_bridge._backends)


def set_threads(n: int) -> None:
    """Use n CPU threads. XLA's CPU runtime takes its thread count when JAX starts its backend
    (at the first computation) and offers two settings: all cores (its default) or one
    (XLA_FLAGS); another count, or a change once the backend runs, is refused, not ignored."""
    cores = os.cpu_count() or 1
    if n == get_threads():
        return
    if n not in (1, cores) or _backend_started():
        raise Error(f"threads: expected {get_threads()} (JAX's CPU runtime runs on 1 thread or on "
                    f"all {cores} cores, fixed when it starts), got {n}")
    flags = os.environ.get("XLA_FLAGS", "").replace(_SINGLE, "").strip()
    os.environ["XLA_FLAGS"] = f"{flags} {_SINGLE}".strip() if n == 1 else flags


def get_threads() -> int:
    """The CPU threads XLA's operators use: 1 under the single-thread flags, else all cores."""
    return 1 if _SINGLE in os.environ.get("XLA_FLAGS", "") else (os.cpu_count() or 1)
