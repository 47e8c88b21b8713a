"""This package's model as an ONNX graph (`resnet3 export`, common.commands.export): the Flax
network with its weights, converted to a TensorFlow function by `jax.experimental.jax2tf`, then
to ONNX by tf2onnx, as resnet_tf's is.

Three settings make jax2tf's graph one that tf2onnx converts (jax 0.4.30, tf2onnx 1.17; the
last two seen failing without them, 2026-12-03):
- `native_serialization=False`: the default since JAX 0.4.16 is one `XlaCallModule` operator
  carrying StableHLO, which tf2onnx cannot convert; graph serialisation (deprecated, still in
  0.4.30) writes TensorFlow operators;
- `enable_xla=False`: otherwise convolutions become `XlaConvV2`, which ONNX has no operator for
  ("No Op registered for XlaConvV2");
- gradients left on (the default): `with_gradient=False` wraps the output in
  `PreventGradient`, which ONNX does not know either.
jnp's strided indexing (`X[:, ::2, ::2, :]`) becomes a gather that enable_xla=False cannot
convert, so the blocks subsample with `lax.slice` (resnet_jax/blocks.py). The batch dimension
stays free (`polymorphic_shapes`). The function transposes the NCHW input to NHWC before the
network, so the file takes NCHW like the other frameworks' files.
"""
from __future__ import annotations

import logging
import warnings

import resnet_tf.devices  # noqa: F401 - MXNet first, then TensorFlow with its device settings
import tensorflow as tf
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental import jax2tf

from common.core.spec import ResNetSpec
from common.core.weights import Weights
from common.formats.onnx_file import INPUT, OPSET
from resnet_jax.model import Network, ResNet
from resnet_jax.weights import from_canonical

CONVERTER = "jax2tf + tf2onnx"
CONVERTER_PACKAGE = "tf2onnx"  # the distribution whose version the report gives


def onnx_graph(spec: ResNetSpec, weights: Weights, size: int):
    """The network with `weights` as an onnx.ModelProto, for NCHW inputs of size x size."""
    import tf2onnx
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    variables = from_canonical(Network(spec, {}), weights).variables
    net = ResNet(spec, training=False, conv=nn.Conv, pool=nn.max_pool)  # Conv and MaxPool nodes

    def nchw_logits(X):  # the Flax network takes NHWC; the file takes NCHW like the others
        return net.apply(variables, jnp.transpose(X, (0, 2, 3, 1)))

    with warnings.catch_warnings():  # jax2tf warns that both settings are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        converted = jax2tf.convert(nchw_logits, polymorphic_shapes=["(b, _, _, _)"],
                                   native_serialization=False,
                                   enable_xla=False)
    signature = [tf.TensorSpec([None, spec.in_channels, size, size], tf.float32, name=INPUT)]
    function = tf.function(converted, input_signature=signature, autograph=False)
    graph, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    return graph
