"""A plain PyTorch ResNet and training step: the yardstick that `resnet-bench` holds the project to.

Written as a PyTorch user writes d2l's ResNet, straight from torch.nn: convolutions with
their own padding, BatchNorm2d, an SGD step, random tensors made in NCHW. It imports nothing
from this project; it reads the values of a spec (stem, stages, block kind, ...) and nothing else.
The bench runs it interleaved with the project's `Adapter` step on the same network, batch and
threads, so that any difference is the cost of the project's code.

On a GPU (`device="gpu:N"`) it is d2l's train_ch6 step: the network on the device and the batch
copied to it from ordinary host memory in every step (`X, y = X.to(device), y.to(device)`, as
d2l does with each batch of its loader), so that it pays the copy the project's adapter pays
for its NumPy batch; fp16 is the standard mixed-precision recipe (autocast, GradScaler).
"""
import re
import time

import torch
from torch import nn
from torch.nn import functional as F

VERSION = torch.__version__
# resnet-bench --tuned: PyTorch's documented speed options, as make_step's keywords.
SPEED_OPTIONS = {"channels_last": {"channels_last": True}, "torch.compile": {"compile": True},
                 "bf16 autocast": {"precision": "bf16"},
                 "oneDNN graph fusion": {"onednn_fusion": True}}
PROCESS_OPTIONS = {}  # --tuned: none read at import that need a process each
_CUDA_USED = set()  # the CUDA devices that sync() waits for


def torch_device(device) -> torch.device:
    """A torch.device from "cpu", "gpu", "gpu:N" (or a torch.device, or anything whose str() is
    one of those: a common.core.devices.Device)."""
    if isinstance(device, torch.device):
        return device
    kind, _, index = str(device).partition(":")
    if kind == "gpu":
        return torch.device("cuda", int(index or 0))
    return torch.device(str(device))


