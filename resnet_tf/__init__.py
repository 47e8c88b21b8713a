"""d2l's ResNet in TensorFlow 2 / Keras 3, built from the shared spec in `common` (NHWC batches)."""
from resnet_tf.blocks import Residual, ResnetBlock, resnet_block
from resnet_tf.adapter import Adapter
from resnet_tf.model import (ResNet, build, param_counts, part_param_counts, part_shapes,
                             resnet18, set_threads, get_threads)
from resnet_tf.weights import from_canonical, load_native, save_native, to_canonical

LAYOUT = "NHWC"

__all__ = ["LAYOUT", "Residual", "ResnetBlock", "resnet_block", "ResNet", "build", "resnet18",
           "param_counts", "part_param_counts", "part_shapes", "to_canonical", "from_canonical",
           "Adapter", "set_threads", "get_threads", "save_native", "load_native"]
