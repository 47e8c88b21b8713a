"""d2l's ResNet in TensorFlow 2 / Keras 3, built from the shared spec in `common` (NHWC batches).

Names are imported on first use (common.frameworks.lazy_exports), so that the train script's
--help answers without loading the framework."""
from common.frameworks import EXPORTS, lazy_exports, record

LAYOUT = "NHWC"

_WHERE = {"ResnetBlock": "blocks", **EXPORTS}

__all__ = ["LAYOUT", *_WHERE]
# MXNet 1.9 crashes (a segfault, or "random_device could not be read") when it is imported
# after TensorFlow 2.17 in the same process, and works when imported before it: where MXNet is
# installed, this package imports it first (through resnet_mx, which sets its thread count),
# so that convert, crosscheck and the tests can use both (docs/framework-differences.md, 23).
_MX = record("mx")
__getattr__, __dir__ = lazy_exports(__name__, _WHERE, first=(_MX.package, _MX.imports))
