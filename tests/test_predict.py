"""`resnet3 predict` on real photographs (matplotlib's sample data): one file converted through
every weights format that resnet-convert writes (each framework's own among them) gives the
top-5 classes, names and probabilities of the canonical file; with --framework all every
framework of the registry gives them and the output says that they agree."""
from __future__ import annotations

import re

import numpy as np
import pytest

from common.commands import convert, predict
from common.commands.main import main as resnet3
from common.core.conventions import CONVENTIONS, load_image, normalise
from common.core.init import init_weights
from common.core.presets import convention_of
from common.core.spec import get_spec
from common.core.weights import save_weights
from common.frameworks import FRAMEWORKS
from tests.test_conventions import PHOTOS

# A library format reads the presets of its library; the others take resnet18 itself.
ARCH = {"keras": "keras_resnet50", "gluon": "gluon_resnet18_v1"}
LINE = re.compile(r"^    (\d+)\. (\d\.\d{4})  (.+)$")
IMAGES = [str(PHOTOS["grace_hopper"]), str(PHOTOS["present"])]


def arch_of(fmt: str) -> str:
    return ARCH.get(fmt, "resnet18")


def printed_tops(text: str) -> list[list[tuple[float, str]]]:
    """Each framework block's (probability, class) lines, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            if match.group(1) == "1":
                current = []
                blocks.append(current)
            current.append((float(match.group(2)), match.group(3)))
    return blocks


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """arch -> a canonical file with 1000 class names in its metadata; the reference top-5 of
    each arch (PyTorch on the canonical weights)."""
    folder = tmp_path_factory.mktemp("predict")
    (folder / "labels.txt").write_text("".join(f"name{i}\n" for i in range(1000)))
    files, reference = {}, {}
    for arch in sorted(set(map(arch_of, convert.FORMATS))):
        spec = get_spec(arch)
        weights = init_weights(spec, 0)
        raw = save_weights(weights, folder / f"{arch}.raw.safetensors")
        files[arch] = folder / f"{arch}.safetensors"
        assert convert.main([str(raw), str(files[arch]), "--arch", arch,
                             "--labels", str(folder / "labels.txt")]) == 0
        conv = CONVENTIONS[convention_of(spec)]  # the preset's, as tests/test_conventions.py pins it
        x = normalise(np.concatenate([load_image(p, conv) for p in IMAGES]), conv)
        probs = predict.probabilities(spec, weights, x, ("torch",))["torch"]
        reference[arch] = [[(p[c], f"name{c} ({c})") for c in predict.top_k(p[None], 5)[0]]
                           for p in probs]
    return folder, files, reference


@pytest.mark.parametrize("fmt", list(convert.FORMATS))
def test_predictions_are_the_same_from_every_format(fmt, sources, capsys):
    folder, files, reference = sources
    arch = arch_of(fmt)
    target = folder / f"{fmt}{convert.FORMATS[fmt].suffixes[0]}"
    assert convert.main([str(files[arch]), str(target), "--arch", arch, "--to", fmt]) == 0
    capsys.readouterr()  # PyTorch reads every format (test_every_framework_agrees...: the rest)
    assert resnet3(["predict", *IMAGES, "--weights", str(target), "--arch", arch,
                    "--from", fmt, "--framework", "torch"]) == 0
    tops = printed_tops(capsys.readouterr().out)
    assert len(tops) == len(IMAGES)
    for got, want in zip(tops, reference[arch]):
        assert [name for _, name in got] == [name for _, name in want], fmt
        np.testing.assert_allclose([p for p, _ in got], [p for p, _ in want], atol=1.5e-4)


def test_every_framework_agrees_on_the_photographs(sources, capsys):
    folder, files, reference = sources
    capsys.readouterr()
    assert resnet3(["predict", *IMAGES, "--weights", str(files["resnet18"]),
                    "--arch", "resnet18", "--framework", "all", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "input convention torchvision" in out
    tops = printed_tops(out)
    assert len(tops) == len(IMAGES) * len(FRAMEWORKS)
    for i, want in enumerate(reference["resnet18"]):
        for got in tops[i * len(FRAMEWORKS):(i + 1) * len(FRAMEWORKS)]:
            assert [name for _, name in got] == [name for _, name in want]
    verdict = re.search(r"top-5 (agree|DIFFER) across (.+); largest probability difference "
                        r"(\S+) \((\S+)\)", out)
    assert verdict and verdict.group(1) == "agree", out
    assert verdict.group(2) == ", ".join(FRAMEWORKS)
    assert float(verdict.group(3)) < 1e-5


def test_agreement_names_a_disagreement():
    probs = {"a": np.array([[0.5, 0.3, 0.2]]), "b": np.array([[0.3, 0.5, 0.2]])}
    assert predict.agreement(probs, 1) == (False, 0.2, "a-b")
    assert predict.agreement(probs, 1)[0] is False
    assert predict.agreement({"a": probs["a"], "b": probs["a"] + 1e-9}, 2)[0] is True
