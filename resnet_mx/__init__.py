"""d2l's ResNet in MXNet Gluon, built from the shared spec in `common`.

MXNet fixes its CPU threads once, when it loads: OMP_NUM_THREADS if set, else half the cores on
x86 (it assumes hyper-threading: 1 of 2 cores here). So this package defaults the variable to
all cores, as PyTorch does, and imports mxnet only when one of its names is first used: that
lets `python -m resnet_mx.train --threads N` set the variable before MXNet loads.
"""
import os
import sys

from common.frameworks import EXPORTS, lazy_exports

if "mxnet" not in sys.modules:
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

LAYOUT = "NCHW"

_WHERE = EXPORTS

__all__ = ["LAYOUT", *_WHERE]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
