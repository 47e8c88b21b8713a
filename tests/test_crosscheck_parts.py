"""resnet-crosscheck --per-part: every part's and block's output per framework pair in eval and
train mode, naming the first beyond tolerance; a difference planted in one block of one
framework (its BatchNorm epsilon) is named there, not before."""
from __future__ import annotations

import numpy as np
from common.commands.crosscheck import per_part
from common.core.init import init_weights
from common.core.spec import ResNetSpec, Stage, Stem
from common.frameworks import FRAMEWORKS

SPEC = ResNetSpec("tiny", stem=Stem(channels=8, kernel_size=3, stride=1, pool=False),
                  in_channels=3, num_classes=5,
                  stages=(Stage(8, 1), Stage(16, 2, stride=2, project=True)))
X = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)


def test_per_part_agrees_everywhere_without_a_planted_difference():
    text, ok = per_part(SPEC, init_weights(SPEC), X)
    assert ok, text
    assert text.splitlines()[-1].startswith("every part and block within tolerance")
    for name in ("stem", "stage1.0", "stage1", "stage2.0", "stage2.1", "stage2", "head"):
        assert sum(line.split()[0] == name for line in text.splitlines()[2:]) == 2, name


def test_per_part_names_the_block_with_a_planted_epsilon(monkeypatch):
    import resnet_torch.model as torch_model
    made = torch_model.ResNet.__init__

    def planted(self, spec):  # PyTorch's copy of stage2.1 alone normalises with eps 1e-2
        made(self, spec)
        self.stage2[1].bn1.eps = 1e-2
    monkeypatch.setattr(torch_model.ResNet, "__init__", planted)
    text, ok = per_part(SPEC, init_weights(SPEC), X)
    assert not ok
    assert text.splitlines()[-1].startswith(
        f"first beyond tolerance: stage2.1 in eval mode, torch vs {FRAMEWORKS[1]}"), text


def test_crosscheck_command_prints_the_per_part_table(capsys, monkeypatch):
    from common.commands import crosscheck  # the tiny net, and the logits table left out
    monkeypatch.setattr(crosscheck, "spec_of", lambda args: SPEC)
    monkeypatch.setattr(crosscheck, "crosscheck", lambda *args: ("logits table", True))
    assert crosscheck.main(["--input-size", "12", "--batch", "2", "--per-part"]) == 0
    out = capsys.readouterr().out.split("per part and block:\n", 1)[1].splitlines()
    assert [line.split()[:2] for line in out[2:5]] == [["stem", "eval"], ["stem", "train"],
                                                       ["stage1.0", "eval"]]
    assert out[-1].startswith("every part and block within tolerance")
