"""ResNet built from a `common` spec in PyTorch, with parameter counts read from torch itself."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from common.core.checks import check_batch, check_geometry, feature_parts
from common.core.init import build_spec, init_weights, new_head
from common.core.oracle import ParamCounts
from common.core.spec import ResNetSpec
from resnet_torch.blocks import Bottleneck, PreActBottleneck, PreActResidual, Residual
from resnet_torch.weights import from_canonical, to_canonical

BLOCKS = {("basic", False): Residual, ("bottleneck", False): Bottleneck,
          ("basic", True): PreActResidual, ("bottleneck", True): PreActBottleneck}


class ResNet(nn.Sequential):
    """stem (d2l's b1), stage1..stageN (b2..b5), head: named parts, so that parameter names
    read `stage2.0.conv1.weight` and not `3.0.conv1.weight`."""

    def __init__(self, spec: ResNetSpec):
        bn = dict(eps=spec.bn.eps, momentum=spec.bn.momentum)
        st = spec.stem
        stem = OrderedDict()
        if spec.input_bn:  # Gluon v2: the raw input normalised, no gamma or beta
            stem["input_bn"] = nn.BatchNorm2d(spec.in_channels, affine=False, **bn)
        stem["conv"] = nn.Conv2d(spec.in_channels, st.channels, kernel_size=st.kernel_size,
                                 stride=st.stride, padding=st.padding, bias=spec.has_bias("stem"))
        if st.norm:
            stem |= dict(bn=nn.BatchNorm2d(st.channels, **bn), relu=nn.ReLU())
        if st.pool and st.pool_zeros:  # Keras's ResNetV2: zeros around a map that may be < 0
            stem["pool"] = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(kernel_size=3, stride=2))
        elif st.pool:
            stem["pool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        parts = OrderedDict(stem=nn.Sequential(stem))
        channels, block = st.channels, BLOCKS[spec.block, spec.preact]
        for i, stage in enumerate(spec.stages, start=1):
            blocks = []
            for j in range(stage.blocks):
                first = j == 0
                blocks.append(block(channels, stage.channels,
                                    use_1x1conv=first and stage.project and spec.shortcut == "conv",
                                    strides=spec.block_stride(stage, j),
                                    **spec.block_kwargs(stage)))
                channels = stage.channels
            parts[f"stage{i}"] = nn.Sequential(*blocks)
        head = OrderedDict()
        if spec.preact:  # v2 blocks end un-normalised: one BN and ReLU before pooling
            head |= dict(bn=nn.BatchNorm2d(channels, **bn), relu=nn.ReLU())
        if spec.pooling is not None:  # None: headless, the map itself (an empty Sequential)
            pool = nn.AdaptiveAvgPool2d if spec.pooling == "avg" else nn.AdaptiveMaxPool2d
            head |= dict(pool=pool((1, 1)), flatten=nn.Flatten())
        if spec.num_classes:  # 0: headless, the pooled features are the output
            head["fc"] = nn.Linear(channels, spec.num_classes)
        parts["head"] = nn.Sequential(head)
        super().__init__(parts)
        self.spec = spec

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # checked on the batch, not traced into a graph
            check_batch(tuple(X.shape), str(X.dtype).replace("torch.", ""),
                        X.is_floating_point(), self.spec.in_channels, "NCHW")
            check_geometry(self.spec, tuple(X.shape), "NCHW", self.training)
        return super().forward(X)


def build(name_or_spec: str | ResNetSpec = "d2l_resnet18", *, init: str = "common",
          seed: int = 0, **overrides) -> ResNet:
    """The network of a preset name or spec. `init="common"` loads the seeded NumPy
    initialisation shared by all four frameworks; `init="framework"` keeps PyTorch's own,
    drawn from a generator seeded with `seed` (PyTorch's global one is left as it was)."""
    spec = build_spec(name_or_spec, init, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet(spec)
    if init == "common":
        from_canonical(model, init_weights(spec, seed))
    return model


def resnet18(num_classes: int = 10, in_channels: int = 1, **kwargs) -> ResNet:
    """d2l's ResNet-18 (conv biases on; 1 channel and 10 classes by default)."""
    return build("d2l_resnet18", num_classes=num_classes, in_channels=in_channels, **kwargs)


def param_counts(module: nn.Module) -> ParamCounts:
    """Trainable parameters and BatchNorm running statistics, read from torch.
    `num_batches_tracked` is bookkeeping, not a parameter."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in module.named_buffers()
                if not name.endswith("num_batches_tracked"))
    return ParamCounts(trainable, stats)


def part_param_counts(model: ResNet) -> dict[str, ParamCounts]:
    """Parameter counts per part: stem, stage1..stageN, head."""
    return {name: param_counts(part) for name, part in model.named_children()}


def part_shapes(model: ResNet, X: np.ndarray | torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (NCHW) after each part for the batch X, in eval mode (BatchNorm statistics
    are not touched)."""
    X = torch.as_tensor(X)
    check_batch(tuple(X.shape), str(X.dtype), X.is_floating_point(), model.spec.in_channels)
    was_training = model.training
    model.eval()
    shapes = {}
    with torch.no_grad():
        for name, part in model.named_children():
            X = part(X)
            shapes[name] = tuple(X.shape)
    model.train(was_training)
    return shapes


def _mode(model: ResNet, training: bool = False):
    """A context in which the model runs in train or eval mode (its own restored afterwards)."""
    import contextlib

    @contextlib.contextmanager
    def mode():
        was_training = model.training
        model.train(training)
        try:
            yield
        finally:
            model.train(was_training)
    return mode()


def features(model: ResNet, X: torch.Tensor, parts: Sequence[str] | None = None, *,
             training: bool = False) -> dict[str, torch.Tensor]:
    """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0") for the
    NCHW batch X, in one pass, in inference mode (running statistics; training=True: batch
    statistics, and the running ones move) with gradients tracked as usual; without `parts`,
    every part's (common.core.checks.feature_parts)."""
    wanted, out = feature_parts(model.spec, parts), {}
    with _mode(model, training):
        for name, part in model.named_children():
            if any(w.startswith(name + ".") for w in wanted):  # block by block
                for j, block in enumerate(part):
                    X = out[f"{name}.{j}"] = block(X)
            else:
                X = part(X)
            out[name] = X
            if all(w in out for w in wanted):
                break
    return {name: out[name] for name in wanted}


def forward_features(model: ResNet, X: torch.Tensor) -> torch.Tensor:
    """The last feature map (NCHW) before pooling, in inference mode: the last stage's output,
    or for pre-activation nets after the head's final BN-ReLU (timm's forward_features)."""
    with _mode(model):
        for name, part in model.named_children():
            if name == "head":
                for key in ("bn", "relu"):
                    if hasattr(part, key):
                        X = getattr(part, key)(X)
                return X
            X = part(X)
    return X


def reset_classifier(model: ResNet, num_classes: int, *, seed: int = 0) -> ResNet:
    """A network with the weights of `model` and a new `num_classes`-class head (0: headless,
    pooled features out), initialised as common's init of that spec with `seed` (what train's
    --new-head does); `model` is left as it was."""
    spec, weights = new_head(model.spec, to_canonical(model), num_classes, seed)
    with torch.random.fork_rng(devices=[]):
        new = ResNet(spec)
    p = next(model.parameters())
    return from_canonical(new, weights).to(device=p.device, dtype=p.dtype).train(model.training)


def set_threads(n: int) -> None:
    """Use n CPU threads for PyTorch's operators."""
    torch.set_num_threads(n)


def get_threads() -> int:
    """The CPU threads PyTorch's operators use."""
    return torch.get_num_threads()
