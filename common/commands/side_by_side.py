"""docs/side-by-side.md: the four `blocks.py` files aligned definition by definition.

    python -m common.commands.side_by_side            # (re)write docs/side-by-side.md
    python -m common.commands.side_by_side --check    # exit 1 if it is out of date (a test runs this)

Each definition that two or more frameworks share (`Residual`, `Bottleneck`, ...) is one row
of an HTML table, with each framework's source in its own column, its signature, and notes on
what differs and why. Definitions only one framework needs (TensorFlow's explicit padding
layers, JAX's strided slice) follow in their own section. The sources are read with `ast`, so the page always shows
the code as it is; the notes are written here, and each must name a shared definition.
"""
from __future__ import annotations

import argparse
import ast
import html
import sys
from pathlib import Path
from typing import Sequence

from common.core.files import atomic_path
from common.frameworks import RECORDS
from common.commands.cli import description

ROOT = Path(__file__).resolve().parents[2]  # the repository: common/commands/ is two below it
DOC = ROOT / "docs" / "side-by-side.md"
# One column per framework, in the registry's order: its display name and its blocks.py.
COLUMNS = {fw: (r.name, f"{r.package}/blocks.py") for fw, r in RECORDS.items()}

# What a reader comparing the columns should know; one list per shared definition.
NOTES = {
    "_has_bias": ["The same in all four: `use_bias` is a bool or the names of the "
                  "convolutions that keep a bias."],
    "_conv": [
        "PyTorch's builds an `nn.Conv2d` or, without input channels (d2l-en 1.x), an "
        "`nn.LazyConv2d`; Flax's `nn.Conv` always reads them from the input, and is given "
        "its padding as explicit pairs."],
    "pad_shortcut": [
        "**Layout.** PyTorch and Gluon hold batches as NCHW, Keras and Flax as NHWC: the "
        "channels to pad are axis 1 in the first two and the last axis in Keras and Flax.",
        "Flax subsamples with `lax.slice` (`subsample`, below): jnp's strided indexing "
        "becomes a gather, which the ONNX export cannot convert.",
        "Gluon's classic `F.pad` pads only the last two axes of a 4-d array, so in classic "
        "mode its version moves the channels last and back; under `npx.set_np()` it calls "
        "`np.pad` on the channel axis. It also needs `in_channels`, which PyTorch and Keras "
        "read from the array's shape."],
    "_bn": [
        "**BatchNorm arguments.** PyTorch's `momentum=0.1` is the weight of the *new* batch; "
        "Keras's and Gluon's `momentum=0.9` is the weight of the *old* value: the same update "
        "(new = 0.9 old + 0.1 batch).",
        "Flax's `momentum` is also the weight of the old value (its default 0.99); its first "
        "argument is `use_running_average`, d2l's `not training`, and "
        "`use_fast_variance=False` makes it compute the batch variance in two passes, as the "
        "others do, not as E[x^2] - E[x]^2.",
        "Keras's default `epsilon` is 1e-3, the others' 1e-5: the project passes 1e-5 "
        "everywhere.",
        "PyTorch and Gluon are told the channel count; Keras and Flax read it from the first "
        "input."],
    "Residual": [
        "**Signature.** PyTorch's `nn.Conv2d` needs its input channels, so d2l's PyTorch "
        "`Residual` takes `input_channels` first; Keras infers them on the first call; "
        "Gluon infers them too (d2l), or takes `in_channels=` so that nothing is deferred. "
        "Flax's is a dataclass of fields (`num_channels`, `use_1x1conv`, `strides`, "
        "`training`, as d2l's JAX tab writes them); its weights live outside it "
        "(`blk.init(key, X)`, then `blk.apply(variables, X)`).",
        "**Layout.** NCHW in PyTorch and Gluon, NHWC in Keras and Flax; the code reads the "
        "same.",
        "**Padding.** d2l's TensorFlow and JAX tabs write `padding='same'`, which for a "
        "strided 3x3 pads the bottom and right only; PyTorch and Gluon pad one pixel on every "
        "side. `PaddedConv2D` (below, TensorFlow only) pads symmetrically, and Flax's `nn.Conv` "
        "takes the pairs `((1, 1), (1, 1))`, so the four agree.",
        "**BatchNorm.** See `_bn`: the same statistics, with each framework's meaning of "
        "`momentum`.",
        "**Forward.** `forward` (PyTorch), `call` (Keras), `__call__` (Flax, its layers made "
        "in `setup`), `hybrid_forward(F, X)` (Gluon, where "
        "`F` is the imperative or the symbolic operator namespace, so the block can be "
        "hybridized). Gluon's `relu` comes from `_ops(F)`: `F.npx` under `npx.set_np()` (d2l's "
        "MXNet tab), `F` otherwise, read on every call.",
        "`Y += X` in PyTorch, Keras and Flax (where it makes a new array); Gluon writes "
        "`Y + X`, since a symbol has no in-place add."],
    "Bottleneck": [
        "Exercise 3 and ResNeXt: 1x1, grouped 3x3, 1x1. The stride sits on the 3x3 "
        "(torchvision, 'v1.5'); `stride_in_1x1=True` moves it to the first 1x1 (the paper, "
        "Keras applications).",
        "Signature, layout, padding and BatchNorm differ as in `Residual`."],
    "PreActResidual": [
        "Exercise 4 (ResNet v2): BN and ReLU before each convolution, nothing after the sum. "
        "PyTorch and Gluon are told the input channels because the first BatchNorm normalises "
        "the block's input; Keras reads them from it."],
    "PreActBottleneck": [
        "Keras's ResNetV2 strides a block without a projection through a 1x1 max-pool, which "
        "only subsamples: Keras slices `X[:, ::s, ::s, :]`, Flax takes the same strided slice "
        "(`subsample`), the others call their pooling operator."],
    "resnet_block": [
        "d2l's stage. PyTorch's returns a list of blocks (d2l wraps it in `nn.Sequential(*...)`), "
        "Gluon's a `HybridSequential`, Keras's a `ResnetBlock` layer (below), as in d2l's "
        "TensorFlow tab, Flax's an `nn.Sequential` (d2l's JAX tab's `block`)."],
}


