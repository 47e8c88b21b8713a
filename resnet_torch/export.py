"""This package's model as an ONNX graph (`resnet3 export`, common.commands.export):
`torch.onnx.export`, the TorchScript exporter (dynamo=False: the torch.export-based one needs
onnxscript, which is not in the pins), on the model in eval mode."""
from __future__ import annotations

import io
import warnings

import torch

from common.core.spec import ResNetSpec
from common.core.weights import Weights
from common.formats.onnx_file import INPUT, OPSET, OUTPUT
from resnet_torch.model import build
from resnet_torch.weights import from_canonical

CONVERTER = "torch.onnx.export (TorchScript exporter)"
CONVERTER_PACKAGE = "torch"  # the distribution whose version the report gives


def onnx_graph(spec: ResNetSpec, weights: Weights, size: int):
    """The network with `weights` as an onnx.ModelProto, for NCHW inputs of size x size."""
    model = from_canonical(build(spec, init="framework"), weights).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The model checks its batch in forward(); traced, those checks are Python constants
        # (TracerWarning), which is right for a graph of fixed height and width.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter"
        torch.onnx.export(model, (torch.zeros(1, spec.in_channels, size, size),), buffer,
                          dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"},
                                                               OUTPUT: {0: "batch"}})
    import onnx
    return onnx.load_from_string(buffer.getvalue())
