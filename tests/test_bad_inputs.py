"""Every row of docs/bad-inputs.md, run in every framework it applies to.

Each row is a bad input or a damaged file, given as a user gives it (through the adapters, the
models, the weights functions or a command), and the part of the error message that every
framework must give. A row passes when each framework refuses the input with that message (as
a ValueError or OSError, the errors the commands answer with one line), and a command answers
with exit status 2 and no traceback. The table in docs/bad-inputs.md is checked against ROWS
in both directions, so the document cannot drift from what is tested.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from common.commands import bench
from common.commands import compare
from common.commands import convert
from common.commands import crosscheck
from common.commands import summary
from common.core.checks import InputError
from common.frameworks import FRAMEWORKS
from common.core.init import init_weights
from common.core.spec import get_spec
from common.commands.train import CHECKPOINT, main as train_main
from common.core.weights import load_weights, save_weights
from tests.helpers import MODULES, mx_array

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
SPEC = get_spec("cifar_resnet20")  # 3 channels, 10 classes; a 4x4 input is 1x1 in stage3
NATIVE = {"torch": ".pt", "tf": ".weights.h5", "mx": ".params", "jax": ".msgpack"}
_adapters: dict[str, object] = {}


class Row(NamedTuple):
    given: str
    error: str  # a part of the message, the same in every framework
    check: Callable  # check(fw, tmp_path) -> the message (or a command's stderr)
    frameworks: tuple[str, ...] = FRAMEWORKS


def adapter(fw):
    if fw not in _adapters:
        _adapters[fw] = MODULES[fw].Adapter(SPEC, init_weights(SPEC, 0))
    return _adapters[fw]


def refused(call) -> str:
    """The message of the ValueError or OSError that call() raises (a test failure if none)."""
    with pytest.raises((ValueError, OSError)) as err:
        call()
    return str(err.value)


def command(main, *argv) -> str:
    """Run a command's main in this process; it must answer with exit status 2 and one error
    line, no traceback. Returns what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(*argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    text = err.getvalue()
    assert code == 2 and "Traceback" not in text, text
    return text


def train(fw, *flags) -> str:
    return command(train_main, fw, list(flags))


def images(n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, size, size), dtype=np.float32), rng.integers(0, 10, n)


def api(call) -> Callable:
    """A row through an adapter: call(adapter) with a good batch x, y it may spoil."""
    def check(fw, tmp_path):
        x, y = images()
        return refused(lambda: call(adapter(fw), x, y))
    return check


def with_x(fn) -> Callable:
    def spoil(a, x, y):
        return fn(a, x.copy(), y)
    return spoil


def nan_at(a, x, y):
    x[1, 2, 3, 4] = np.nan
    return a.train_step(x, y)


def inf_at(a, x, y):
    x[0, 0, 0, 1] = np.inf
    return a.logits(x)


def model_call(fw, x, training=False):
    """A batch straight into the framework's model (not the adapter), as a user of the model
    calls it: NCHW for PyTorch and Gluon, NHWC for Keras and Flax."""
    module = MODULES[fw]
    model = module.build(SPEC)
    if fw == "torch":
        import torch
        model.train(training)
        return model(torch.from_numpy(x))
    if fw in ("tf", "jax"):
        return model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=training)
    from mxnet import autograd
    with autograd.record(train_mode=training):
        return model(mx_array(x))


def weights_with(change) -> Callable:
    """A row through from_canonical: the shared initial weights, changed by change(w)."""
    def check(fw, tmp_path):
        w = init_weights(SPEC, 0)
        change(w)
        module = MODULES[fw]
        return refused(lambda: module.from_canonical(module.build(SPEC), w))
    return check


def set_value(name, index, value):
    def change(w):
        w[name] = w[name].copy()
        w[name][index] = value
    return change


def canonical_file(make) -> Callable:
    """A row through load_weights then from_canonical: a canonical file made by make(path)."""
    def check(fw, tmp_path):
        path = make(tmp_path)
        module = MODULES[fw]
        return refused(lambda: module.from_canonical(module.build(SPEC), load_weights(path)))
    return check


def saved(suffix):
    def make(tmp_path):
        return save_weights(init_weights(SPEC, 0), tmp_path / f"w{suffix}")
    return make


def truncated(suffix):
    def make(tmp_path):
        path = saved(suffix)(tmp_path)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        return path
    return make


def text_file(name):
    def make(tmp_path):
        path = tmp_path / name
        path.write_text("not weights\n")
        return path
    return make


def pickled_npz(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"stem.conv.weight": np.array([{"a": 1}], dtype=object)})
    return path


def native_file(damage) -> Callable:
    """A row through the framework's own reader: its native file (of SPEC) damaged by damage."""
    def check(fw, tmp_path):
        module = MODULES[fw]
        path = tmp_path / f"w{NATIVE[fw]}"
        module.save_native(module.build(SPEC), str(path))
        damage(path, fw)
        return refused(lambda: module.load_native(module.build(SPEC), str(path)))
    return check


def cut_half(path, fw):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def empty(path, fw):
    path.write_bytes(b"")


def other_network(path, fw):
    module = MODULES[fw]
    module.save_native(module.build(get_spec("cifar_resnet32")), str(path))


