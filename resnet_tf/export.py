"""This package's model as an ONNX graph (`resnet3 export`, common.commands.export): tf2onnx,
from a tf.function that transposes the NCHW input to NHWC before the Keras model, so that the
file takes NCHW like the other frameworks' (tf2onnx's optimiser folds that transpose into the
convolutions: the graph holds no Transpose)."""
from __future__ import annotations

import logging

import resnet_tf.devices  # noqa: F401 - MXNet first, then TensorFlow with its device settings
import tensorflow as tf

from common.core.spec import ResNetSpec
from common.core.weights import Weights
from common.formats.onnx_file import INPUT, OPSET
from resnet_tf.model import build
from resnet_tf.weights import from_canonical

CONVERTER = "tf2onnx"
CONVERTER_PACKAGE = "tf2onnx"  # the distribution whose version the report gives


def onnx_graph(spec: ResNetSpec, weights: Weights, size: int):
    """The network with `weights` as an onnx.ModelProto, for NCHW inputs of size x size."""
    import tf2onnx
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    model = from_canonical(build(spec, init="framework"), weights)
    signature = [tf.TensorSpec([None, spec.in_channels, size, size], tf.float32, name=INPUT)]

    @tf.function(input_signature=signature, autograph=False)
    def nchw_logits(X):  # the Keras model takes NHWC; the file takes NCHW like the other two
        return model(tf.transpose(X, (0, 2, 3, 1)), training=False)

    graph, _ = tf2onnx.convert.from_function(nchw_logits, input_signature=signature,
                                             opset=OPSET)
    return graph
