"""d2l's ResNet in TensorFlow 2 / Keras 3, built from the shared spec in `common` (NHWC batches).

Names are imported on first use (common.frameworks.lazy_exports), so that the train script's
--help answers without loading the framework."""
from common.frameworks import EXPORTS, lazy_exports

LAYOUT = "NHWC"

_WHERE = {"ResnetBlock": "blocks", **EXPORTS}

__all__ = ["LAYOUT", *_WHERE]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