def foreign_content(path, fw):
    """A file of the right kind that holds something else: a pickled module (PyTorch), an HDF5
    file of unrelated arrays (Keras), a list of unnamed arrays (Gluon)."""
    if fw == "torch":
        import torch
        torch.save(MODULES[fw].build(SPEC), str(path))
    elif fw == "tf":
        import h5py
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros(3)
    else:
        import mxnet as mx
        mx.nd.save(str(path), [mx.nd.zeros(3)])


def convert_native(damage) -> Callable:
    """A row through `resnet-convert`: the framework's native file, damaged, to .safetensors."""
    def check(fw, tmp_path):
        module = MODULES[fw]
        path = tmp_path / f"w{NATIVE[fw]}"
        module.save_native(module.build(SPEC), str(path))
        damage(path, fw)
        return command(convert.main, [str(path), str(tmp_path / "o.safetensors"),
                                      "--arch", SPEC.name])
    return check


# --- data files -----------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fashion_folder(tmp_path, **replace) -> Path:
    """A --data-dir with a small Fashion-MNIST in IDX files; replace={file: bytes} spoils one."""
    folder = tmp_path / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 255, (8, 28, 28))),
             "train-labels-idx1-ubyte.gz": idx_bytes(rng.integers(0, 10, 8)),
             "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 255, (4, 28, 28))),
             "t10k-labels-idx1-ubyte.gz": idx_bytes(rng.integers(0, 10, 4))}
    for name, raw in (files | replace).items():  # a damaged file is a good gzip of bad bytes
        (folder / name).write_bytes(gzip.compress(raw))
    return tmp_path / "data"


def train_on_fashion(**replace) -> Callable:
    def check(fw, tmp_path):
        data = fashion_folder(tmp_path, **replace)
        return train(fw, "--dataset", "fashion_mnist", "--data-dir", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "run"))
    return check


def cifar_folder(tmp_path, batch: bytes) -> Path:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    return tmp_path / "data"


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def train_on_cifar(batch: bytes) -> Callable:
    def check(fw, tmp_path):
        data = cifar_folder(tmp_path, batch)
        return train(fw, "--dataset", "cifar10", "--data-dir", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "run"))
    return check


GOOD_CIFAR = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})

# --- commands -------------------------------------------------------------------------------

DIGITS = ("--dataset", "digits", "--epochs", "1", "--limit", "64", "--batch-size", "32",
          "--resize", "16")


def train_flags(*flags) -> Callable:
    def check(fw, tmp_path):
        return train(fw, *DIGITS, "--out", str(tmp_path / "run"), *flags)
    return check


def out_is_a_file(fw, tmp_path):
    (tmp_path / "f").write_text("x")
    return train(fw, *DIGITS, "--out", str(tmp_path / "f"))


def out_already_used(fw, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"x")
    return train(fw, *DIGITS, "--out", str(tmp_path / "run"))


def resume_from(make) -> Callable:
    """--resume of a run whose checkpoint is made by make(path, fw)."""
    def check(fw, tmp_path):
        (tmp_path / "run").mkdir()
        make(tmp_path / "run" / CHECKPOINT, fw)
        return train(fw, *DIGITS, "--out", str(tmp_path / "run"), "--resume")
    return check


def checkpoint_of(weights_change=None, framework=None, lr="0.05"):
    def make(path, fw):
        from safetensors.numpy import save_file
        from common.commands.train import RUN_DEFINING, parser
        args = parser("x").parse_args([*DIGITS, "--lr", lr])
        config = {k: getattr(args, k) for k in RUN_DEFINING}
        spec = get_spec("d2l_resnet18", in_channels=1, num_classes=10)
        w = init_weights(spec, 0)
        if weights_change:
            weights_change(w)
        meta = {"epoch": "1", "history": "[]", "config": __import__("json").dumps(config),
                "framework": framework or fw}
        save_file({f"model/{k}": v for k, v in w.items()}, str(path), metadata=meta)
    return make


def checkpoint_truncated(path, fw):
    checkpoint_of()(path, fw)
    path.write_bytes(path.read_bytes()[:1000])


def checkpoint_without_metadata(path, fw):
    save_weights(init_weights(get_spec("d2l_resnet18"), 0), path)


def other_framework(fw):
    return FRAMEWORKS[(FRAMEWORKS.index(fw) + 1) % len(FRAMEWORKS)]


def crosscheck_cmd(*argv) -> Callable:
    def check(fw, tmp_path):
        return command(crosscheck.main, list(argv))
    return check


def crosscheck_native(damage) -> Callable:
    def check(fw, tmp_path):
        module = MODULES[fw]
        path = tmp_path / f"w{NATIVE[fw]}"
        module.save_native(module.build(get_spec("d2l_resnet18")), str(path))
        damage(path, fw)
        return command(crosscheck.main, ["--weights", str(path), "--input-size", "32"])
    return check


