"""Where a training run's data came from, and what it lacks: every framework's run records the
folder in run.json (`data_from`) and warns, naming them, of classes without an example."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.commands.train import parser, train
from common.frameworks import FRAMEWORKS, NAMES
from tests.test_data import write_fashion


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_a_run_records_its_data_folder_and_warns_of_missing_classes(fw, tmp_path):
    folder = tmp_path / "data" / "fashion-mnist"
    arrays = write_fashion(folder, n_train=6, n_test=4)
    absent = sorted(set(range(10)) - set(arrays["train-labels-idx1-ubyte.gz"].tolist()))
    assert absent
    args = parser("x").parse_args(["--dataset", "fashion_mnist", "--data-dir",
                                   str(tmp_path / "data"), "--epochs", "1", "--batch-size", "3",
                                   "--resize", "16", "--arch", "cifar_resnet20",
                                   "--out", str(tmp_path / "run")])
    said = []
    summary = train(fw, args, log=said.append)
    warning = (f"{NAMES[fw]}: warning: the training split of fashion_mnist has no example of "
               f"class{'es' if len(absent) > 1 else ''} {', '.join(map(str, absent))}")
    assert warning in said, said
    assert summary["data_from"] == str(folder.resolve())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_from"] == str(
        folder.resolve())
    assert np.isfinite(summary["history"][0]["train_loss"])
