"""ResNet built from a `common` spec in MXNet Gluon, with parameter counts read from Gluon itself.

MXNet 1.x quirk, written once here: BatchNorm folds the batch statistics into its running ones
in the *backward* pass, not the forward one; a forward pass in train mode alone leaves them as
they were. The adapter runs a backward pass where a training-mode forward must update them.

Works in both of MXNet's modes (resnet_mx.modes): a model built after `npx.set_np()` has
mx.np parameters and takes and returns mx.np arrays; one built without it, mx.nd ones.
"""
from __future__ import annotations

import os
from typing import Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from common.core.errors import Error
from common.core.checks import check_batch, check_geometry, feature_parts
from common.core.init import build_spec, init_weights, new_head
from common.core.oracle import ParamCounts
from common.core.spec import ResNetSpec
from resnet_mx.blocks import Bottleneck, PreActBottleneck, PreActResidual, Residual
from resnet_mx.modes import array, numpy_mode
from resnet_mx.weights import from_canonical, to_canonical

_LOADED_THREADS = os.environ.get("OMP_NUM_THREADS")  # what MXNet read when it loaded


BLOCKS = {("basic", False): Residual, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


def _zero_padded_max_pool(F, X):
    """3x3/2 max-pool over X padded with one ring of zeros (Keras's ResNetV2 stem), in the
    operators of the mode in force: Gluon's MaxPool2D would pad with -inf."""
    if numpy_mode():
        return F.npx.pooling(F.np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant"),
                             kernel=(3, 3), stride=(2, 2), pool_type="max")
    return F.Pooling(F.pad(X, mode="constant", pad_width=(0, 0, 0, 0, 1, 1, 1, 1)),
                     kernel=(3, 3), stride=(2, 2), pool_type="max")


def _named_sequence(**layers: nn.HybridBlock) -> nn.HybridSequential:
    """A HybridSequential whose children are named (stem.conv, head.fc), not numbered."""
    seq = nn.HybridSequential()
    for name, layer in layers.items():
        setattr(seq, name, layer)  # Gluon registers an attribute block as a child of that name
    return seq


class ResNet(nn.HybridBlock):
    """stem (d2l's b1), stage1..stageN (b2..b5), head: named parts, so that the model reads
    `model.stage2[0].conv1`. Takes NCHW batches. Every layer is told its input channels, so no
    parameter is deferred to the first batch."""

    def __init__(self, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        bn = dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)  # Gluon weights the old value
        st = spec.stem
        with self.name_scope():
            stem = {}
            if spec.input_bn:  # the model zoo's v2: the raw input normalised, no gamma or beta
                stem["input_bn"] = nn.BatchNorm(in_channels=spec.in_channels, center=False,
                                                scale=False, **bn)
            stem["conv"] = nn.Conv2D(st.channels, st.kernel_size, strides=st.stride,
                                     padding=st.padding, use_bias=spec.has_bias("stem"),
                                     in_channels=spec.in_channels)
            if st.norm:
                stem |= dict(bn=nn.BatchNorm(in_channels=st.channels, **bn),
                             relu=nn.Activation("relu"))
            if st.pool and st.pool_zeros:  # Keras's ResNetV2: zeros around a map that may be < 0
                stem["pool"] = nn.HybridLambda(_zero_padded_max_pool)
            elif st.pool:  # Gluon's max-pool pads with -inf, as PyTorch's
                stem["pool"] = nn.MaxPool2D(pool_size=3, strides=2, padding=1)
            self.stem = _named_sequence(**stem)
            channels, block = st.channels, BLOCKS[spec.block, spec.preact]
            for i, stage in enumerate(spec.stages, start=1):
                blocks = nn.HybridSequential()
                for j in range(stage.blocks):
                    first = j == 0
                    project = first and stage.project and spec.shortcut == "conv"
                    blocks.add(block(stage.channels, use_1x1conv=project,
                                     strides=spec.block_stride(stage, j), in_channels=channels,
                                     **spec.block_kwargs(stage, momentum_of_old=True)))
                    channels = stage.channels
                setattr(self, f"stage{i}", blocks)
            head = {}
            if spec.preact:  # v2 blocks end un-normalised: one BN and ReLU before pooling
                head |= dict(bn=nn.BatchNorm(in_channels=channels, **bn),
                             relu=nn.Activation("relu"))
            if spec.pooling is not None:  # None: headless, the map itself (empty sequence)
                pool = nn.GlobalAvgPool2D if spec.pooling == "avg" else nn.GlobalMaxPool2D
                head["pool"] = pool()  # (N, C, 1, 1): Dense flattens, a headless net does
                if not spec.num_classes:
                    head["flatten"] = nn.Flatten()
            if spec.num_classes:  # 0: headless, the pooled features are the output
                head["fc"] = nn.Dense(spec.num_classes, in_units=channels)
            self.head = _named_sequence(**head)

    def forward(self, X, *args):
        # Checked here, before Gluon's cached graph (after hybridize()) sees the batch.
        if isinstance(X, mx.nd.NDArray):  # mx.np.ndarray is one too
            dtype = np.dtype(X.dtype)
            check_batch(X.shape, dtype.name, np.issubdtype(dtype, np.floating),
                        self.spec.in_channels, "NCHW")
            check_geometry(self.spec, X.shape, "NCHW", autograd.is_training())
        return super().forward(X, *args)

    def hybrid_forward(self, F, X):
        for name in self.spec.part_names():
            X = getattr(self, name)(X)
        return X


def build(name_or_spec: str | ResNetSpec = "d2l_resnet18", *, init: str = "common",
          seed: int = 0, **overrides) -> ResNet:
    """The network of a preset name or spec, initialised. `init="common"` loads the seeded
    NumPy initialisation shared by all four frameworks; `init="framework"` keeps Gluon's own,
    Xavier as d2l's train_ch6 (BatchNorm: gamma 1, beta 0, running mean 0, running var 1),
    drawn after `mx.random.seed(seed)`: MXNet's global generator, which it cannot save and
    restore (d2l seeds it the same way)."""
    spec = build_spec(name_or_spec, init, **overrides)
    model = ResNet(spec)
    if init == "framework":
        mx.random.seed(seed)
    model.initialize(mx.init.Xavier())
    if init == "common":
        from_canonical(model, init_weights(spec, seed))
    return model


def to_load(spec: ResNetSpec) -> ResNet:
    """The network with placeholder values (zeros; BatchNorm's own constants), for weights to be
    loaded into: unlike `build(init="framework")`, it leaves MXNet's generator alone."""
    model = ResNet(spec)
    model.initialize(mx.init.Zero())
    return model


def resnet18(num_classes: int = 10, in_channels: int = 1, **kwargs) -> ResNet:
    """d2l's ResNet-18 (conv biases on; 1 channel and 10 classes by default)."""
    return build("d2l_resnet18", num_classes=num_classes, in_channels=in_channels, **kwargs)


def param_counts(block: nn.Block) -> ParamCounts:
    """Trainable parameters and BatchNorm running statistics (Gluon's grad_req 'null'),
    read from Gluon's own parameters."""
    trainable = stats = 0
    for name, p in block.collect_params().items():
        if p.grad_req == "null" and name.endswith(("gamma", "beta")):
            continue  # BatchNorm(scale=False, center=False) keeps a fixed gamma 1 and beta 0
        if p.shape is None or any(d <= 0 for d in p.shape):
            raise ValueError(f"{p.name}: expected a known shape, got {p.shape}; pass in_channels "
                             f"or run one batch through the block first")
        size = int(np.prod(p.shape))
        if p.grad_req == "null":
            stats += size
        else:
            trainable += size
    return ParamCounts(trainable, stats)


def part_param_counts(model: ResNet) -> dict[str, ParamCounts]:
    """Parameter counts per part: stem, stage1..stageN, head."""
    return {name: param_counts(getattr(model, name)) for name in model.spec.part_names()}


def part_shapes(model: ResNet, X: np.ndarray | mx.nd.NDArray) -> dict[str, tuple[int, ...]]:
    """Output shape (NCHW) after each part for the batch X (NumPy, or an MXNet array of the
    mode in force), in inference mode (BatchNorm statistics are not touched)."""
    if not isinstance(X, mx.nd.NDArray):  # mx.np.ndarray is one too
        X = array(X)
    dtype = np.dtype(X.dtype)
    check_batch(X.shape, dtype.name, np.issubdtype(dtype, np.floating), model.spec.in_channels)
    shapes = {}
    with autograd.predict_mode():
        for name in model.spec.part_names():
            X = getattr(model, name)(X)
            shapes[name] = tuple(X.shape)
    return shapes


def _as_batch(model: ResNet, X, training: bool = False):
    if not isinstance(X, mx.nd.NDArray):  # mx.np.ndarray is one too
        X = array(X)
    dtype = np.dtype(X.dtype)
    check_batch(X.shape, dtype.name, np.issubdtype(dtype, np.floating), model.spec.in_channels)
    check_geometry(model.spec, X.shape, "NCHW", training)
    return X


def features(model: ResNet, X, parts: Sequence[str] | None = None, *,
             training: bool = False) -> dict:
    """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
    NCHW batch X (NumPy, or an MXNet array of the mode in force), in one pass in inference mode
    (autograd.predict_mode: running statistics; training=True: train_mode, batch statistics);
    without `parts`, every part's (common.core.checks.feature_parts)."""
    wanted, out = feature_parts(model.spec, parts), {}
    X = _as_batch(model, X, training)
    with autograd.train_mode() if training else autograd.predict_mode():
        for name in model.spec.part_names():
            part = getattr(model, name)
            if any(w.startswith(name + ".") for w in wanted):  # block by block
                for j in range(len(part)):
                    X = out[f"{name}.{j}"] = part[j](X)
            else:
                X = part(X)
            out[name] = X
            if all(w in out for w in wanted):
                break
    return {name: out[name] for name in wanted}


def forward_features(model: ResNet, X):
    """The last feature map (NCHW) before pooling, in inference mode: the last stage's output,
    or for pre-activation nets after the head's final BN-ReLU (timm's forward_features)."""
    X = _as_batch(model, X)
    with autograd.predict_mode():
        for name in model.spec.part_names()[:-1]:
            X = getattr(model, name)(X)
        for key in ("bn", "relu"):
            if hasattr(model.head, key):
                X = getattr(model.head, key)(X)
    return X


def reset_classifier(model: ResNet, num_classes: int, *, seed: int = 0) -> ResNet:
    """A network with the weights of `model` and a new `num_classes`-class head (0: headless,
    pooled features out), initialised as common's init of that spec with `seed` (what train's
    --new-head does); `model` is left as it was."""
    spec, weights = new_head(model.spec, to_canonical(model), num_classes, seed)
    return from_canonical(to_load(spec), weights)


def set_threads(n: int) -> None:
    """Check that MXNet runs n CPU threads. MXNet reads OMP_NUM_THREADS once, when it loads
    (resnet_mx/__init__.py defaults it to all cores), and ignores later requests; so any other n
    is refused rather than silently ignored."""
    if str(n) != _LOADED_THREADS:
        raise Error(f"threads: expected {_LOADED_THREADS or 'the count MXNet loaded with'} "
                         f"(MXNet reads OMP_NUM_THREADS once, when it loads), got {n}; "
                         f"set OMP_NUM_THREADS={n} in the environment before starting Python")


def get_threads() -> int:
    """The CPU threads MXNet's operators use: the OpenMP runtime's count, which MXNet takes
    from OMP_NUM_THREADS when it loads."""
    import ctypes
    return ctypes.CDLL("libgomp.so.1").omp_get_max_threads()
