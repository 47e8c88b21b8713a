"""The interface of every ONNX file that `resnet3 export` writes, whichever framework builds it:
its opset, and the names of its one input (NCHW float32, any batch size) and one output (the
logits). Each package's `export` module builds its graph to these; common.commands.export
checks them."""

# MXNet 1.9.1's converter knows opsets 12 and 13 only; torch's TorchScript exporter, tf2onnx
# 1.17 and onnxruntime 1.32 all take 13, so every file has the same opset.
OPSET = 13
INPUT, OUTPUT = "input", "logits"
