"""The notebooks in notebooks/: committed exactly as make_notebooks.py writes them, without
outputs, and each one runs top to bottom in small mode (RESNET3_NOTEBOOK_SMALL=1) in a kernel of
this venv's Python, printing the values of d2l's chapter and of the oracle in common/."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from functools import reduce
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from common.frameworks import FRAMEWORKS, record, shape_as_nchw
from common.core.oracle import BlockConfig, ParamCounts, block_layers, block_output, flops, part_table
from common.core.oracle import param_counts as oracle_counts
from common.core.spec import get_spec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# The sentence each notebook opens with names the edition of d2l it follows; an edition fixes the
# input size of its shape table (the classic edition's 224, d2l-en 1.x's 96).
EDITION = re.compile(r"It follows (?:d2l's )?\*\*(classic edition|d2l-en 1\.x)\*\*")
SHAPE_SIZE = {"classic edition": 224, "d2l-en 1.x": 96}
CELL_TIMEOUT = 180  # seconds for one cell (the longest, training, takes ~5-10 s here)
DEADLINE = 300      # seconds for a whole notebook, kernel start included (10-40 s here)

# The shapes d2l's chapter prints for a 1x1x224x224 input (d2l-en 1.x's JAX tab: 1x96x96x1),
# layer by layer (1.x: module by module), per framework tab.
D2L_TORCH_LINES = [f"Sequential output shape: torch.Size([1, {s}])" for s in
                   ("64, 56, 56", "64, 56, 56", "128, 28, 28", "256, 14, 14", "512, 7, 7")] + [
    "AdaptiveAvgPool2d output shape: torch.Size([1, 512, 1, 1])",
    "Flatten output shape: torch.Size([1, 512])", "Linear output shape: torch.Size([1, 10])"]
D2L_SHAPES = {
    "torch": [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14),
              (1, 512, 7, 7), (1, 512, 1, 1), (1, 512), (1, 10)],
    "tf": [(1, 112, 112, 64)] * 3 + [(1, 56, 56, 64), (1, 56, 56, 64), (1, 28, 28, 128),
                                     (1, 14, 14, 256), (1, 7, 7, 512), (1, 512), (1, 10)],
    "mx": [(1, 64, 112, 112)] * 3 + [(1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28),
                                     (1, 256, 14, 14), (1, 512, 7, 7), (1, 512, 1, 1), (1, 10)],
    "jax": [(1, 24, 24, 64), (1, 24, 24, 64), (1, 12, 12, 128), (1, 6, 6, 256), (1, 3, 3, 512),
            (1, 10)],
}


def generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text_of(cell) -> str:
    """What a code cell printed (on stdout: frameworks warn on stderr) and returned, as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.name == "stdout":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", "") + "\n")
    return "".join(parts)


def cell_with(nb, snippet: str):
    """The one code cell whose source holds snippet."""
    cells = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    assert len(cells) == 1, f"expected one code cell with {snippet!r}, found {len(cells)}"
    return cells[0]


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


