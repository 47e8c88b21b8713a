"""The small JAX/Flax adapter that the common training loop and the cross-framework tests drive.

Every adapter takes and returns NumPy: batches NCHW float32, labels int, weights and gradients
as canonical dicts. This one transposes each batch to NHWC once, and keeps the parameters, the
BatchNorm running statistics and the optimiser's slots as JAX arrays on its device between
steps.

- **Compiled always.** Every step is a `jax.jit` function (the forward pass, the gradient and
  the update in one program), traced on its first call for each batch shape; `compile=True`
  has nothing more to do and is accepted, so that the flag means the same in every framework.
  So is `channels_last`: the network computes in NHWC (channels last) always.
- **Optimisers written here**, in jax.numpy, as PyTorch computes them (the formulas of
  docs/framework-differences.md, "Optimiser updates in float64"): SGD with momentum and L2
  weight decay, and Adam with eps added to sqrt(v_hat); the learning rate is rounded to float32
  as in the other adapters, and Adam's bias corrections are computed on the host in double, as
  PyTorch does. (optax would do, but does not import with the pinned jax: requirements.txt.)
- **float64** needs JAX's `jax_enable_x64`, a process-wide flag that would also change the
  default dtypes of every other JAX user of the process; a float64 adapter instead runs each of
  its calls inside `jax.experimental.enable_x64()`, which sets it for that call only (and traces
  its own programs under it).
- BatchNorm: Flax's momentum weights the old value, so it is given 1 - the spec's (PyTorch's)
  momentum; its running variance folds in the biased batch variance, as Keras and Gluon do
  (PyTorch: the unbiased one; docs/framework-differences.md).
- precision="bf16" is mixed precision written in the program, as JAX users write it (jmp's
  policy): the float32 parameters and the batch are cast to bfloat16 inside the jitted step,
  so every convolution, the dense layer and the BatchNorm arithmetic run in bfloat16 while the
  gradient flows back to the float32 parameters (the cast's gradient casts it back); batch
  statistics, the running statistics, the loss and the optimiser step stay float32. fp16 is
  refused: float16 training needs loss scaling, which this adapter does not do (use bf16).
- engine= (resnet_jax.distributed.join): data-parallel training on JAX's multi-process runtime.
  The training step runs under `shard_map` over the engine's mesh: each worker's share is its
  block of a global batch, the gradient is averaged over the workers with `lax.pmean` (an
  all-reduce), as are the running statistics, and every worker applies the same update.
"""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax
from jax.experimental import enable_x64
from jax.experimental.shard_map import shard_map
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.core.checks import (InputError, batch_as, check_dtype, check_precision, labels_as)
from common.core.devices import Device
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec
from common.core.weights import Weights, canonical_layout, check_weights
from resnet_jax.devices import native, select
from resnet_jax.model import Network, ResNet, features
from resnet_jax.weights import flax_path, to_canonical, to_canonical_layout, to_flax_layout

if TYPE_CHECKING:
    from common.frameworks.protocols import Engine

_STATS = ("running_mean", "running_var")
_SLOTS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


def cross_entropy(logits, y):
    """The batch's mean cross-entropy of integer labels (PyTorch's F.cross_entropy)."""
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def sgd(w, g, buf, h):
    """PyTorch's SGD for one array: g += wd w; buf = mu buf + g (buf starts at 0, so it is g
    at the first step); w -= lr buf."""
    g = g + h["weight_decay"] * w
    buf = h["momentum"] * buf + g
    return w - h["lr"] * buf, (buf,)


def adam(w, g, m, v, h):
    """PyTorch's Adam for one array, in its order of operations: g += wd w; m = lerp(m, g,
    1-b1); v = b2 v + (1-b2) g g; w -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)."""
    g = g + h["weight_decay"] * w
    m = m + h["one_minus_b1"] * (g - m)
    v = v * h["b2"] + h["one_minus_b2"] * g * g
    denom = jnp.sqrt(v) / h["bc2_sqrt"] + h["eps"]
    return w - h["step_size"] * (m / denom), (m, v)


