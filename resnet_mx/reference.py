"""A plain Gluon ResNet and training step: the yardstick that `resnet-bench` holds the project to.

Written as a Gluon user writes d2l's ResNet, straight from mxnet.gluon: HybridBlocks with their
own padding, hybridized, a Trainer step, random NDArrays made in NCHW. It imports nothing from
this project; it reads the values of a spec (stem, stages, block kind, ...) and nothing else.
The bench runs it interleaved with the project's `Adapter` step on the same network, batch and
threads, so that any difference is the cost of the project's code.
"""
import ctypes
import os
import time

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.contrib import amp
from mxnet.contrib.amp.loss_scaler import LossScaler
from mxnet.gluon import nn

VERSION = mx.__version__
# resnet-bench --tuned: Gluon's documented speed options, as make_step's keywords.
SPEED_OPTIONS = {"static_alloc/static_shape": {"compile": True},
                 "bf16 (amp)": {"precision": "bf16"}}
PROCESS_OPTIONS = {}  # --tuned: none read at import that need a process each


class Block(nn.HybridBlock):
    """One residual block of any kind the spec can ask for: basic or bottleneck, v1 or
    pre-activation, 1x1 projection (with or without BatchNorm) or zero-padded shortcut."""
    def __init__(self, spec, c_in, c_out, stride, project, width, **kwargs):
        super().__init__(**kwargs)
        if spec.block == "basic":
            convs = [(c_in, c_out, 3, stride, 1), (c_out, c_out, 3, 1, 1)]
        else:
            s1, s2 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
            convs = [(c_in, width, 1, s1, 1), (width, width, 3, s2, spec.groups),
                     (width, c_out, 1, 1, 1)]
        bn = dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)
        self.preact, self.stride, self.pad, self.c_in = spec.preact, stride, 0, c_in
        with self.name_scope():
            self.convs = nn.HybridSequential()
            self.bns = nn.HybridSequential()
            for n, (i, o, k, s, g) in enumerate(convs, start=1):
                self.convs.add(nn.Conv2D(o, k, s, padding=k // 2, groups=g,
                                         use_bias=spec.has_bias(f"conv{n}"), in_channels=i))
                self.bns.add(nn.BatchNorm(in_channels=i if spec.preact else o, **bn))
            self.proj = None
            if project and spec.shortcut == "conv":
                self.proj = nn.HybridSequential()
                self.proj.add(nn.Conv2D(c_out, 1, stride,
                                        use_bias=spec.has_bias(f"conv{len(convs) + 1}"),
                                        in_channels=c_in))
                if spec.shortcut_bn:
                    self.proj.add(nn.BatchNorm(in_channels=c_out, **bn))
            elif project:
                self.pad = c_out - c_in

    def hybrid_forward(self, F, X):
        if self.preact:
            Y = F.relu(self.bns[0](X))
            if self.proj is not None:
                X = self.proj(Y)
            for i in range(len(self.convs)):
                Y = self.convs[i](Y if i == 0 else F.relu(self.bns[i](Y)))
            return Y + X
        Y = X
        for i in range(len(self.convs)):
            Y = self.bns[i](self.convs[i](Y))
            if i < len(self.convs) - 1:
                Y = F.relu(Y)
        if self.proj is not None:
            X = self.proj(X)
        elif self.pad:
            s, p = self.stride, self.pad
            X = F.slice(X, begin=(None,) * 4, end=(None,) * 4, step=(1, 1, s, s))
            X = F.concat(F.zeros_like(F.slice_axis(X, axis=1, begin=0, end=p // 2)), X,
                         F.zeros_like(F.slice_axis(X, axis=1, begin=0, end=p - p // 2)), dim=1)
        return F.relu(Y + X)


def context(device="cpu"):
    """MXNet's context for a device written as "cpu" or "gpu:N" (what str() of the project's
    resolved device gives), or a context itself."""
    if isinstance(device, mx.Context):
        return device
    kind, _, index = str(device).partition(":")
    return mx.gpu(int(index or 0)) if kind == "gpu" else mx.cpu()


def network(spec, ctx=None) -> nn.HybridSequential:
    """The spec's network as one HybridSequential, initialised as d2l does (Xavier), on ctx
    (the CPU by default)."""
    st, bn = spec.stem, dict(epsilon=spec.bn.eps, momentum=1 - spec.bn.momentum)
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(st.channels, st.kernel_size, st.stride, padding=st.kernel_size // 2,
                          use_bias=spec.has_bias("stem"), in_channels=spec.in_channels),
                nn.BatchNorm(in_channels=st.channels, **bn), nn.Activation("relu"))
        if st.pool:
            net.add(nn.MaxPool2D(3, 2, padding=1))
        c = st.channels
        for stage in spec.stages:
            for j in range(stage.blocks):
                net.add(Block(spec, c, stage.channels, stage.stride if j == 0 else 1,
                              j == 0 and stage.project, spec.mid_channels(stage)))
                c = stage.channels
        if spec.preact:
            net.add(nn.BatchNorm(in_channels=c, **bn), nn.Activation("relu"))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(spec.num_classes, in_units=c))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


def count_params(net) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of the reference network."""
    sizes = [(p.grad_req == "null", p.data().size) for p in net.collect_params().values()]
    return sum(n for null, n in sizes if not null), sum(n for null, n in sizes if null)


def make_step(spec, phase, batch_size, input_size, precision="fp32", compile=False, lr=0.05,
              device="cpu", channels_last=False):
    """A no-argument function running one training step (forward, loss, backward, SGD step; returns
    the loss and the correct count, as d2l's train_ch6 adds them up) or one inference step
    (returns the logits), on a random batch made once on the device, in NCHW. bf16 and fp16
    convert the block with MXNet's AMP (fp16 also scales the loss with AMP's dynamic loss
    scaler, as amp.init_trainer would); compile=True hybridizes with static_alloc and
    static_shape. device: "cpu" or "gpu:N". channels_last changes nothing (Gluon's CPU
    convolutions take NCHW, oneDNN keeps its blocked layout inside)."""
    mx.random.seed(0)
    ctx = context(device)
    net = network(spec, ctx)
    net.hybridize(static_alloc=compile, static_shape=compile)
    X = mx.nd.random.uniform(shape=(batch_size, spec.in_channels, input_size, input_size),
                             ctx=ctx)
    target = {"bf16": "bfloat16", "fp16": "float16"}.get(precision)
    if target:  # AMP's conversion of a run Gluon block (float32 parameters kept)
        net(X)
        net = amp.convert_hybrid_block(net, target_dtype=target, ctx=ctx)
        net.hybridize(static_alloc=compile, static_shape=compile)
    y = mx.nd.random.randint(0, spec.num_classes, shape=(batch_size,), ctx=ctx).astype("float32")
    if phase == "infer":
        return lambda: net(X).asnumpy()
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr}, kvstore=None)
    if precision == "fp16":  # amp.init_trainer's work; it needs amp.init(), which is global
        trainer._amp_loss_scaler = LossScaler()
        trainer._amp_original_scale = trainer._scale

    def train():
        with autograd.record():
            y_hat = net(X)
            l = loss(y_hat, y)
            if precision == "fp16":
                with amp.scale_loss(l, trainer) as l_scaled:
                    autograd.backward(l_scaled)
        if precision != "fp16":
            l.backward()
        trainer.step(batch_size)
        return l.mean().asscalar(), int((y_hat.argmax(axis=1) == y).sum().asscalar())
    return train


def sync():
    """Wait for every pending operator: MXNet's engine is asynchronous, so a step returns
    when its loss is ready while its backward pass and update still run."""
    mx.nd.waitall()


def matmul_gflops(n=1024, seconds=0.5):
    """The best float32 matrix-multiply rate (GFLOP/s) of a short probe: an n x n product,
    repeated for about `seconds`."""
    a, b = mx.nd.random.uniform(shape=(n, n)), mx.nd.random.uniform(shape=(n, n))
    mx.nd.dot(a, b).wait_to_read()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        mx.nd.dot(a, b).wait_to_read()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def kernel_libraries() -> dict[str, str]:
    """The libraries MXNet was built with (mx.runtime.Features): oneDNN (MKLDNN), the BLAS
    (OpenBLAS's own version where it ships beside libmxnet), CUDA and cuDNN."""
    features = mx.runtime.Features()
    on = {name for name, feature in features.items() if feature.enabled}
    libs = {"oneDNN": "built in (MKLDNN; version not exposed)" if "MKLDNN" in on else "not built in"}
    blas = [name.removeprefix("BLAS_") for name in sorted(on) if name.startswith("BLAS_")]
    libs["BLAS"] = ", ".join(blas) or "none"
    path = os.path.join(os.path.dirname(mx.__file__), "libopenblas.so.0")
    if "OPEN" in blas and os.path.exists(path):
        lib = ctypes.CDLL(path)
        lib.openblas_get_config.restype = ctypes.c_char_p
        libs["BLAS"] = lib.openblas_get_config().decode()
    for name in ("CUDA", "CUDNN"):
        if name in on:
            libs[name.replace("CUDNN", "cuDNN")] = "built in"
    return libs


def call_mode(compile=False) -> str:
    """Graph: the adapter's network is a hybridized Gluon block (a cached graph); with compile,
    with static_alloc and static_shape."""
    return ("graph (hybridized, static_alloc/static_shape)" if compile
            else "graph (hybridized)")
