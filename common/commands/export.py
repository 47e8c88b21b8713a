"""Export a network to ONNX from any of the four frameworks, from canonical weights.

    python -m common.commands.export --framework torch --arch d2l_resnet18 --input-size 96 resnet18.onnx
    python -m common.commands.export --framework tf --arch resnet50 --weights w.safetensors \\
        --input-size 224 resnet50.onnx

Whichever framework exports it, the file has the same interface: one input named "input",
NCHW float32 of shape (batch, channels, N, N) with N = --input-size and any batch size, and
one output named "logits", float32 (batch, classes): the network in eval mode (BatchNorm uses
its running statistics). Each framework's own converter builds the graph, in the package's
module `export` (`onnx_graph(spec, weights, size)`; `CONVERTER` names the converter):
- torch: `torch.onnx.export`, the TorchScript exporter, on the model in eval mode;
- tf: tf2onnx, from a tf.function that takes NCHW and transposes it for the Keras model;
- mx: `mx.onnx.export_model`, from the hybridized block's exported symbol and parameters.
Every file is then given the same input and output names and shapes, and is checked before it
is written: onnxruntime's logits on a random batch against the framework's own eval logits.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from common.core.checks import check_geometry
from common.core.errors import Error
from common.commands.cli import (Parser, add_spec_flags, description, guarded, non_negative_int,
                                 path_arg, positive_int, spec_of)
from common.core.files import atomic_path
from common.frameworks import FRAMEWORKS, NAMES, load, module
from common.core.init import init_weights
from common.core.spec import ResNetSpec
from common.core.weights import Weights
from common.formats.onnx_file import INPUT, OPSET, OUTPUT

FORMATS = ("onnx",)  # the one format so far; --format stays for later ones
# max |ONNX - framework eval logits| / max(1, max |logit|): float32 sums in another order. An
# absolute 1e-5, as crosscheck's, where logits are small; relative where they are large (an
# initialised resnet50 has logits near 30 and differences near 2e-5).
TOLERANCE = 1e-5


class ExportMismatch(Exception):
    """The exported graph computes something else than the framework's model (exit status 1)."""


def _standardised(graph, spec: ResNetSpec, size: int, framework: str):
    """The graph with one input named INPUT, (batch, C, N, N) float32, and one output named
    OUTPUT, (batch, classes): the names and shapes each converter picks differ. Weights listed
    as graph inputs (MXNet's converter does) are dropped from the inputs, so that onnxruntime
    treats them as constants."""
    import onnx
    from onnx import TensorProto, helper
    g = graph.graph
    constants = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in constants]
    if len(inputs) != 1 or len(g.output) != 1:
        raise AssertionError(f"{framework}: expected one input and one output, got "
                             f"{[i.name for i in inputs]} and {[o.name for o in g.output]}")
    # The converter's own input shape must already be NCHW with a free batch axis: renaming it
    # would hide an NHWC graph (a 1-channel square NHWC batch even has the NCHW batch's bytes)
    # or one traced for a fixed batch.
    given = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if given != [None, spec.in_channels, size, size]:
        raise AssertionError(f"{framework}: expected an NCHW input (batch, {spec.in_channels}, "
                             f"{size}, {size}), got {inputs[0].name} of shape {given}")
    rename = {inputs[0].name: INPUT, g.output[0].name: OUTPUT}
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for info in g.value_info:
        info.name = rename.get(info.name, info.name)
    del g.input[:], g.output[:]
    g.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                 ["batch", spec.in_channels, size, size]))
    g.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                                  ["batch", spec.num_classes]))
    g.name = spec.name
    del graph.metadata_props[:]
    helper.set_model_props(graph, {"arch": spec.name, "framework": framework,
                                   "layout": "NCHW", "input_size": str(size)})
    onnx.checker.check_model(graph)
    return graph


def onnx_graph(framework: str, spec: ResNetSpec, weights: Weights, input_size: int):
    """The network with `weights` as an onnx.ModelProto exported from `framework`'s model."""
    if framework not in FRAMEWORKS:
        raise Error(f"framework: expected one of {', '.join(FRAMEWORKS)}, "
                    f"got {framework!r}")
    check_geometry(spec, (1, spec.in_channels, input_size, input_size))
    graph = module(framework, "export").onnx_graph(spec, weights, input_size)
    return _standardised(graph, spec, input_size, framework)


