"""d2l's ResNet in PyTorch, built from the shared spec in `common`.

Names are imported on first use (common.frameworks.lazy_exports), so that the train script's
--help answers without loading the framework."""
from common.frameworks import lazy_exports

LAYOUT = "NCHW"

_WHERE = {"Residual": "blocks", "resnet_block": "blocks", "Adapter": "adapter",
          "ResNet": "model", "build": "model", "param_counts": "model",
          "part_param_counts": "model", "part_shapes": "model", "resnet18": "model",
          "set_threads": "model", "get_threads": "model", "from_canonical": "weights",
          "load_native": "weights", "save_native": "weights", "to_canonical": "weights"}

__all__ = ["LAYOUT", *_WHERE]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