def predict_cmd(*flags: str, image: str = "png") -> Callable:
    """A row through `resnet3 predict --framework fw` with SPEC's canonical file: a small PNG
    (image="png"), a text file ("text") or no file ("none"); --labels "three": 3 names."""
    def check(fw, tmp_path):
        from PIL import Image
        from common.commands import predict
        weights = tmp_path / "w.safetensors"
        save_weights(init_weights(SPEC, 0), weights)
        path = tmp_path / "photo.png"
        if image == "png":
            Image.new("RGB", (40, 30), (200, 100, 50)).save(path)
        elif image == "text":
            path.write_text("not an image\n")
        (tmp_path / "three").write_text("a\nb\nc\n")
        argv = [str(path), "--weights", str(weights), "--arch", SPEC.name, "--framework", fw,
                *(str(tmp_path / f) if f == "three" else f for f in flags)]
        return command(predict.main, argv)
    return check


# --- numbers a framework cannot hold, resources the machine does not have -------------------

def adapter_with(adam: dict | None = None, **kwargs) -> Callable:
    """A row through an adapter's own constructor, as an API user makes one (`adam`: the
    settings of an Adam OptimizerConfig handed to it)."""
    def make(fw):
        from common.core.optim import OptimizerConfig
        extra = {"optimizer": OptimizerConfig("adam", **adam)} if adam else {}
        return MODULES[fw].Adapter(SPEC, init_weights(SPEC, 0), **kwargs, **extra)
    return lambda fw, tmp_path: refused(lambda: make(fw))


def for_framework(main, *argv) -> Callable:
    """A command that takes --frameworks, run for this framework alone."""
    def check(fw, tmp_path):
        return command(main, ["--frameworks", fw, "--out", str(tmp_path / "out"), *argv])
    return check


HUGE = ("--batch-size", "256", "--resize", "5000")  # d2l_resnet18: 2.4 TB of activations
MEMORY = "memory: expected a batch whose activations fit in the memory available, got "
LR_INF = "--lr: expected a number that float32 holds, got 1e+300, which is inf in float32"
LR_ZERO = "--lr: expected a number that float32 holds, got 1e-50, which is 0.0 in float32"
CORES = "the CPU cores this process may use (os.sched_getaffinity), got 999"


DIVERGED_FIRST = ("weights: expected finite values after epoch 1, got -inf in stem.conv.weight "
                  "(the last steps diverged; try a lower --lr); no checkpoint was written")


def without_file(name) -> Callable:
    """A --data-dir holding Fashion-MNIST's files but `name`."""
    def check(fw, tmp_path):
        data = fashion_folder(tmp_path)
        (data / "fashion_mnist" / name).unlink()
        return train(fw, "--dataset", "fashion_mnist", "--data-dir", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "run"))
    return check


def weights_file_promising(suffix: str, name: str, shape: tuple[int, ...]) -> Callable:
    """train --weights with d2l's initial weights, `name` replaced by zeros of `shape` (what a
    file's header promises is what its reader is told to read)."""
    def check(fw, tmp_path):
        weights = init_weights(get_spec("d2l_resnet18"), 0)
        weights[name] = np.zeros(shape, np.float32)
        path = save_weights(weights, tmp_path / f"w{suffix}")
        return train(fw, *DIGITS, "--out", str(tmp_path / "run"), "--weights", str(path))
    return check


