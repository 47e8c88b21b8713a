"""d2l's ResNet in PyTorch, built from the shared spec in `common`."""
from resnet_torch.blocks import Residual, resnet_block
from resnet_torch.adapter import Adapter
from resnet_torch.model import (ResNet, build, param_counts, part_param_counts, part_shapes,
                                resnet18, set_threads, get_threads)
from resnet_torch.weights import from_canonical, load_native, save_native, to_canonical

LAYOUT = "NCHW"

__all__ = ["LAYOUT", "Residual", "resnet_block", "ResNet", "build", "resnet18", "param_counts",
           "part_param_counts", "part_shapes", "to_canonical", "from_canonical", "Adapter",
           "set_threads", "get_threads", "save_native", "load_native"]