def definitions(source: str) -> dict[str, tuple[str, str]]:
    """Top-level function and class name -> (signature, source text), in file order."""
    tree = ast.parse(source)
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            init = node if isinstance(node, ast.FunctionDef) else next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None)
            fields = [] if init or isinstance(node, ast.FunctionDef) else [  # a dataclass's
                ast.unparse(n) for n in node.body if isinstance(n, ast.AnnAssign)]
            signature = (f"{node.name}({ast.unparse(init.args)})" if init
                         else f"{node.name}({', '.join(fields)})")
            signature = signature.replace("(self, ", "(").replace("(self)", "()")
            out[node.name] = (signature, ast.get_source_segment(source, node))
    return out


def _cell(code: str) -> str:
    return f"<td valign=\"top\"><pre><code>{html.escape(code, quote=False)}</code></pre></td>"


def _listed(columns: dict[str, tuple[str, str]]) -> str:
    """The columns' files as a sentence: "`a`, `b` and `c`"."""
    paths = [f"`{path}`" for _, path in columns.values()]
    return ", ".join(paths[:-1]) + " and " + paths[-1] if len(paths) > 1 else paths[0]


def render(sources: dict[str, str]) -> str:
    """The page for the blocks.py sources (keyed by framework: torch, tf, mx, jax)."""
    defs = {fw: definitions(src) for fw, src in sources.items()}
    order = list(dict.fromkeys(name for fw in COLUMNS for name in defs[fw]))
    shared = [n for n in order if sum(n in defs[fw] for fw in COLUMNS) >= 2]
    unknown = sorted(set(NOTES) - set(shared))
    if unknown:
        raise ValueError(f"notes: expected names of definitions that frameworks share, got "
                         f"{', '.join(unknown)}")
    head = "".join(f"<th>{title}<br><code>{path}</code></th>" for title, path in COLUMNS.values())
    lines = [
        "# The four blocks.py files side by side",
        "",
        f"Generated by `python -m common.commands.side_by_side` from {_listed(COLUMNS)}; a test "
        "fails when this page is out of date. Each row is one definition, with each framework's source in its own column and "
        "what differs below it. Every file imports only its framework: copy one into a d2l "
        "notebook ([Coursework](coursework.md)).",
        "",
    ]
    for title, names in (("Shared definitions", shared),
                         ("Only in one framework", [n for n in order if n not in shared])):
        lines += [f"## {title}", ""]
        for name in names:
            lines += [f"### `{name}`", ""]
            lines += [f"- {note}" for note in NOTES.get(name, [])]
            lines += ["", "<table>", f"<tr>{head}</tr>"]
            lines.append("<tr>" + "".join(
                f"<td><code>{html.escape(defs[fw][name][0])}</code></td>" if name in defs[fw]
                else "<td>(none)</td>" for fw in COLUMNS) + "</tr>")
            lines.append("<tr>" + "".join(
                _cell(defs[fw][name][1]) if name in defs[fw] else "<td></td>"
                for fw in COLUMNS) + "</tr>")
            lines += ["</table>", ""]
    return "\n".join(lines)


def current() -> str:
    """The page for the blocks.py files as they are now."""
    return render({fw: (ROOT / path).read_text() for fw, (_, path) in COLUMNS.items()})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.commands.side_by_side", description=description(__doc__))
    p.add_argument("--check", action="store_true", help=f"exit 1 if {DOC.name} is out of date")
    args = p.parse_args(argv)
    text = current()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC}: out of date; run python -m common.commands.side_by_side", file=sys.stderr)
            return 1
        print(f"{DOC}: current")
        return 0
    with atomic_path(DOC) as tmp:
        Path(tmp).write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
