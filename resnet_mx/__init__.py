"""d2l's ResNet in MXNet Gluon, built from the shared spec in `common`."""
import os
import sys

# MXNet fixes its CPU threads once, when it loads: OMP_NUM_THREADS if set, else half the cores on
# x86 (it assumes hyper-threading: 1 of 2 cores here). Default to all cores, as PyTorch does.
if "mxnet" not in sys.modules:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

from resnet_mx.blocks import Residual, resnet_block
from resnet_mx.adapter import Adapter
from resnet_mx.model import (ResNet, build, param_counts, part_param_counts, part_shapes,
                             resnet18, set_threads)
from resnet_mx.weights import from_canonical, load_native, save_native, to_canonical

LAYOUT = "NCHW"

__all__ = ["LAYOUT", "Residual", "resnet_block", "ResNet", "build", "resnet18", "param_counts",
           "part_param_counts", "part_shapes", "to_canonical", "from_canonical", "Adapter",
           "set_threads", "save_native", "load_native"]