def _in_dtype(method):
    """Run the method with float64 enabled where the adapter computes in float64."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._x64():
            return method(self, *args, **kwargs)
    return wrapper


def _update(update, params, grads, slots, h):
    """`update` applied to every array of the parameter tree: the new parameters and slots."""
    out = jax.tree_util.tree_map(lambda w, g, *s: update(w, g, *s, h), params, grads, *slots)
    is_pair = lambda o: isinstance(o, tuple) and len(o) == 2  # noqa: E731
    params = jax.tree_util.tree_map(lambda o: o[0], out, is_leaf=is_pair)
    slots = tuple(jax.tree_util.tree_map(lambda o, i=i: o[1][i], out, is_leaf=is_pair)
                  for i in range(len(slots)))
    return params, slots


def _computing_in(precision: str):
    """The function that casts (params, X) to the compute dtype of `precision`: bfloat16 for
    bf16 (the float32 parameters stay the ones differentiated), nothing for fp32."""
    if precision != "bf16":
        return lambda params, X: (params, X)
    return lambda params, X: (jax.tree_util.tree_map(lambda w: w.astype(jnp.bfloat16), params),
                              X.astype(jnp.bfloat16))


@functools.lru_cache(maxsize=16)
def programs(spec: ResNetSpec, optimizer: str, precision: str = "fp32") -> tuple:
    """The programs of a network, optimiser and precision: inference, a training-mode forward
    pass, the gradient and one optimiser step (all jitted), and the step's function itself
    (for an engine's shard_map). Shared by every adapter of the same spec, optimiser and
    precision, so that a second adapter reuses the first one's compiled programs (JAX keys its
    cache by function, batch shape, dtype and the float64 flag)."""
    eval_net, train_net = ResNet(spec, training=False), ResNet(spec, training=True)
    update = sgd if optimizer == "sgd" else adam
    cast = _computing_in(precision)

    def infer(params, stats, X):
        params, X = cast(params, X)
        logits = eval_net.apply({"params": params, "batch_stats": stats}, X)
        return logits if precision == "fp32" else logits.astype(jnp.float32)

    def forward(params, stats, X):
        params, X = cast(params, X)
        logits, new = train_net.apply({"params": params, "batch_stats": stats}, X,
                                      mutable=["batch_stats"])
        return logits.astype(jnp.float32) if precision != "fp32" else logits, new

    def loss_fn(params, stats, X, Y):
        logits, new = forward(params, stats, X)
        return cross_entropy(logits, Y), (logits, new["batch_stats"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, stats, slots, X, Y, h):
        (loss, (logits, stats)), grads = grad_fn(params, stats, X, Y)
        params, slots = _update(update, params, grads, slots, h)
        return params, stats, slots, loss, jnp.sum(jnp.argmax(logits, axis=1) == Y)

    return jax.jit(infer), jax.jit(forward), jax.jit(grad_fn), jax.jit(step), (grad_fn, update)


def replicated_step(spec: ResNetSpec, optimizer: str, precision: str, mesh, axis: str):
    """The data-parallel training step over `mesh`: every worker's gradient of its share's mean
    loss, averaged over `axis` (lax.pmean, an all-reduce), the running statistics averaged too,
    and the same update everywhere. Parameters, statistics and slots are replicated; the batch,
    the loss and the correct count are sharded (one per worker)."""
    grad_fn, update = programs(spec, optimizer, precision)[4]

    def local(params, stats, slots, X, Y, h):
        (loss, (logits, stats)), grads = grad_fn(params, stats, X, Y)
        grads, stats = lax.pmean((grads, stats), axis)
        params, slots = _update(update, params, grads, slots, h)
        correct = jnp.sum(jnp.argmax(logits, axis=1) == Y)
        return params, stats, slots, loss[None], correct[None]

    same, split = P(), P(axis)
    return jax.jit(shard_map(local, mesh, in_specs=(same, same, same, split, split, same),
                             out_specs=(same, same, same, split, split)))


class Adapter:
    framework = "jax"

    def __init__(self, spec: ResNetSpec, weights: Weights, *, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                 device: str | Device = "auto", engine: Engine | None = None):
        self.spec = spec
        self.opt = optimizer or OptimizerConfig(lr=lr)  # checked before anything is built
        self.dtype = check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        if self.precision == "fp16":
            raise InputError("precision: expected fp32 or bf16 in JAX, got 'fp16' (float16 "
                             "training needs loss scaling, which the JAX adapter does not do; "
                             "bf16 needs none)")
        self.engine = engine
        self.device = select(device)
        self._device = engine.device if engine is not None else native(self.device)
        self.compiled = bool(compile)  # every step is jitted anyway (see the module's doc)
        self.channels_last = True  # NHWC always (see the module's doc)
        self.trainable = [n for n in canonical_layout(spec) if not n.endswith(_STATS)]
        self.model = Network(spec, {})
        self.set_weights(weights)
        self.t = 0  # optimiser steps taken
        with self._x64():
            self.slots = self._zero_slots()
        self._eval, self._train_forward, self._grad, self._step, _ = programs(
            spec, self.opt.name, self.precision)
        if engine is not None:
            from resnet_jax.distributed import WORKERS
            self._step = self._on_engine(replicated_step(spec, self.opt.name, self.precision,
                                                         engine.mesh, WORKERS))

    def _x64(self):
        return enable_x64() if self.dtype == "float64" else contextlib.nullcontext()

    def _on_engine(self, step):
        """`step` (replicated_step's) called with this worker's arrays: they become its
        blocks of global arrays (the batch, the loss and the count sharded, the rest
        replicated), and its own blocks of the results come back."""
        mesh, n = self.engine.mesh, self.engine.workers

        def whole(a, split: bool):
            shape = (n * a.shape[0], *a.shape[1:]) if split else a.shape
            sharding = NamedSharding(mesh, P(mesh.axis_names[0]) if split else P())
            return jax.make_array_from_single_device_arrays(shape, sharding, [a])

        def mine(tree):
            return jax.tree_util.tree_map(lambda a: a.addressable_data(0), tree)

        def run(params, stats, slots, X, Y, h):
            same = lambda tree: jax.tree_util.tree_map(lambda a: whole(a, False), tree)  # noqa: E731
            out = step(same(params), same(stats), same(slots), whole(X, True), whole(Y, True),
                       same(h))
            params, stats, slots, loss, correct = mine(out)
            return params, stats, slots, loss[0], correct[0]
        return run

    def _put(self, a: Any):
        return jax.device_put(jnp.asarray(a, self.dtype), self._device)

    def _batch(self, x: np.ndarray, training: bool):
        x = batch_as(x, self.dtype, self.spec, training)
        return self._put(np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1))))

    def _labels(self, y: np.ndarray, n: int):
        return jax.device_put(jnp.asarray(labels_as(y, n, self.spec.num_classes)), self._device)

    @property
    def params(self):
        return self.model.variables["params"]

    @property
    def stats(self):
        return self.model.variables["batch_stats"]

    def _set(self, params, stats) -> None:
        self.model.variables = {"params": params, "batch_stats": stats}

    @_in_dtype
    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Forward pass. training=True normalises with batch statistics and updates the running
        ones, as a training step does; False uses the running statistics."""
        X = self._batch(x, training)
        if not training:
            return np.asarray(self._eval(self.params, self.stats, X))
        out, new = self._train_forward(self.params, self.stats, X)
        self._set(self.params, new["batch_stats"])
        return np.asarray(out)

    eval_step = logits

    def features(self, x: np.ndarray, parts: Sequence[str] | None = None,
                 training: bool = False) -> dict[str, np.ndarray]:
        """Each part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
        batch, in one pass, as NCHW NumPy (the head's: logits); without `parts`, every part's.
        Inference mode; training=True: batch statistics, and the running ones move."""
        out = features(self.model, self._batch(x, training), parts, training=training)
        return {name: (np.transpose(y, (0, 3, 1, 2)) if y.ndim == 4 else y).astype(np.float32)
                for name, y in ((name, np.asarray(y)) for name, y in out.items())}

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map (NCHW) before pooling (resnet_jax.model.forward_features)."""
        y = ResNet(self.spec, training=False).apply(
            {"params": self.params, "batch_stats": self.stats}, self._batch(x, False),
            method=ResNet.forward_features)
        return np.transpose(np.asarray(y), (0, 3, 1, 2)).astype(np.float32)

    def _hyper(self) -> dict:
        """The step's hyperparameters as scalars of the compute dtype; Adam's bias corrections
        for step self.t, in double on the host, as PyTorch computes them."""
        o, lr = self.opt, float(np.float32(self.opt.lr))
        if o.name == "sgd":
            h = dict(lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            (b1, b2), t = o.betas, self.t
            h = dict(weight_decay=o.weight_decay, one_minus_b1=1 - b1, b2=b2,
                     one_minus_b2=1 - b2, eps=o.eps, step_size=lr / (1 - b1 ** t),
                     bc2_sqrt=(1 - b2 ** t) ** 0.5)
        return {k: self._put(v) for k, v in h.items()}

    @_in_dtype
    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
        """Mean cross-entropy in train mode and its gradient for every trainable canonical name
        (in the compute dtype); the running statistics move, as in a training forward pass."""
        X = self._batch(x, True)
        (loss, (_, stats)), grads = self._grad(self.params, self.stats, X,
                                               self._labels(y, len(x)))
        self._set(self.params, stats)
        flat = traverse_util.flatten_dict(grads)
        return float(loss), {n: np.array(to_canonical_layout(np.asarray(flat[flax_path(n)[1:]])))
                             for n in self.trainable}

    @_in_dtype
    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; returns the batch's mean loss and correct predictions, both
        from the forward pass before the step (as d2l's train_ch6 counts them)."""
        X = self._batch(x, True)
        Y = self._labels(y, len(x))
        self.t += 1
        params, stats, self.slots, loss, correct = self._step(self.params, self.stats,
                                                              self.slots, X, Y, self._hyper())
        self._set(params, stats)
        return float(loss), int(correct)

    @_in_dtype
    def get_weights(self) -> Weights:
        return to_canonical(self.model)

    @_in_dtype
    def set_weights(self, weights: Weights) -> None:
        check_weights(self.spec, weights)
        flat = {flax_path(n): self._put(to_flax_layout(np.asarray(weights[n], np.float32)))
                for n in canonical_layout(self.spec)}
        self.model.variables = traverse_util.unflatten_dict(flat)

    def _zero_slots(self) -> tuple:
        return tuple(jax.tree_util.tree_map(jnp.zeros_like, self.params)
                     for _ in _SLOTS[self.opt.name])

    @_in_dtype
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's slots keyed `<canonical name>.<slot>`, PyTorch's names
        (momentum_buffer; exp_avg, exp_avg_sq and step), in the canonical layout, float32. As in
        PyTorch, SGD without momentum keeps no buffer (the step never reads it)."""
        out = {}
        for slot, tree in zip(_SLOTS[self.opt.name], self.slots):
            if slot == "momentum_buffer" and not self.opt.momentum:
                continue
            flat = traverse_util.flatten_dict(tree)
            for n in self.trainable:
                out[f"{n}.{slot}"] = np.array(to_canonical_layout(
                    np.asarray(flat[flax_path(n)[1:]])), np.float32)
        if self.opt.name == "adam":
            out.update({f"{n}.step": np.asarray(self.t, np.float32) for n in self.trainable})
        return out

    @_in_dtype
    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        slots = []
        for slot, tree in zip(_SLOTS[self.opt.name], self.slots):
            flat = traverse_util.flatten_dict(tree)
            for n in self.trainable:
                if f"{n}.{slot}" in state:
                    flat[flax_path(n)[1:]] = self._put(to_flax_layout(
                        np.asarray(state[f"{n}.{slot}"])))
            slots.append(traverse_util.unflatten_dict(flat))
        self.slots = tuple(slots)
        steps = [v for k, v in state.items() if k.endswith(".step")]
        if steps:
            self.t = int(np.asarray(steps[0]).item())