def execute(fw: str, out: Path, monkeypatch) -> tuple[nbformat.NotebookNode, float]:
    """Run one notebook in small mode; the training run goes to `out`. A probe cell appended at
    the end prints the kernel's Python."""
    nb = nbformat.read(generator().path_of(fw), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)", id="probe"))
    monkeypatch.setenv("RESNET3_NOTEBOOK_SMALL", "1")  # the kernel inherits this environment
    monkeypatch.setenv("RESNET3_NOTEBOOK_OUT", str(out))
    # The kernel imports this checkout's packages (as the tests do), not an installed copy.
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    start = time.monotonic()

    def timeout(cell) -> int:
        # Each cell gets CELL_TIMEOUT, but never more than what is left of the DEADLINE.
        return max(1, min(CELL_TIMEOUT, int(DEADLINE - (time.monotonic() - start))))

    # "python3" is ipykernel's kernelspec in this venv (share/jupyter/kernels, preferred over the
    # user's inside a venv); jupyter_client runs its "python" as sys.executable. The probe checks.
    client = NotebookClient(nb, kernel_name="python3", timeout_func=timeout, startup_timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:  # the executed notebook, to read when a check fails
        nbformat.write(nb, out / f"{generator().path_of(fw).stem}.executed.ipynb")
    return nb, time.monotonic() - start


def test_committed_notebooks_equal_the_generators_output():
    gen = generator()
    for fw in FRAMEWORKS:
        assert gen.path_of(fw).read_text() == gen.notebook_text(fw), \
            f"{gen.path_of(fw).name}: run python notebooks/make_notebooks.py"


def test_every_framework_has_a_notebook_that_names_its_edition():
    gen = generator()
    assert list(gen.NOTEBOOKS) == list(FRAMEWORKS) and set(D2L_SHAPES) == set(FRAMEWORKS)
    for fw in FRAMEWORKS:
        assert gen.path_of(fw).name == f"resnet_{record(fw).notebook}.ipynb"
        first = nbformat.read(gen.path_of(fw), as_version=4).cells[0].source
        assert len(EDITION.findall(first)) == 1, first
        # the other notebooks, named in the opening cell
        assert all(gen.path_of(o).name in first for o in FRAMEWORKS if o != fw), first


def edition_of(nb) -> str:
    return EDITION.search(nb.cells[0].source).group(1)


def test_committed_notebooks_have_no_outputs():
    gen = generator()
    for fw in FRAMEWORKS:
        nb = nbformat.read(gen.path_of(fw), as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, cell.id


def expected_blocks(layout: str) -> list[tuple[tuple[int, ...], ParamCounts]]:
    """Output shape and counts of the exercise blocks, in the notebooks' order, from the oracle."""
    basic, bottleneck = BlockConfig(), BlockConfig(kind="bottleneck")
    wide, preact = (4, 256, 6, 6), BlockConfig(preact=True)
    blocks = [(wide, 256, 1, False, None, basic), (wide, 256, 1, False, None, bottleneck),
              (wide, 512, 2, True, None, bottleneck), ((4, 3, 6, 6), 3, 1, False, None, preact),
              ((4, 3, 6, 6), 6, 2, True, None, preact),
              (wide, 256, 1, False, 128, BlockConfig(kind="bottleneck", groups=32))]
    rows = []
    for shape, channels, stride, project, width, cfg in blocks:
        layers = block_layers("b", shape, channels, stride, project, width=width, config=cfg)
        out = block_output(layers, cfg)
        rows.append((out if layout == "NCHW" else (out[0], out[2], out[3], out[1]),
                     reduce(lambda a, b: a + b, (layer.counts for layer in layers))))
    return rows


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_notebook_runs_in_small_mode_and_prints_d2ls_values(fw, tmp_path, monkeypatch):
    nb, seconds = execute(fw, tmp_path, monkeypatch)
    print(f"{fw}: {seconds:.1f} s")  # shown with -s; the DEADLINE guards against a hang only
    layout = record(fw).layout
    size = SHAPE_SIZE[edition_of(nb)]

    # the kernel is this venv's Python
    assert text_of(nb.cells[-1]).strip() == sys.executable
    assert "small mode" in text_of(cell_with(nb, "SMALL = "))

    # d2l's two Residual examples
    nchw = [(4, 3, 6, 6), (4, 6, 3, 3)]
    shown = [ints(text_of(c)) for c in nb.cells if c.cell_type == "code"
             and c.source.startswith("blk = Residual(")]
    assert [shape_as_nchw(s, layout) for s in shown] == nchw

    # the network: d2l's b3 is stage2; its shapes are the oracle's and the lines are d2l's
    assert "b3 == net.stage2: True" in text_of(cell_with(nb, "b3 = "))
    spec = get_spec("d2l_resnet18")
    parts = [line.split() for line in text_of(cell_with(nb, "part_shapes(net, X)")).splitlines()]
    assert [(p[0], shape_as_nchw(ints(" ".join(p[3:])), layout)) for p in parts] == \
        [(row.name, row.out_shape) for row in part_table(spec, size)]
    loop = text_of(cell_with(nb, "'output shape:\\t'")).splitlines()
    assert [ints(line.split("output shape:")[1]) for line in loop] == D2L_SHAPES[fw]
    if fw == "torch":
        assert [" ".join(line.split()) for line in loop] == D2L_TORCH_LINES

    # training: the embedded data set (small mode), d2l's lines, the run's files, the plot
    assert "training on mnist5k" in text_of(cell_with(nb, "load_dataset(\"mnist5k\")"))
    trained = text_of(cell_with(nb, "run = train("))
    metrics = (tmp_path / fw / "metrics.jsonl").read_text().splitlines()
    last = json.loads(metrics[-1])
    assert (f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
            f"test acc {last['test_acc']:.3f}") in trained.splitlines()
    assert re.search(r"^\d+\.\d examples/sec on cpu$", trained, re.M), trained
    assert (tmp_path / fw / "weights.safetensors").is_file()
    assert "image/png" in cell_with(nb, "plt.show()").outputs[-1].data

    # Table 1: each framework's parameter counts are the oracle's
    table = text_of(cell_with(nb, "PAPER_GFLOPS = ")).splitlines()[1:]
    rows = {line.split()[0]: line for line in table}
    assert list(rows) == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                          "resnext50_32x4d"]
    for name, line in rows.items():
        counts = oracle_counts(get_spec(name))
        numbers = line.split("]")[1].split()
        assert numbers[:3] == [f"{counts.trainable:,}", f"{counts.non_trainable:,}",
                               f"{counts.total:,}"], line
        v1 = get_spec(name, stride_in_1x1=get_spec(name).block == "bottleneck")
        assert numbers[3:5] == [f"{flops(get_spec(name)) / 2e9:.1f}", f"{flops(v1) / 2e9:.1f}"]

    # the exercises' blocks: shapes and counts from the oracle
    shows = re.findall(r"output (\([\d, ]+\))  trainable ([\d,]+)  BN stats ([\d,]+)",
                       "".join(text_of(c) for c in nb.cells if c.cell_type == "code"))
    assert [(ints(s), ParamCounts(int(t.replace(",", "")), int(b.replace(",", ""))))
            for s, t, b in shows] == expected_blocks(layout)
    grouped = ints(text_of(cell_with(nb, "groups=32")).splitlines()[-1].split(":")[1])
    # the kernel in the framework's layout: Keras's and Flax's HWIO, the others' OIHW
    assert grouped == ((3, 3, 4, 128) if layout == "NHWC" else (128, 4, 3, 3))

    # the closing cell: the trained weights give the same predictions in every framework, its own
    # first
    lines = text_of(cell_with(nb, "load_weights(RUN")).splitlines()
    names = [record(fw).name, *(record(o).name for o in FRAMEWORKS if o != fw)]
    assert [line[:17].strip() for line in lines] == names, lines
    assert all("same as" in line and line.split("'s: ")[1].startswith("True")
                                   for line in lines), lines
    assert all(float(line.rsplit(" ", 1)[1]) < 1e-3 for line in lines), lines