ROWS: dict[str, Row] = {
    # inputs, through the adapters
    "input-rank": Row("a 3-d image (C, H, W) instead of a batch",
                      "input: expected a 4-d batch in NCHW layout",
                      api(lambda a, x, y: a.logits(x[0]))),
    "input-channels": Row("3-channel images for a 1-channel network (or the reverse)",
                          "input: expected 3 channel(s) on axis 1 (NCHW), got 1",
                          api(lambda a, x, y: a.logits(x[:, :1]))),
    "input-nhwc": Row("a channels-last (NHWC) batch to the NCHW API",
                      "input: expected 3 channel(s) on axis 1 (NCHW), got 8",
                      api(lambda a, x, y: a.logits(x.transpose(0, 2, 3, 1)))),
    "input-uint8": Row("raw uint8 pixels, not floats",
                       "input: expected a floating-point dtype (float32), got uint8",
                       api(lambda a, x, y: a.logits((x * 255).astype(np.uint8)))),
    "input-int-train": Row("an integer batch to a training step",
                           "input: expected a floating-point dtype (float32), got int64",
                           api(lambda a, x, y: a.train_step(x.astype(np.int64), y))),
    "input-nan": Row("a NaN pixel", "input: expected finite values, got nan at position "
                     "(1, 2, 3, 4)", api(with_x(nan_at))),
    "input-inf": Row("an infinite pixel", "input: expected finite values, got inf at position "
                     "(0, 0, 0, 1)", api(with_x(inf_at))),
    "input-empty": Row("an empty batch (0 examples)", "input: expected at least one example",
                       api(lambda a, x, y: a.logits(x[:0]))),
    "input-too-small": Row("an input with no rows (0x8 pixels)", "input: expected height and "
                           "width of at least 1 for cifar_resnet20", api(lambda a, x, y: a.logits(
                               x[:, :, :0]))),
    "train-one-value": Row("a training step on one example whose last stage is 1x1",
                           "train mode: expected more than one value per channel for BatchNorm",
                           api(lambda a, x, y: a.train_step(x[:1, :, :4, :4], y[:1]))),
    "train-logits-one-value": Row("train-mode logits of one example with a 1x1 map",
                                  "train mode: expected more than one value per channel",
                                  api(lambda a, x, y: a.logits(x[:1, :, :4, :4], training=True))),
    "grads-one-value": Row("loss_and_grads on one example with a 1x1 map",
                           "got a batch of 1 with a 1x1 map at stage3.0.bn1",
                           api(lambda a, x, y: a.loss_and_grads(x[:1, :, :4, :4], y[:1]))),
    # inputs, straight into the models
    "model-channels": Row("a batch of the wrong channels into the model itself",
                          "input: expected 3 channel(s)",
                          lambda fw, t: refused(lambda: model_call(fw, images()[0][:, :2]))),
    "model-int": Row("an integer batch into the model itself",
                     "input: expected a floating-point dtype",
                     lambda fw, t: refused(lambda: model_call(fw, np.zeros((2, 3, 8, 8),
                                                                         np.int32)))),
    "model-one-value": Row("one example with a 1x1 map into the model in train mode",
                           "train mode: expected more than one value per channel",
                           lambda fw, t: refused(lambda: model_call(fw, images(1, 4)[0], True))),
    # labels
    "labels-outside": Row("a label equal to the number of classes",
                          "labels: expected class indices in [0, 10), got 10 at position 0",
                          api(lambda a, x, y: a.train_step(x, np.array([10, 1, 2, 3])))),
    "labels-negative": Row("a negative label",
                           "labels: expected class indices in [0, 10), got -1 at position 2",
                           api(lambda a, x, y: a.loss_and_grads(x, np.array([0, 1, -1, 3])))),
    "labels-float": Row("float labels", "labels: expected integer class indices, got dtype "
                        "float32", api(lambda a, x, y: a.train_step(x, y.astype(np.float32)))),
    "labels-one-hot": Row("one-hot labels (N, classes)",
                          "labels: expected one per example, shape (4,), got shape (4, 10)",
                          api(lambda a, x, y: a.train_step(x, np.eye(10, dtype=int)[y]))),
    "labels-count": Row("fewer labels than examples",
                        "labels: expected one per example, shape (4,), got shape (3,)",
                        api(lambda a, x, y: a.train_step(x, y[:3]))),
    # weights, through from_canonical
    "weights-missing": Row("weights without one tensor",
                           "weights do not fit 'cifar_resnet20': missing 1: stem.conv.weight",
                           weights_with(lambda w: w.pop("stem.conv.weight"))),
    "weights-unexpected": Row("weights with an extra tensor", "unexpected 1: extra.weight",
                              weights_with(lambda w: w.update({"extra.weight": np.zeros(1)}))),
    "weights-shape": Row("a tensor of the wrong shape",
                         "mis-shaped 1: head.fc.bias: expected (10,), got (11,)",
                         weights_with(lambda w: w.update({"head.fc.bias": np.zeros(11)}))),
    "weights-int": Row("an integer tensor", "head.fc.weight: expected a floating-point dtype",
                       weights_with(lambda w: w.update(
                           {"head.fc.weight": w["head.fc.weight"].astype(np.int32)}))),
    "weights-nan": Row("a NaN weight", "stem.conv.weight: expected finite values, got nan",
                       weights_with(set_value("stem.conv.weight", (0, 0, 0, 0), np.nan))),
    "weights-inf": Row("an infinite running mean",
                       "stem.bn.running_mean: expected finite values, got inf",
                       weights_with(set_value("stem.bn.running_mean", 3, np.inf))),
    "weights-negative-variance": Row("a negative running variance",
                                     "stem.bn.running_var: expected values >= 0 (a variance), "
                                     "got -1.0 at position (5,)",
                                     weights_with(set_value("stem.bn.running_var", 5, -1.0))),
    "weights-other-preset": Row("the weights of another preset",
                                "weights do not fit 'cifar_resnet20': unexpected 60",
                                weights_with(lambda w: w.update(
                                    init_weights(get_spec("cifar_resnet32"), 0)))),
    # canonical files
    "safetensors-truncated": Row("a truncated .safetensors file",
                                 "expected a safetensors file, could not read it",
                                 canonical_file(truncated(".safetensors"))),
    "npz-truncated": Row("a truncated .npz file", "expected a npz (zip of .npy arrays) file, "
                         "could not read it", canonical_file(truncated(".npz"))),
    "safetensors-text": Row("a text file named .safetensors",
                            "expected a safetensors file, could not read it",
                            canonical_file(text_file("w.safetensors"))),
    "npz-pickle": Row("an .npz holding a pickled object array",
                      "expected a npz (zip of .npy arrays) file, could not read it",
                      canonical_file(pickled_npz)),
    "weights-suffix": Row("a weights file with another suffix (.bin)",
                          "weights file: expected a .safetensors or .npz path",
                          canonical_file(text_file("w.bin"))),
    "weights-no-file": Row("a weights path that does not exist",
                           "weights file: expected an existing file",
                           canonical_file(lambda t: t / "none.safetensors")),
    # native files, each framework's own
    "native-truncated": Row("a truncated .pt / .weights.h5 / .params file",
                            "could not read it", native_file(cut_half)),
    "native-empty": Row("an empty .pt / .weights.h5 / .params file", "could not read it",
                        native_file(empty)),
    "native-other-network": Row("a native file of another preset (deeper: Keras alone would "
                                "load the layers that match and ignore the rest)",
                                "do not fit", native_file(other_network)),
    "native-foreign": Row("a native file holding something else (a pickled module, unrelated "
                          "HDF5 arrays, unnamed arrays)", "expected a", native_file(foreign_content)),
    # commands
    "convert-truncated": Row("resnet-convert from a truncated native file",
                             "error: weights file", convert_native(cut_half)),
    "convert-other-network": Row("resnet-convert from a native file of another preset",
                                 "do not fit", convert_native(other_network)),
    "crosscheck-damaged": Row("resnet-crosscheck --weights with a damaged native file",
                              "could not read it", crosscheck_native(empty)),
    "crosscheck-one-value": Row("resnet-crosscheck --batch 1 where the last stage is 1x1",
                                "train mode: expected more than one value per channel",
                                crosscheck_cmd("--batch", "1", "--input-size", "32")),
    "summary-size": Row("resnet-summary --input-size 0", "--input-size: expected a positive "
                        "integer, got '0'",
                        lambda fw, t: command(summary.main, ["--input-size", "0"])),
    "compare-frameworks": Row("resnet-compare --frameworks torch,mxnet",
                              "did you mean 'mx'?",
                              lambda fw, t: command(compare.main, ["--frameworks",
                                                                  f"{fw},mxnet"])),
    "train-out-file": Row("--out naming a file", "--out: expected a folder, got the file",
                          out_is_a_file),
    "train-out-unwritable": Row("--out where no folder can be made",
                                "--out: expected a folder this user can write",
                                train_flags("--out", "/proc/resnet-no-such-folder")),
    "train-out-used": Row("--out that already holds a run, without --resume",
                          "already holds a run; pass --resume", out_already_used),
    "train-resume-none": Row("--resume where there is no checkpoint",
                             "--resume: expected a checkpoint at", train_flags("--resume")),
    "train-resume-truncated": Row("--resume of a truncated checkpoint",
                                  "expected a safetensors file, could not read it",
                                  resume_from(checkpoint_truncated)),
    "train-resume-no-metadata": Row("--resume of a weights file in place of a checkpoint",
                                    "expected metadata epoch, history, config, framework",
                                    resume_from(checkpoint_without_metadata)),
    "train-resume-other-framework": Row("--resume of another framework's run",
                                        "was made with other settings: framework: expected",
                                        lambda fw, t: resume_from(checkpoint_of(
                                            framework=other_framework(fw)))(fw, t)),
    "train-resume-changed": Row("--resume with another --lr",
                                "--lr: expected 0.1, got 0.05",
                                resume_from(checkpoint_of(lr="0.1"))),
    "train-resume-nan": Row("--resume of a checkpoint with a NaN weight",
                            "stem.conv.weight: expected finite values, got nan",
                            resume_from(checkpoint_of(set_value("stem.conv.weight", 0, np.nan)))),
    "train-batch-one": Row("--batch-size 1 where the last stage is 1x1",
                           "train mode: expected more than one value per channel",
                           train_flags("--batch-size", "1")),
    "train-weight-decay": Row("--weight-decay -1", "--weight-decay: expected a finite number "
                              ">= 0, got '-1'", train_flags("--weight-decay", "-1")),
    "train-lr-nan": Row("--lr nan", "--lr: expected a finite number > 0, got 'nan'",
                        train_flags("--lr", "nan")),
    "train-seed": Row("--seed -1", "--seed: expected an integer >= 0, got '-1'",
                      train_flags("--seed", "-1")),
    "train-arch": Row("--arch resnet19", "got 'resnet19'; did you mean",
                      train_flags("--arch", "resnet19")),
    "train-dataset": Row("--dataset fashion-mnist", "did you mean 'fashion_mnist'?",
                         train_flags("--dataset", "fashion-mnist")),
    # data files
    "idx-truncated": Row("a truncated IDX image file",
                         "expected 6288 bytes for shape (8, 28, 28), got 3000 (the file is truncated",
                         train_on_fashion(**{"train-images-idx3-ubyte.gz":
                                             idx_bytes(np.zeros((8, 28, 28)))[:3000]})),
    "idx-magic": Row("an IDX file of another type (magic 0x0D: floats)",
                     "expected an IDX file of unsigned bytes (magic 0x0000 08 xx)",
                     train_on_fashion(**{"t10k-labels-idx1-ubyte.gz":
                                         b"\x00\x00\x0d\x01" + bytes(8)})),
    "idx-label-range": Row("an IDX label outside [0, 10)",
                           "labels: expected class indices in [0, 10), got 12",
                           train_on_fashion(**{"train-labels-idx1-ubyte.gz":
                                               idx_bytes(np.array([0, 1, 12, 3, 4, 5, 6, 7]))})),
    "idx-counts": Row("IDX images and labels of different counts",
                      "expected as many train labels as images, got 5 labels and 8 images",
                      train_on_fashion(**{"train-labels-idx1-ubyte.gz":
                                          idx_bytes(np.arange(5))})),
    "cifar-truncated": Row("a truncated CIFAR-10 batch", "expected a CIFAR-10 python batch",
                           train_on_cifar(GOOD_CIFAR[:100])),
    "cifar-code": Row("a CIFAR-10 batch whose pickle would run code",
                      "CIFAR batch: expected only arrays, got a reference to builtins.print",
                      train_on_cifar(pickle.dumps({b"data": Evil(), b"labels": [0]}))),
    # numbers a framework cannot hold
    "adapter-lr-float32": Row("an adapter made with lr=1e300 (beyond float32)", LR_INF,
                              adapter_with(lr=1e300)),
    "adapter-lr-tiny": Row("an adapter made with lr=1e-50 (0 in float32)", LR_ZERO,
                           adapter_with(lr=1e-50)),
    "adapter-adam-beta": Row("an adapter with Adam's beta2 0.9999999999 (1.0 in float32)",
                             "betas: expected a number that float32 holds below 1, got "
                             "0.9999999999, which is 1.0 in float32",
                             adapter_with(adam={"betas": (0.9, 0.9999999999)})),
    "train-lr-float32": Row("--lr 1e300", LR_INF, train_flags("--lr", "1e300")),
    "train-lr-tiny": Row("--lr 1e-50", LR_ZERO, train_flags("--lr", "1e-50")),
    "train-weight-decay-float32": Row("--weight-decay 1e300", "--weight-decay: expected a number "
                                      "that float32 holds, got 1e+300, which is inf in float32",
                                      train_flags("--weight-decay", "1e300")),
    "train-momentum-float32": Row("--momentum 0.9999999999 (1.0 in float32)", "--momentum: "
                                  "expected a number that float32 holds below 1, got "
                                  "0.9999999999, which is 1.0 in float32",
                                  train_flags("--momentum", "0.9999999999")),
    "compare-lr-float32": Row("resnet-compare --lr 1e300", LR_INF,
                              for_framework(compare.main, "--lr", "1e300")),
    # resources the machine does not have
    "train-threads": Row("--threads 999, more than the cores", CORES,
                         train_flags("--threads", "999")),
    "compare-threads": Row("resnet-compare --threads 999", CORES,
                           for_framework(compare.main, "--threads", "999")),
    "compare-seeds": Row("resnet-compare --seeds 0", "--seeds: expected a positive integer, got '0'",
                         for_framework(compare.main, "--seeds", "0")),
    "compare-target": Row("resnet-compare --target 1.5", "--target: expected a number in (0, 1], "
                          "got '1.5'", for_framework(compare.main, "--target", "1.5")),
    "bench-threads": Row("resnet-bench --threads 999", CORES,
                         for_framework(bench.main, "--threads", "999")),
    "train-memory": Row("--batch-size 256 --resize 5000 (activations beyond the memory)",
                        MEMORY + "a training step of d2l_resnet18 at --batch-size 256, --resize "
                        "5000", train_flags(*HUGE)),
    "compare-memory": Row("resnet-compare --batch-size 256 --resize 5000",
                          MEMORY + "a training step of d2l_resnet18 at --batch-size 256, "
                          "--resize 5000", for_framework(compare.main, *HUGE)),
    "crosscheck-memory": Row("resnet-crosscheck --batch 256 --input-size 5000",
                             MEMORY + "a training step of d2l_resnet18 at --batch 256, "
                             "--input-size 5000",
                             crosscheck_cmd("--batch", "256", "--input-size", "5000")),
    "bench-batch-sizes": Row("resnet-bench --batch-sizes 1,0", "--batch-sizes: expected distinct "
                             "positive integers, comma-separated (for example 1,8,32), got '1,0'",
                             for_framework(bench.main, "--batch-sizes", "1,0")),
    "bench-latency-sweep": Row("resnet-bench --latency --batch-sizes 1,8", "--latency: expected "
                               "no --batch-sizes with it (latency is one image a call), got "
                               "--batch-sizes 1,8",
                               for_framework(bench.main, "--latency", "--batch-sizes", "1,8")),
    "bench-latency-calls": Row("resnet-bench --latency --latency-calls 0", "--latency-calls: "
                               "expected a positive integer, got '0'",
                               for_framework(bench.main, "--latency", "--latency-calls", "0")),
    "bench-tuned-precision": Row("resnet-bench --tuned --precision bf16", "--tuned: expected none "
                                 "of --latency, --compile, --channels-last, --precision with "
                                 "it (it tries the speed options itself), got --precision bf16",
                                 for_framework(bench.main, "--tuned", "--precision", "bf16")),
    "bench-memory": Row("resnet-bench --batch-size 256 --input-size 5000",
                        MEMORY + "a training step of d2l_resnet18 at --batch-size 256, "
                        "--input-size 5000", for_framework(bench.main, "--batch-size", "256",
                                                           "--input-size", "5000")),
    "summary-memory": Row("resnet-summary --input-size 100000",
                          MEMORY + "an inference step of d2l_resnet18 at --input-size 100000",
                          lambda fw, t: command(summary.main, ["--frameworks", fw,
                                                               "--input-size", "100000"])),
    # a run's life: empty paths, weights that diverge on the last step
    "train-out-empty": Row("--out '' (an unset shell variable)", "--out: expected a path, got ''",
                           train_flags("--out", "")),
    "train-weights-empty": Row("--weights ''", "--weights: expected a path, got ''",
                               train_flags("--weights", "")),
    "train-data-dir-empty": Row("--data-dir ''", "--data-dir: expected a path, got ''",
                                train_flags("--data-dir", "")),
    "compare-out-empty": Row("resnet-compare --out ''", "--out: expected a path, got ''",
                             lambda fw, t: command(compare.main, ["--frameworks", fw, "--out",
                                                                  ""])),
    "convert-empty": Row("resnet-convert with an empty destination", "argument dst: expected a "
                         "path, got ''", lambda fw, t: command(convert.main, [
                             str(t / f"w{NATIVE[fw]}"), ""])),
    "train-diverged": Row("--lr 1e30 --weight-decay 1e30, one step per epoch: the step's loss is "
                          "finite, the weights it leaves are not", DIVERGED_FIRST,
                          train_flags("--arch", "cifar_resnet20", "--epochs", "2", "--limit",
                                      "32", "--lr", "1e30", "--weight-decay", "1e30")),
    # empty, partial and lying data and weights files
    "data-empty-test": Row("a --data-dir whose test files hold no example",
                           "fashion_mnist test split: expected at least one example, got none in",
                           train_on_fashion(**{"t10k-images-idx3-ubyte.gz":
                                               idx_bytes(np.zeros((0, 28, 28))),
                                               "t10k-labels-idx1-ubyte.gz":
                                               idx_bytes(np.zeros(0))})),
    "data-dir-partial": Row("a --data-dir that holds only some of the data set's files",
                            "expected all of its files in",
                            without_file("t10k-labels-idx1-ubyte.gz")),
    "idx-inflates": Row("a gzip IDX file that inflates past the bytes its header promises",
                        "expected 6288 bytes for shape (8, 28, 28), got more than 6288",
                        train_on_fashion(**{"train-images-idx3-ubyte.gz":
                                            idx_bytes(np.zeros((8, 28, 28))) + bytes(5000)})),
    "cifar-references": Row("a CIFAR-10 batch whose labels are references to an array",
                            "expected b'labels' a list of integers",
                            train_on_cifar(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                         b"labels": [np.zeros(3)] * 2}))),
    "npz-header-shape": Row("--weights: an .npz whose header promises another shape",
                            "mis-shaped 1: stem.conv.weight: expected (64, 1, 7, 7), got (3, 3)",
                            weights_file_promising(".npz", "stem.conv.weight", (3, 3))),
    "safetensors-header-shape": Row("--weights: a .safetensors whose header promises another "
                                    "shape", "mis-shaped 1: stem.conv.weight: expected "
                                    "(64, 1, 7, 7), got (3, 3)",
                                    weights_file_promising(".safetensors", "stem.conv.weight",
                                                           (3, 3))),
    # resnet3 predict: refused before the framework runs
    "predict-not-an-image": Row("resnet3 predict on a file that is not an image",
                                "expected a JPEG or PNG file (an image Pillow reads)",
                                predict_cmd(image="text")),
    "predict-no-image": Row("resnet3 predict on an image path that does not exist",
                            "image: expected an existing file, got", predict_cmd(image="none")),
    "predict-top": Row("resnet3 predict --top 11 for a network of 10 classes",
                       "--top: expected at most the network's 10 classes, got 11",
                       predict_cmd("--top", "11")),
    "predict-labels": Row("resnet3 predict --labels with 3 names for 10 classes",
                          "expected 10 class names (one a line), got 3",
                          predict_cmd("--labels", "three")),
    "predict-convention": Row("resnet3 predict --convention d2l (grayscale) for a 3-channel "
                              "network", "--convention: expected one giving the network's 3 "
                              "input channel(s), got 'd2l'", predict_cmd("--convention", "d2l")),
    # features, headless networks and --adapt-stem
    "features-unknown-block": Row("features(x, parts) naming a block the network lacks",
                                  "parts: expected names from stem, stage1, stage2, stage3, "
                                  "head, got 'stage3.9'",
                                  api(lambda a, x, y: a.features(x, ("stage3.0", "stage3.9")))),
    "build-pooling-none": Row("build(..., pooling=None) with a classifier",
                              "pooling: expected 'avg' or 'max' with a classifier (None only "
                              "with num_classes=0), got None",
                              lambda fw, t: refused(lambda: MODULES[fw].build(SPEC,
                                                                              pooling=None))),
    "train-adapt-stem-alone": Row("--adapt-stem without --weights", "--adapt-stem: expected "
                                  "--weights too (it adapts the stem of that file)",
                                  train_flags("--adapt-stem")),
    "train-adapt-stem-input-bn": Row("--adapt-stem for a network with an input BatchNorm",
                                     "--adapt-stem: expected a network without an input "
                                     "BatchNorm (its statistics are per input channel), got "
                                     "gluon_resnet18_v2", lambda fw, t: train(
                                         fw, *DIGITS, "--out", str(t / "run"), "--arch",
                                         "gluon_resnet18_v2", "--adapt-stem", "--new-head",
                                         "--weights", str(t / "any.safetensors"))),
}


