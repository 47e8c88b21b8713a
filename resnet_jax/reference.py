"""A plain Flax ResNet and training step: the yardstick that `resnet-bench` holds the project to.

Written as a JAX user writes d2l's ResNet (its JAX tab), straight from flax.linen: convolutions
and the max-pool with padding='same' (d2l's choice; like TensorFlow's, it pads strided layers
bottom-right only, a slightly different function from the project's symmetric padding at the
same cost), Flax's BatchNorm as it comes, a `jax.jit` step of value_and_grad and plain SGD
(`w - lr * g` over the parameter tree), random arrays made in NHWC. bf16 is Flax's own mixed
precision: `dtype=jnp.bfloat16` on every layer, float32 parameters. It imports nothing from this
project; it reads the values of a spec (stem, stages, block kind, ...) and nothing else. The
bench runs it interleaved with the project's `Adapter` step on the same network, batch and
threads, so that any difference is the cost of the project's code.
"""
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

VERSION = f"{jax.__version__} (Flax {__import__('flax').__version__})"
# resnet-bench --tuned: JAX's speed options beyond jit (always on), as make_step's keywords.
SPEED_OPTIONS = {"bf16": {"precision": "bf16"}}
PROCESS_OPTIONS = {}  # --tuned: none read at import that need a process each


