"""The metrics a run writes, checked by value: each is recomputed here, outside the training
loop, from the same initial weights and the same data order, in every framework.

The replay steps its own adapter and, before each step, takes the train-mode logits of a
second adapter holding the same weights; the loss is cross-entropy in NumPy (float64), the
accuracy an argmax, the test accuracy one eval-mode pass over the test set after the epoch.
A loop that averaged over the wrong count, counted correct predictions after the step, left
out a batch, or evaluated in train mode gives other numbers.
"""
import json

import numpy as np
import pytest

from common.core.data import to_float
from common.frameworks import FRAMEWORKS, load
from common.core.init import init_weights
from common.core.optim import OptimizerConfig
from common.core.spec import get_spec
from common.commands.train import parser, train
from common.core.weights import load_weights
from tests.test_training import tiny_data

# 46 examples in batches of 16: the last batch is short (14), so a loop that weighted each
# batch's mean loss by the batch size, not by its examples, gives another mean. (A last batch
# of one is dropped instead: tests/test_bad_inputs.py pins that and its count.)
N_TRAIN, BATCH, EPOCHS, LR, MOMENTUM = 46, 16, 2, 0.05, 0.9
ARCH = "cifar_resnet20"  # at the data's 12 px its last stage is 3x3 (ResNet-18's is 1x1)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


def replay(fw, data, seed=0):
    """Per epoch: (mean loss, accuracy, examples) of the training steps, test accuracy; and
    the final weights."""
    module = load(fw)
    spec = get_spec(ARCH, in_channels=1, num_classes=data.num_classes)
    stepper = module.Adapter(spec, init_weights(spec, seed),
                             optimizer=OptimizerConfig("sgd", LR, MOMENTUM, 0.0))
    probe = module.Adapter(spec, init_weights(spec, seed))
    test_x = to_float(data.test_x)
    rows = []
    for epoch in range(EPOCHS):
        # The documented order: a permutation per (seed, epoch), then batches in that order.
        order = np.random.default_rng([seed, epoch]).permutation(len(data.train_y))
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            if len(idx) == 1:
                continue
            xb, yb = to_float(data.train_x[idx]), data.train_y[idx]
            probe.set_weights(stepper.get_weights())
            logits = probe.logits(xb, training=True)
            loss_sum += float(cross_entropy(logits, yb).sum())
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            stepper.train_step(xb, yb)
        probe.set_weights(stepper.get_weights())
        test_acc = float((probe.logits(test_x).argmax(1) == data.test_y).mean())
        rows.append({"train_loss": loss_sum / seen, "train_acc": correct / seen,
                     "examples": seen, "test_acc": test_acc})
    return rows, stepper.get_weights()


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_metrics_equal_an_independent_recomputation(fw, tmp_path):
    data = tiny_data(n_train=N_TRAIN, n_test=40)
    args = parser("test").parse_args(["--arch", ARCH, "--batch-size", str(BATCH), "--resize",
                                      "0", "--epochs", str(EPOCHS), "--lr", str(LR),
                                      "--momentum", str(MOMENTUM), "--out", str(tmp_path / "run")])
    train(fw, args, data=data, log=lambda *_: None)
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    expected, final = replay(fw, data)
    assert [r["epoch"] for r in written] == list(range(1, EPOCHS + 1))
    for got, want in zip(written, expected):
        assert got["examples"] == want["examples"] == N_TRAIN
        assert got["test_examples"] == 40
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5, abs=1e-6)
        assert got["train_acc"] == want["train_acc"]  # counts of argmax: exact
        assert got["test_acc"] == want["test_acc"]
    run = load_weights(tmp_path / "run" / "weights.safetensors")
    worst = max(float(np.abs(run[n] - final[n]).max()) for n in final)
    assert worst <= 1e-5, f"the run's final weights differ from the replay's by {worst:.2e}"
    # The figures moved: a loop that wrote constants would not pass the comparisons above
    # by luck, but say it plainly.
    assert written[0]["train_loss"] != written[1]["train_loss"]