def doc_table() -> dict[str, tuple[str, str, str]]:
    """id -> (given, error, test) from the tables in docs/bad-inputs.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0] != "`id`":
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`").replace("\\|", "|"),
                                         cells[4].strip("`"))
    return rows


def doc_rows() -> dict[str, tuple[str, str]]:
    """id -> (given, error) of the rows that test_row runs (the first table)."""
    return {k: (given, error) for k, (given, error, test) in doc_table().items()
            if test.startswith("test_bad_inputs.py::test_row[")}


def test_the_document_lists_exactly_the_tested_rows():
    rows = doc_rows()
    assert len(ROWS) >= 40
    assert list(rows) == list(ROWS)
    for name, row in ROWS.items():
        assert rows[name] == (row.given, row.error), name


def test_rows_tested_elsewhere_name_a_test_that_asserts_their_message():
    """A fault that needs more than one call (a full disk, two processes, a signal) is a row of
    the document whose test is a named function in another test file: that function must exist,
    and its file must contain the row's message, so the row cannot say what no test checks."""
    import ast
    elsewhere = {k: v for k, v in doc_table().items()
                 if not v[2].startswith("test_bad_inputs.py::test_row[")}
    for name, (given, error, test) in elsewhere.items():
        assert name not in ROWS, name
        file, _, function = test.partition("::")
        path = Path(__file__).parent / Path(file).name
        assert path.is_file(), f"{name}: no test file {file}"
        source = path.read_text()
        defined = {n.name for n in ast.walk(ast.parse(source))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert function.split("[")[0] in defined, f"{name}: {file} has no {function}"
        assert error in source, f"{name}: {file} never mentions {error!r}"


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("name", list(ROWS))
def test_row(name, fw, tmp_path, capsys):
    row = ROWS[name]
    if fw not in row.frameworks:
        pytest.skip(f"{name} does not apply to {fw}")
    message = row.check(fw, tmp_path)
    assert row.error in message, f"{fw}: {message}"
    assert "this must never run" not in capsys.readouterr().out
    if fw == "torch":
        assert "weights_only" not in message  # never advise unpickling


def test_messages_are_word_for_word_the_same_in_every_framework(tmp_path):
    """Beyond the shared part: the API rows give the very same message in all three."""
    for name in ("input-nan", "input-empty", "train-one-value", "labels-outside",
                 "weights-negative-variance", "input-too-small"):
        said = {fw: ROWS[name].check(fw, tmp_path) for fw in FRAMEWORKS}
        assert len(set(said.values())) == 1, said


def test_a_last_batch_of_one_is_dropped_alike_in_training(tmp_path):
    """65 examples in batches of 64, cifar_resnet20 at 4x4 (1x1 in the last stage): every
    framework trains on 64, says so, and gives the same first-epoch loss from the same initial
    weights."""
    from common.commands.train import parser, train as run
    losses = {}
    for fw in FRAMEWORKS:
        args = parser("x").parse_args(["--dataset", "digits", "--epochs", "1", "--limit", "65",
                                       "--arch", "cifar_resnet20", "--batch-size", "64",
                                       "--resize", "4", "--out", str(tmp_path / fw)])
        said = []
        summary_ = run(fw, args, log=said.append)
        assert any("last training batch" in s and "dropped" in s for s in said), said
        losses[fw] = summary_["history"][0]["train_loss"]
        assert summary_["history"][0]["examples"] == 64, summary_["history"][0]
    assert max(losses.values()) - min(losses.values()) < 1e-4, losses


def test_compare_runs_the_others_when_one_fails_and_reports_it(tmp_path):
    """One framework cannot write its run folder; the other still trains, and the report lists
    the failure with its message. Exit status 1. (compare's handling is the same for every
    framework, so one pair shows it: TensorFlow failing, MXNet, the quickest to start,
    training.)"""
    failing, other = "tf", "mx"
    out = tmp_path / "cmp"
    out.mkdir()
    (out / failing).write_text("in the way")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = compare.main(["--dataset", "digits", "--epochs", "1", "--limit", "64",
                             "--batch-size", "32", "--resize", "16", "--threads", "1",
                             "--bench-rounds", "0", "--frameworks", f"{failing},{other}",
                             "--out", str(out)])
    assert code == 1
    report = (out / "report.md").read_text()
    failures = report.split("## Failures", 1)[1]
    assert re.search(r"--out: expected a folder, got the file .*" + failing, failures), report
    assert (out / other / "run.json").is_file()
    results = report.split("## Results", 1)[1].split("##", 1)[0]
    from common.frameworks import NAMES
    assert NAMES[other] in results and NAMES[failing] not in results


def test_input_errors_are_input_errors():
    """The API rows raise InputError (a ValueError), which callers can catch by name."""
    x, y = images()
    for fw in FRAMEWORKS:
        with pytest.raises(InputError):
            adapter(fw).logits(x[:, :1])