class Block(nn.Module):
    """One residual block of any kind the spec can ask for: basic or bottleneck, v1 or
    pre-activation, 1x1 projection (with or without BatchNorm) or zero-padded shortcut."""
    spec: Any
    c_out: int
    stride: int
    project: bool
    width: int
    training: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, X):
        spec, s = self.spec, self.stride
        if spec.block == "basic":
            convs = [(self.c_out, 3, s, 1), (self.c_out, 3, 1, 1)]
        else:
            s1, s2 = (s, 1) if spec.stride_in_1x1 else (1, s)
            convs = [(self.width, 1, s1, 1), (self.width, 3, s2, spec.groups),
                     (self.c_out, 1, 1, 1)]
        bn = partial(nn.BatchNorm, not self.training, momentum=1 - spec.bn.momentum,
                     epsilon=spec.bn.eps, dtype=self.dtype)
        conv = [nn.Conv(o, (k, k), (st, st), padding="SAME", feature_group_count=g,
                        use_bias=spec.has_bias(f"conv{n}"), dtype=self.dtype)
                for n, (o, k, st, g) in enumerate(convs, start=1)]
        proj = None
        if self.project and spec.shortcut == "conv":
            proj = [nn.Conv(self.c_out, (1, 1), (s, s), use_bias=spec.has_bias(
                f"conv{len(convs) + 1}"), dtype=self.dtype)]
            proj += [bn()] if spec.shortcut_bn else []
        if spec.preact:
            Y = nn.relu(bn()(X))
            if proj is not None:
                X = Y
                for layer in proj:
                    X = layer(X)
            for i, c in enumerate(conv):
                Y = c(Y if i == 0 else nn.relu(bn()(Y)))
            return Y + X
        Y = X
        for i, c in enumerate(conv):
            Y = bn()(c(Y))
            if i < len(conv) - 1:
                Y = nn.relu(Y)
        if proj is not None:
            for layer in proj:
                X = layer(X)
        elif self.project:
            p = self.c_out - X.shape[-1]
            X = jnp.pad(X[:, ::s, ::s, :], ((0, 0), (0, 0), (0, 0), (p // 2, p - p // 2)))
        return nn.relu(Y + X)


class Net(nn.Module):
    """The spec's network: stem, blocks, head, with Flax's own initialisation."""
    spec: Any
    training: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, X):
        spec, st = self.spec, self.spec.stem
        bn = partial(nn.BatchNorm, not self.training, momentum=1 - spec.bn.momentum,
                     epsilon=spec.bn.eps, dtype=self.dtype)
        X = nn.Conv(st.channels, (st.kernel_size,) * 2, (st.stride,) * 2, padding="SAME",
                    use_bias=spec.has_bias("stem"), dtype=self.dtype)(X)
        X = nn.relu(bn()(X))
        if st.pool:
            X = nn.max_pool(X, (3, 3), (2, 2), padding="SAME")
        for stage in spec.stages:
            for j in range(stage.blocks):
                X = Block(spec, stage.channels, stage.stride if j == 0 else 1,
                          j == 0 and stage.project, spec.mid_channels(stage), self.training,
                          self.dtype)(X)
        if spec.preact:
            X = nn.relu(bn()(X))
        X = jnp.mean(X, axis=(1, 2))
        return nn.Dense(spec.num_classes, dtype=self.dtype)(X)


def network(spec) -> Net:
    """The spec's network, a Flax module (its variables come from `init`)."""
    return Net(spec)


def count_params(net: Net) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of the reference network, from the shapes of its
    variables (traced, not computed)."""
    x = jax.ShapeDtypeStruct((1, 32, 32, net.spec.in_channels), jnp.float32)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))  # noqa: E731
    return count(shapes["params"]), count(shapes.get("batch_stats", {}))


def _jax_device(device):
    kind, _, index = str(device).partition(":")
    return jax.devices("gpu")[int(index or 0)] if kind == "gpu" else jax.devices("cpu")[0]


def make_step(spec, phase, batch_size, input_size, precision="fp32", compile=False, lr=0.05,
              device="cpu", channels_last=False):
    """A no-argument function running one training step (forward, loss, backward, SGD step; returns
    the loss and the correct count, as d2l's train_ch6 adds them up) or one inference step
    (returns the logits), on a random batch made once, in NHWC, on `device`. JAX always compiles
    (jax.jit); `compile` changes nothing. fp16 is refused, as by the adapter. channels_last
    changes nothing (Flax computes NHWC always)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected fp32 or bf16 in JAX, got {precision!r}")
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    dev = _jax_device(device)
    k_x, k_y, k_init = jax.random.split(jax.random.PRNGKey(0), 3)
    X = jax.device_put(jax.random.uniform(k_x, (batch_size, input_size, input_size,
                                                spec.in_channels)), dev)
    y = jax.device_put(jax.random.randint(k_y, (batch_size,), 0, spec.num_classes), dev)
    variables = jax.device_put(Net(spec, False, dtype).init(k_init, X[:1]), dev)
    params, stats = variables["params"], variables["batch_stats"]
    if phase == "infer":
        predict = jax.jit(lambda v, X: Net(spec, False, dtype).apply(v, X).astype(jnp.float32))
        return lambda: np.asarray(predict(variables, X))
    net = Net(spec, True, dtype)

    def loss_fn(params, stats, X, y):
        logits, new = net.apply({"params": params, "batch_stats": stats}, X,
                                mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        l = jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return l, (logits, new["batch_stats"])

    @jax.jit
    def train_step(params, stats, X, y):
        (l, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats,
                                                                               X, y)
        params = jax.tree_util.tree_map(lambda w, g: w - lr * g, params, grads)
        return params, stats, l, jnp.sum(jnp.argmax(logits, 1) == y)

    state = {"params": params, "stats": stats}

    def train():
        state["params"], state["stats"], l, correct = train_step(state["params"],
                                                                 state["stats"], X, y)
        return float(l), int(correct)
    return train


def sync():
    """Nothing to wait for: every step returns NumPy or Python numbers, which waits for the
    device."""


def matmul_gflops(n=1024, seconds=0.5):
    """The best float32 matrix-multiply rate (GFLOP/s) of a short probe: an n x n product,
    repeated for about `seconds`, each waited for."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a, b = jax.random.uniform(k1, (n, n)), jax.random.uniform(k2, (n, n))
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def kernel_libraries() -> dict[str, str]:
    """What runs under JAX: jaxlib and its XLA (the extension's version), XLA's CPU runtime
    (Eigen for convolutions and matrix products), and on a GPU its platform (CUDA, cuDNN)."""
    import jaxlib.version
    from jaxlib import xla_client
    libs = {"jaxlib": jaxlib.version.__version__,
            "XLA": f"xla_extension {getattr(xla_client, '_version', 'version not exposed')}",
            "backend": jax.default_backend()}
    if jax.default_backend() == "cpu":
        libs["CPU kernels"] = "Eigen (XLA's CPU runtime)"
    else:
        libs["platform"] = str(getattr(jax.devices()[0].client, "platform_version", "unknown"))
    return libs


def call_mode(compile=False) -> str:
    """Graph: every step is a jax.jit function, compiled by XLA, with or without compile."""
    return "graph (jax.jit, XLA)"
