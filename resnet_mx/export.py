"""This package's model as an ONNX graph (`resnet3 export`, common.commands.export):
`mx.onnx.export_model`, from the hybridized block's exported symbol and parameters."""
from __future__ import annotations

import tempfile

import mxnet as mx
import numpy as np

from common.core.spec import ResNetSpec
from common.core.weights import Weights
from common.formats.onnx_file import OPSET
from resnet_mx.model import to_load
from resnet_mx.modes import classic
from resnet_mx.weights import from_canonical

CONVERTER = "mx.onnx.export_model"
CONVERTER_PACKAGE = "mxnet"  # the distribution whose version the report gives


def onnx_graph(spec: ResNetSpec, weights: Weights, size: int):
    """The network with `weights` as an onnx.ModelProto, for NCHW inputs of size x size."""
    import onnx
    # Built and exported in MXNet's classic mode whatever the caller's (npx.set_np()): the ONNX
    # converter translates classic operators only, and reads files saved without set_np.
    with classic(), tempfile.TemporaryDirectory() as folder:
        model = from_canonical(to_load(spec), weights)
        model.hybridize()
        model(mx.nd.zeros((1, spec.in_channels, size, size)))  # export needs the cached graph
        model.export(f"{folder}/model", epoch=0)  # model-symbol.json, model-0000.params
        path = mx.onnx.export_model(
            f"{folder}/model-symbol.json", f"{folder}/model-0000.params",
            in_shapes=[(1, spec.in_channels, size, size)], in_types=[np.float32],
            onnx_file_path=f"{folder}/model.onnx", dynamic=True,
            dynamic_input_shapes=[(None, spec.in_channels, size, size)])
        graph = onnx.load(path)
    # The converter builds from its opset-13 translations (the newest it has) but stamps the
    # onnx package's newest opset on the file (21 for onnx 1.16): say 13, which the checker
    # in common.commands.export then verifies node by node.
    for opset in graph.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
    return graph