class Block(nn.Module):
    """One residual block of any kind the spec can ask for: basic or bottleneck, v1 or
    pre-activation, 1x1 projection (with or without BatchNorm) or zero-padded shortcut."""
    def __init__(self, spec, c_in, c_out, stride, project, width):
        super().__init__()
        if spec.block == "basic":
            convs = [(c_in, c_out, 3, stride, 1), (c_out, c_out, 3, 1, 1)]
        else:
            s1, s2 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
            convs = [(c_in, width, 1, s1, 1), (width, width, 3, s2, spec.groups),
                     (width, c_out, 1, 1, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, padding=k // 2, groups=g,
                                             bias=spec.has_bias(f"conv{n}"))
                                   for n, (i, o, k, s, g) in enumerate(convs, start=1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(i if spec.preact else o) for i, o, *_ in convs)
        self.proj, self.pad, self.preact, self.stride = None, 0, spec.preact, stride
        if project and spec.shortcut == "conv":
            proj = [nn.Conv2d(c_in, c_out, 1, stride,
                              bias=spec.has_bias(f"conv{len(convs) + 1}"))]
            self.proj = nn.Sequential(*proj, *([nn.BatchNorm2d(c_out)] if spec.shortcut_bn else []))
        elif project:
            self.pad = c_out - c_in

    def forward(self, X):
        if self.preact:
            Y = F.relu(self.bns[0](X))
            if self.proj is not None:
                X = self.proj(Y)
            for i, conv in enumerate(self.convs):
                Y = conv(Y if i == 0 else F.relu(self.bns[i](Y)))
            return Y + X
        Y = X
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            Y = bn(conv(Y))
            if i < len(self.convs) - 1:
                Y = F.relu(Y)
        if self.proj is not None:
            X = self.proj(X)
        elif self.pad:
            s, p = self.stride, self.pad
            X = F.pad(X[:, :, ::s, ::s], (0, 0, 0, 0, p // 2, p - p // 2))
        return F.relu(Y + X)


def network(spec) -> nn.Sequential:
    """The spec's network as one nn.Sequential, with PyTorch's own initialisation."""
    st = spec.stem
    layers = [nn.Conv2d(spec.in_channels, st.channels, st.kernel_size, st.stride,
                        padding=st.kernel_size // 2, bias=spec.has_bias("stem")),
              nn.BatchNorm2d(st.channels), nn.ReLU()]
    if st.pool:
        layers.append(nn.MaxPool2d(3, 2, padding=1))
    c = st.channels
    for stage in spec.stages:
        for j in range(stage.blocks):
            layers.append(Block(spec, c, stage.channels, stage.stride if j == 0 else 1,
                                j == 0 and stage.project, spec.mid_channels(stage)))
            c = stage.channels
    if spec.preact:
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(c, spec.num_classes)]
    return nn.Sequential(*layers)


def count_params(net: nn.Module) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of the reference network."""
    stats = sum(b.numel() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked"))
    return sum(p.numel() for p in net.parameters()), stats


def make_step(spec, phase, batch_size, input_size, precision="fp32", compile=False, lr=0.05,
              device="cpu", channels_last=False, onednn_fusion=False):
    """A no-argument function running one training step (forward, loss, backward, SGD step;
    returns the loss and the correct count, as d2l's train_ch6 adds them up) or one inference
    step (returns the logits), on a random batch made once on the host, in NCHW, and copied to
    `device` in every step (on the CPU that copy is the tensor itself). onednn_fusion: the
    inference step as a frozen TorchScript trace run by oneDNN Graph's fuser
    (`torch.jit.enable_onednn_fusion`, process-wide; it fuses TorchScript graphs only, so the
    other configurations are untouched): inference only, and not with torch.compile."""
    torch.manual_seed(0)
    dev = torch_device(device)
    net = network(spec).to(dev)
    X = torch.rand(batch_size, spec.in_channels, input_size, input_size)
    if channels_last:  # NHWC in memory, NCHW in shape: oneDNN's and cuDNN's preferred layout
        net, X = net.to(memory_format=torch.channels_last), X.contiguous(
            memory_format=torch.channels_last)
    run = torch.compile(net) if compile else net
    if onednn_fusion:
        if phase != "infer" or compile:
            raise NotImplementedError("oneDNN graph fusion: expected inference without "
                                      f"torch.compile (a TorchScript graph), got {phase}"
                                      f"{' with torch.compile' if compile else ''}")
        torch.jit.enable_onednn_fusion(True)
        with torch.no_grad():
            run = torch.jit.freeze(torch.jit.trace(net.eval(), X.to(dev)))
    y = torch.randint(0, spec.num_classes, (batch_size,))
    if dev.type == "cuda":
        _CUDA_USED.add(dev)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(dev.type, amp or torch.bfloat16, enabled=amp is not None)
    if phase == "infer":
        net.eval()

        def infer():
            with torch.no_grad(), autocast:
                return run(X.to(dev)).float().cpu().numpy()
        return infer
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    net.train()

    def train():
        Xd, yd = X.to(dev), y.to(dev)
        with autocast:
            y_hat = run(Xd)
            l = loss(y_hat, yd)
        optimizer.zero_grad()
        if scaler is None:
            l.backward()
            optimizer.step()
        else:
            scaler.scale(l).backward()
            scaler.step(optimizer)
            scaler.update()
        return l.item(), int((y_hat.argmax(1) == yd).sum())
    return train


def sync():
    """Wait for the CUDA devices that make_step used (on the CPU, PyTorch runs the operators
    before it returns: nothing to wait for)."""
    for dev in _CUDA_USED:
        torch.cuda.synchronize(dev)


def matmul_gflops(n=1024, seconds=0.5, device="cpu"):
    """The best float32 matrix-multiply rate (GFLOP/s) of a short probe: an n x n product,
    repeated for about `seconds` (on a GPU, each product waited for)."""
    dev = torch_device(device)
    wait = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
    a @ b
    wait()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        wait()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def kernel_libraries() -> dict[str, str]:
    """The libraries under PyTorch's operators, as its build reports them (torch.__config__)."""
    shown = torch.__config__.show()
    onednn = re.search(r"(?:MKL-DNN|oneDNN) (v[\d.]+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", shown)
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    libs = {"oneDNN": (f"{onednn.group(1)}, {'on' if torch.backends.mkldnn.enabled else 'off'}"
                       if onednn else "not built in"),
            "BLAS": f"MKL {mkl.group(1)}" if mkl else (blas.group(1) if blas else "unknown"),
            "CPU capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        libs["CUDA"] = str(torch.version.cuda)
        libs["cuDNN"] = str(torch.backends.cudnn.version())
    return libs


def call_mode(compile=False) -> str:
    """Eager: each operator dispatched from Python in every call; with compile, one call into
    torch.compile's graph (Inductor)."""
    return "graph (torch.compile, Inductor)" if compile else "eager (operator by operator)"