def onnx_logits(model: bytes | str | Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's logits of an ONNX file (path or bytes) for the NCHW batch x."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]


def check_output(path: str | Path, fmt: str = "onnx") -> Path:
    """The output path, refused before any work unless it ends in .<fmt> and its folder exists."""
    path = Path(path)
    if path.suffix != f".{fmt}":
        raise Error(f"output: expected a file name ending in .{fmt} for --format {fmt}, "
                    f"got {str(path)!r}")
    if not path.parent.is_dir():
        raise Error(f"output: expected a file in an existing folder, got {str(path)!r} "
                    f"(no folder {str(path.parent)!r})")
    return path


def export(framework: str, spec: ResNetSpec, weights: Weights, input_size: int,
           path: str | Path, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """Write the ONNX file of `weights` exported from `framework`, atomically, once
    onnxruntime's logits on a random batch match the framework's own eval logits; returns the
    largest difference and the logit scale max(1, max |logit|). Raises ExportMismatch (and
    writes nothing) beyond TOLERANCE times that scale."""
    path = check_output(path)
    data = onnx_graph(framework, spec, weights, input_size).SerializeToString()
    x = np.random.default_rng(seed).normal(
        size=(batch, spec.in_channels, input_size, input_size)).astype(np.float32)
    adapter = load(framework).Adapter(spec, weights)
    own = adapter.logits(x, training=False)
    diff = float(np.abs(onnx_logits(data, x) - own).max())
    scale = max(1.0, float(np.abs(own).max()))
    if not diff <= TOLERANCE * scale:
        raise ExportMismatch(f"onnxruntime's logits differ from {NAMES[framework]}'s eval "
                             f"logits by {diff:.2e}, expected at most {TOLERANCE:g} x "
                             f"{scale:.3g} (the logit scale)"
                             f"{first_divergent_part(data, adapter, spec, x)}; "
                             f"nothing written")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)
    return diff, scale


def graph_tensors(model: bytes, x: np.ndarray) -> list[np.ndarray]:
    """Every tensor an ONNX graph computes for the batch x (each node's outputs made graph
    outputs), as onnxruntime gives them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    graph = onnx.load_from_string(model)
    known = {o.name for o in graph.graph.output}
    for name in (n for node in graph.graph.node for n in node.output if n and n not in known):
        graph.graph.output.append(helper.make_empty_tensor_value_info(name))
        known.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [np.asarray(t) for t in session.run(names, {INPUT: np.ascontiguousarray(x)})]


def first_divergent_part(model: bytes, adapter, spec: ResNetSpec, x: np.ndarray) -> str:
    """Where the graph first parts from the framework's model (its `adapter`), as far as the
    graph exposes its tensors: for each part and block in order
    (common.core.checks.parts_and_blocks), the framework's eval output against the closest tensor of the graph of that shape (NCHW, or
    NHWC transposed); the first beyond TOLERANCE of its scale is named. "" when every part
    found agrees (what differs is after them, or not exposed)."""
    from common.core.checks import parts_and_blocks
    tensors = graph_tensors(model, x)
    ours = adapter.features(x, parts_and_blocks(spec))
    for part, y in ours.items():
        candidates = [t for t in tensors if t.shape == y.shape] + [
            t.transpose(0, 3, 1, 2) for t in tensors
            if t.ndim == 4 and t.transpose(0, 3, 1, 2).shape == y.shape]
        if not candidates:  # not in the graph as a tensor of its own
            continue
        closest = min(float(np.abs(c - y).max()) for c in candidates)
        scale = max(1.0, float(np.abs(y).max()))
        if closest > TOLERANCE * scale:
            return (f"; the first part beyond it: {part} (the graph's closest tensor differs "
                    f"by {closest:.2e} of max |output| {scale:.3g})")
    return ""


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="resnet-export", description=description(__doc__))
    parser.add_argument("output", type=path_arg, help="the file to write, ending in .onnx")
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS,
                        help="whose model and converter build the graph")
    parser.add_argument("--weights", type=path_arg, help="weights file (.safetensors, .npz, .pt, .weights.h5, "
                        ".params); default: the shared seeded initialisation")
    add_spec_flags(parser)
    parser.add_argument("--input-size", type=positive_int, default=96,
                        help="height and width of the graph's input")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the initialisation (without --weights) and the check batch")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, as compare
    spec = spec_of(args)
    path = check_output(args.output, args.format)
    # Refused here, before a framework loads, if the size cannot reach the head.
    check_geometry(spec, (1, spec.in_channels, args.input_size, args.input_size))
    if args.weights:
        from common.commands.convert import read
        weights = read(args.weights, spec)
    else:
        weights = init_weights(spec, args.seed)
    try:
        diff, scale = export(args.framework, spec, weights, args.input_size, path, seed=args.seed)
    except ExportMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    exporter = module(args.framework, "export")
    converter = exporter.CONVERTER_PACKAGE
    print(f"wrote {path}: {spec.name} exported from {NAMES[args.framework]} through "
          f"{exporter.CONVERTER} ({converter} {_version(converter)}, onnx "
          f"{_version('onnx')}, opset {OPSET})\n"
          f"input {INPUT!r}: float32 NCHW (batch, {spec.in_channels}, {args.input_size}, "
          f"{args.input_size}); output {OUTPUT!r}: float32 (batch, {spec.num_classes})\n"
          f"checked with onnxruntime {_version('onnxruntime')}: max |ONNX - "
          f"{NAMES[args.framework]} eval logits| = {diff:.2e} on 2 random inputs "
          f"(max |logit| {scale:.3g}; tolerance {TOLERANCE:g} x max(1, max |logit|))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
