"""The contract between `common` and a framework package, written down as `typing.Protocol`s.

A framework package `resnet_<fw>` (registry.py names it) provides these modules, under the same
names in every package:

- the package itself (`Package`): every name of `EXPORTS` and `LAYOUT`;
- `adapter.Adapter` (`Adapter`): the model and its optimiser behind NumPy in, NumPy out;
- `devices` (`Devices`): which device the framework computes on;
- `distributed` (`Distributed`, whose `join` gives an `Engine`): data-parallel training;
- `reference` (`Reference`): the plain step that `resnet3 bench` measures the adapter against;
- `export` (`Export`), `launch` (`Launch`), `library` (`Library`): the ONNX graph, each engine's
  launch plan, and the readers of the framework's own library files.

Each member's signature is the contract (tests/test_contract.py compares them, parameter by
parameter); where the packages differ on purpose (d2l's blocks take each framework's own
arguments), the protocol names the member and says nothing of its signature. A module's
protocol writes its functions as methods, `self` standing for the module (as typing matches a
module against a Protocol). Nothing here imports a framework.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from common.core.devices import Device
from common.core.optim import OptimizerConfig
from common.core.oracle import ParamCounts
from common.core.spec import ResNetSpec
from common.core.weights import Weights

if TYPE_CHECKING:
    from common.formats.libraries import Format


class Adapter(Protocol):
    """What the training loop, compare, crosscheck, bench and the tests drive. Batches are
    NumPy NCHW, labels int, weights and gradients canonical dicts. Every argument after
    `weights` is keyword-only, and the three packages' constructors are identical."""
    framework: str  # the registry's key
    device: Device  # the resolved device the model lives on
    model: Any  # the framework's own model (its `param_counts` reads it)
    # Whether activations are channels-last in memory: PyTorch as `channels_last=` asks;
    # TensorFlow and JAX always (NHWC); MXNet never (NCHW, oneDNN's blocked layout inside).
    channels_last: bool

    def __init__(self, spec: ResNetSpec, weights: Weights, *, lr: float = 0.05,
                 optimizer: OptimizerConfig | None = None, dtype: str = "float32",
                 precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                 device: str | Device = "auto", engine: Engine | None = None) -> None: ...

    def logits(self, x: np.ndarray, training: bool = False) -> np.ndarray: ...

    def eval_step(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The logits in inference mode: what evaluation and bench's inference phase time."""

    def features(self, x: np.ndarray, parts: Sequence[str] | None = None,
                 training: bool = False) -> dict[str, np.ndarray]:
        """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0"), NCHW,
        one pass, inference mode (training=True: batch statistics); without `parts` every
        part's (common.core.checks.feature_parts)."""

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The last feature map (NCHW) before pooling: the last stage's output, or a
        pre-activation net's after the head's final BN-ReLU (timm's forward_features)."""

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]: ...

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimiser step; the batch's mean loss and its count of correct predictions."""

    def get_weights(self) -> Weights: ...

    def set_weights(self, weights: Weights) -> None: ...

    def optimizer_state(self) -> dict[str, np.ndarray]: ...

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None: ...


class Package(Protocol):
    """The package `resnet_<fw>`: importing it imports no framework; its names do, on first
    use (common.frameworks.lazy_exports). LAYOUT equals the registry record's layout."""
    LAYOUT: str  # "NCHW" or "NHWC": the layout its models take
    # d2l's blocks, in each framework's own d2l signature (they differ on purpose).
    Residual: type
    Bottleneck: type
    PreActResidual: type
    PreActBottleneck: type
    resnet_block: Callable[..., Any]
    ResNet: type
    Adapter: type[Adapter]

    def build(self, name_or_spec: str | ResNetSpec = "d2l_resnet18", *, init: str = "common",
              seed: int = 0, **overrides) -> Any: ...

    def resnet18(self, num_classes: int = 10, in_channels: int = 1, **kwargs) -> Any: ...

    def param_counts(self, module: Any) -> ParamCounts: ...

    def part_param_counts(self, model: Any) -> dict[str, ParamCounts]: ...

    def part_shapes(self, model: Any, X: Any) -> dict[str, tuple[int, ...]]:
        """Per part, its output shape in the package's LAYOUT for the batch X."""

    def set_threads(self, n: int) -> None: ...

    def get_threads(self) -> int: ...

    # Features on the framework's own model, in its LAYOUT and its own tensors: module-level
    # functions, not methods, so that one API fits every package (a Flax module holds no
    # weights; reset_classifier returns a new network in all of them). Inference mode.
    def features(self, model: Any, X: Any, parts: Sequence[str] | None = None, *,
                 training: bool = False) -> dict[str, Any]:
        """Each named part's output (stem, stage1..stageN, head, or a block: "stage2.0") in one
        pass; without `parts` every part's (timm's features_only, torchvision's
        create_feature_extractor); training=True: batch statistics, the running ones move."""

    def forward_features(self, model: Any, X: Any) -> Any:
        """The last feature map before pooling (after a pre-activation net's final BN-ReLU)."""

    def reset_classifier(self, model: Any, num_classes: int, *, seed: int = 0) -> Any:
        """A new network: `model`'s weights with a new num_classes-class head (0: headless)
        from common's init with `seed` (train's --new-head); `model` is left as it was."""

    def from_canonical(self, model: Any, weights: Weights) -> Any: ...

    def to_canonical(self, model: Any) -> Weights: ...

    def load_native(self, model: Any, path: str) -> Any: ...

    def save_native(self, model: Any, path: str) -> None: ...


class Devices(Protocol):
    """The module `devices`: a request ("auto", "cpu", "gpu", "gpu:N") resolved against the GPUs
    the framework sees; a GPU it does not see is a DeviceError, never the CPU instead."""
    NAME: str  # the framework's own name in messages: the registry record's `short`

    def visible_gpus(self) -> list[str]: ...

    def select(self, requested: str | Device = "auto") -> Device: ...

    def native(self, device: Device) -> Any:
        """The device as the framework names it (torch.device, "/GPU:0", mx.gpu(0))."""

    def set_deterministic(self) -> None:
        """The framework's determinism switches for a GPU run; process-wide."""

    def before_crosscheck(self) -> None:
        """Called by crosscheck on a GPU before any framework computes: what must be set before
        the framework loads (MXNet's determinism switches); nothing where nothing must."""


class Engine(Protocol):
    """This worker's place in a data-parallel group (what `distributed.join` returns)."""
    workers: int
    rank: int
    sync_bn: bool

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise float64 sum of `values` over the workers (a collective)."""

    def barrier(self) -> None: ...

    def close(self) -> None:
        """Leave the group; idempotent. The training loop calls it also while an exception
        propagates (an error, SIGTERM): then it must not wait for the other workers, who may
        never arrive (TensorFlow's and MXNet's close do nothing then)."""


class Distributed(Protocol):
    """The module `distributed`: the framework's own data-parallel engine."""

    def join(self, workers: int, rank: int, sync_bn: bool = False) -> Engine:
        """Join the group that `resnet3 launch` (or the framework's launcher) started."""


class Reference(Protocol):
    """The module `reference`: the plain step written directly in the framework, which bench
    runs against the adapter's."""
    VERSION: str  # the framework's version, as bench reports it
    # bench --tuned: the framework's documented speed options, name -> make_step's keywords
    # (a keyword the protocol does not name is the package's own, with a default)
    SPEED_OPTIONS: dict[str, dict[str, Any]]
    # bench --tuned: switches read when the framework is imported, name -> the environment of a
    # process of their own ({} where there are none)
    PROCESS_OPTIONS: dict[str, dict[str, str]]

    def network(self, spec: ResNetSpec) -> Any: ...

    def count_params(self, net: Any) -> tuple[int, int]:
        """(trainable, non-trainable) parameter counts of `network(spec)`."""

    def make_step(self, spec: ResNetSpec, phase: str, batch_size: int, input_size: int,
                  precision: str = "fp32", compile: bool = False, lr: float = 0.05,
                  device: Any = "cpu", channels_last: bool = False) -> Callable[[], Any]:
        """A no-argument function running one training or inference step ("train", "infer")
        on random tensors already in the framework's layout, on `device` (channels_last: as
        the adapter's)."""

    def sync(self) -> None:
        """Wait for work the framework leaves running when a step returns."""

    def matmul_gflops(self, n: int = 1024, seconds: float = 0.5) -> float:
        """A float32 matrix-multiply probe: the machine's attainable GFLOP/s."""

    def kernel_libraries(self) -> dict[str, str]:
        """What computes under the framework, library -> its version or state as the framework
        reports it (oneDNN, BLAS, Eigen, XLA, cuDNN where present): what bench and compare
        print under "What ran". Never empty; a version the framework does not expose says so."""

    def call_mode(self, compile: bool = False) -> str:
        """How one call of the adapter's step runs (`--latency` states it beside the figures):
        operators dispatched one by one from Python (eager), or one call into a graph."""


class Export(Protocol):
    """The module `export`: this framework's model as an ONNX graph (`resnet3 export`)."""
    CONVERTER: str  # what converts it, as the report names it ("tf2onnx")
    CONVERTER_PACKAGE: str  # the distribution whose version the report gives

    def onnx_graph(self, spec: ResNetSpec, weights: Weights, size: int) -> Any:
        """The ONNX model of `spec` holding `weights`, for inputs of size x size pixels."""


class Launch(Protocol):
    """The module `launch`: how `resnet3 launch` starts this framework's workers; importable
    without the framework."""

    def plan(self, command: Sequence[str], workers: int, hosts: Sequence[str], host_rank: int,
             port: int | None, free_ports: Callable[[int], list[int]],
             env: dict[str, str], *, iface: str | None = None
             ) -> list[tuple[str, list[str], dict[str, str]]]:
        """This machine's processes, (name, argv, extra environment) each, for `workers`
        workers in all running `python <command>`, split equally over `hosts`; `iface`, on
        several hosts, names this machine's network interface that reaches the others, for
        the engines that pick an interface themselves."""


class Library(Protocol):
    """The module `library`: readers of the framework's own library files (torchvision's state
    dicts, Keras applications, the Gluon model zoo), registered with `common.formats` by name;
    importable without the framework."""
    FORMATS: dict[str, Format]  # name -> the weights format it reads and writes
    # suffix -> the lister of a container file's names and shapes (".h5", ".params", ".pth")
    CONTAINERS: dict[str, Callable[[str | Path], dict[str, tuple[int, ...]]]]


# The contract's modules by their name in every package (common.frameworks.module(fw, name));
# the package itself is `Package`, and its module `adapter` holds the class `Adapter`.
MODULES: dict[str, type] = {"devices": Devices, "distributed": Distributed,
                            "reference": Reference, "export": Export, "launch": Launch,
                            "library": Library}
