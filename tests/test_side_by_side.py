"""docs/side-by-side.md is current, shows each blocks.py as it is, and each blocks.py can be
copied alone into coursework: it imports only its framework and the standard library."""
from __future__ import annotations

import ast
import html
import subprocess
import sys

import pytest

from common.commands import side_by_side
from common.commands.side_by_side import COLUMNS, DOC, ROOT, current, definitions, render

FRAMEWORK_MODULE = {"torch": {"torch"}, "tf": {"tensorflow"}, "mx": {"mxnet"},
                    "jax": {"jax", "flax"}}


def sources() -> dict[str, str]:
    return {fw: (ROOT / path).read_text() for fw, (_, path) in COLUMNS.items()}


def test_the_committed_page_is_current(capsys):
    assert DOC.read_text() == current(), "run: python -m common.commands.side_by_side"
    assert side_by_side.main(["--check"]) == 0
    assert "current" in capsys.readouterr().out


def test_check_fails_when_a_blocks_file_changes(tmp_path, monkeypatch, capsys):
    src = sources()
    src["mx"] = src["mx"].replace("Y = relu(self.bn1(self.conv1(X)))",
                                  "Y = relu(self.bn1(self.conv1(X))) * 1")
    assert src["mx"] != sources()["mx"], "the line to change is gone from resnet_mx/blocks.py"
    monkeypatch.setattr(side_by_side, "current", lambda: render(src))
    assert side_by_side.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_residual_sits_in_adjacent_columns_with_each_frameworks_source():
    page = DOC.read_text()
    section = page.split("### `Residual`", 1)[1].split("### ", 1)[0]
    rows = [r for r in section.split("<tr>") if r.strip()]
    code_row = next(r for r in rows if "<pre>" in r)
    cells = code_row.split("<td")[1:]
    assert len(cells) == len(COLUMNS)
    for cell, (fw, src) in zip(cells, sources().items()):
        assert html.escape(definitions(src)["Residual"][1], quote=False) in cell, fw
    for topic in ("Signature", "Layout", "Padding", "BatchNorm"):
        assert f"**{topic}.**" in section


def test_definitions_only_one_framework_has_are_listed_apart():
    page = DOC.read_text()
    only = page.split("## Only in one framework", 1)[1]
    assert "### `PaddedConv2D`" in only and "### `PaddedConv2D`" not in page.split(
        "## Only in one framework")[0]
    shared = page.split("## Only in one framework", 1)[0]
    for name in ("Residual", "Bottleneck", "PreActResidual", "PreActBottleneck", "resnet_block"):
        assert f"### `{name}`" in shared


def test_a_note_for_a_name_no_framework_shares_is_refused(monkeypatch):
    monkeypatch.setitem(side_by_side.NOTES, "Residul", ["typo"])
    with pytest.raises(ValueError, match="expected names of definitions that frameworks share, "
                                         "got Residul"):
        render(sources())


@pytest.mark.parametrize("fw", list(COLUMNS))
def test_blocks_file_imports_only_its_framework_and_the_standard_library(fw):
    tree = ast.parse(sources()[fw])
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots - sys.stdlib_module_names == FRAMEWORK_MODULE[fw]


# d2l's two shape examples, with each framework's own input (TensorFlow's is NHWC).
D2L_EXAMPLES = {
    "torch": """
import torch
from blocks import Residual
X = torch.rand(4, 3, 6, 6)
print(tuple(Residual(3, 3)(X).shape), tuple(Residual(3, 6, use_1x1conv=True, strides=2)(X).shape))
""",
    "tf": """
import tensorflow as tf
from blocks import Residual
X = tf.random.uniform((4, 6, 6, 3))
print(tuple(Residual(3)(X).shape), tuple(Residual(6, use_1x1conv=True, strides=2)(X).shape))
""",
}
EXPECTED = {"torch": "(4, 3, 6, 6) (4, 6, 3, 3)", "tf": "(4, 6, 6, 3) (4, 3, 3, 6)"}


@pytest.mark.parametrize("fw", list(D2L_EXAMPLES))
def test_a_copied_blocks_file_runs_d2ls_shape_examples_alone(fw, tmp_path):
    (tmp_path / "blocks.py").write_text(sources()[fw])
    (tmp_path / "example.py").write_text(D2L_EXAMPLES[fw])
    # -E: no PYTHONPATH; the script's own folder (the copy) comes first on the path.
    done = subprocess.run([sys.executable, "-E", "example.py"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == EXPECTED[fw]
