"""--adapt-stem: a 3-channel file fine-tunes on 1-channel data, its stem kernel summed over the
input channels (timm's in_chans rule; other channel counts: repeated and scaled), recorded in
run.json and checked by --resume; without the flag the file is refused as before."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.commands.train import main as train_main, parser, train
from common.core.init import init_weights
from common.core.spec import get_spec
from common.core.weights import adapt_stem, load_weights, save_weights

KERNEL = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)


def test_a_summed_kernel_sees_a_gray_image_as_the_file_saw_it_in_three_channels():
    gray = torch.from_numpy(np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32))
    one = adapt_stem({"stem.conv.weight": KERNEL}, 1)["stem.conv.weight"]
    assert one.shape == (4, 1, 3, 3)
    np.testing.assert_allclose(F.conv2d(gray, torch.from_numpy(one)).numpy(),
                               F.conv2d(gray.repeat(1, 3, 1, 1), torch.from_numpy(KERNEL)).numpy(),
                               rtol=0, atol=1e-5)
    five = adapt_stem({"stem.conv.weight": KERNEL}, 5)["stem.conv.weight"]  # R G B R G, x 3/5
    np.testing.assert_allclose(five, KERNEL[:, [0, 1, 2, 0, 1]] * 0.6, rtol=1e-6)


@pytest.fixture(scope="module")
def rgb_file(tmp_path_factory):
    """A 3-channel, 10-class cifar_resnet20 file (what an ImageNet-format file is to digits)."""
    path = tmp_path_factory.mktemp("adapt") / "rgb.safetensors"
    save_weights(init_weights(get_spec("cifar_resnet20", in_channels=3, num_classes=10), 7), path)
    return path


def test_train_adapts_the_stem_only_when_asked_records_it_and_resume_checks_it(
        rgb_file, tmp_path, capsys):
    argv = ["--arch", "cifar_resnet20", "--dataset", "digits", "--limit", "32", "--epochs", "1",
            "--resize", "8", "--batch-size", "16", "--lr", "1e-6", "--weights", str(rgb_file),
            "--out", str(tmp_path / "run")]
    assert train_main("torch", argv) == 2  # without the flag: the error it always gave
    assert ("mis-shaped 1: stem.conv.weight: expected (16, 1, 3, 3), got (16, 3, 3, 3)"
            in capsys.readouterr().err)
    lines = []
    train("torch", parser("t").parse_args([*argv, "--adapt-stem"]), log=lines.append)
    assert "PyTorch: its 3-channel stem adapted to 1 channel(s) (--adapt-stem)" in lines, lines
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["adapt_stem"] is True
    end = load_weights(tmp_path / "run" / "weights.safetensors")
    start = load_weights(rgb_file)["stem.conv.weight"].sum(axis=1, keepdims=True)
    assert np.abs(end["stem.conv.weight"] - start).max() < 1e-4
    again = [*argv, "--epochs", "2", "--resume"]
    assert train_main("torch", again) == 2
    assert "--adapt-stem: expected True, got False" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main("torch", ["--dataset", "digits", "--adapt-stem"])
    assert "--adapt-stem: expected --weights too" in capsys.readouterr().err
