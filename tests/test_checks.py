"""Bad labels and non-finite inputs: one clear error, word for word the same in all three
frameworks, from every adapter entry point, and from a data set when it loads."""
import numpy as np
import pytest

from common.core.checks import InputError
from common.core.data import DataError, Dataset
from common.frameworks import FRAMEWORKS
from common.core.init import init_weights
from common.core.spec import get_spec
from tests.helpers import MODULES, blocks_per_stage

SPEC = get_spec("cifar_resnet20")
ADAPTERS = {fw: MODULES[fw].Adapter(SPEC, init_weights(SPEC, 0)) for fw in FRAMEWORKS}


def batch(n=4, size=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 3, size, size), dtype=np.float32), rng.integers(0, 10, n)


def errors(call) -> dict[str, str]:
    """The message each framework's adapter raises for call(adapter)."""
    out = {}
    for fw, adapter in ADAPTERS.items():
        with pytest.raises(InputError) as err:
            call(adapter)
        out[fw] = str(err.value)
    return out


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 10, 2], "labels: expected class indices in [0, 10), got 10 at position 2"),
    ([0, -1, 3, 2], "labels: expected class indices in [0, 10), got -1 at position 1"),
    ([0.0, 1.0, 2.0, 3.0], "labels: expected integer class indices, got dtype float64"),
    ([True, False, True, False], "labels: expected integer class indices, got dtype bool"),
    ([0, 1, 2], "labels: expected one per example, shape (4,), got shape (3,)"),
    ([[0], [1], [2], [3]], "labels: expected one per example, shape (4,), got shape (4, 1)"),
])
def test_bad_labels_are_refused_alike_by_every_entry_point(labels, message):
    x, _ = batch()
    y = np.asarray(labels)
    for call in (lambda a: a.train_step(x, y), lambda a: a.loss_and_grads(x, y)):
        assert set(errors(call).values()) == {message}
    # Nothing was applied: a good step afterwards still starts from the initial weights.
    for adapter in ADAPTERS.values():
        assert np.array_equal(adapter.get_weights()["head.fc.bias"],
                              init_weights(SPEC, 0)["head.fc.bias"])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_with_their_position(value):
    x, y = batch()
    x[1, 2, 3, 4] = value
    message = f"input: expected finite values, got {value} at position (1, 2, 3, 4)"
    for call in (lambda a: a.logits(x), lambda a: a.logits(x, training=True),
                 lambda a: a.train_step(x, y), lambda a: a.loss_and_grads(x, y)):
        assert set(errors(call).values()) == {message}


def test_huge_finite_inputs_are_not_mistaken_for_infinities():
    x, y = batch()
    x[:] = 3e38  # the float32 sum overflows; every value is finite
    for adapter in ADAPTERS.values():
        assert adapter.logits(x).shape == (4, 10)


def test_a_data_set_with_bad_labels_is_refused_when_it_loads():
    images = np.zeros((3, 1, 8, 8), np.uint8)
    with pytest.raises(DataError, match=r"toy test labels: expected class indices in \[0, 10\), "
                                        r"got 10 at position 2"):
        Dataset("toy", images, np.array([0, 1, 2]), images, np.array([0, 1, 10]), 10)
    with pytest.raises(DataError, match=r"toy train labels: expected one per example, shape "
                                        r"\(3,\), got shape \(2,\)"):
        Dataset("toy", images, np.array([0, 1]), images, np.array([0, 1, 2]), 10)


def weight_errors(weights) -> set[str]:
    """The messages of from_canonical in every framework for these canonical weights."""
    from common.core.weights import WeightsError
    out = set()
    for fw, module in MODULES.items():
        with pytest.raises(WeightsError) as err:
            module.from_canonical(module.build(SPEC, init="framework"), weights)
        out.add(str(err.value))
    return out


@pytest.mark.parametrize("name, bad, message", [
    ("stem.conv.weight", np.nan, "stem.conv.weight: expected finite values, got nan at position "
                                 "(0, 0, 0, 0)"),
    ("head.fc.bias", np.inf, "head.fc.bias: expected finite values, got inf at position (0,)"),
    ("stage1.0.bn1.running_var", -0.5, "stage1.0.bn1.running_var: expected values >= 0 (a "
                                       "variance), got -0.5 at position (0,)"),
])
def test_bad_weight_values_are_refused_by_name_in_every_framework(name, bad, message):
    weights = init_weights(SPEC, 0)
    weights[name] = weights[name].copy()
    weights[name].flat[0] = bad
    assert weight_errors(weights) == {message}


def test_integer_weights_are_refused_by_name_in_every_framework():
    weights = init_weights(SPEC, 0)
    weights["head.fc.bias"] = np.zeros(10, np.int64)
    assert weight_errors(weights) == {"head.fc.bias: expected a floating-point dtype, got int64"}


def test_another_architectures_weights_get_a_short_message():
    weights = init_weights(get_spec("resnet50"), 0)
    (message,) = weight_errors(weights)
    assert message.startswith("weights do not fit 'cifar_resnet20': unexpected 170: ")
    assert "more)" in message and len(message) < 1500, len(message)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_truncated_weights_file_is_named_without_a_traceback(tmp_path, suffix, capsys):
    from common.commands.convert import main
    from common.core.weights import save_weights
    good = save_weights(init_weights(SPEC, 0), tmp_path / f"w{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[:5000])
    code = main([str(cut), str(tmp_path / "out.safetensors"), "--arch", "cifar_resnet20"])
    err = capsys.readouterr().err
    assert code == 2 and str(cut) in err and "truncated" in err
    assert "Traceback" not in err and not (tmp_path / "out.safetensors").exists()


def test_a_damaged_or_foreign_checkpoint_is_named_on_resume(tmp_path, capsys):
    from safetensors.numpy import save_file
    from common.commands.train import main
    for name, write in (("cut", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")),
                        ("bare", lambda p: save_file({"a": np.zeros(2, np.float32)}, str(p)))):
        out = tmp_path / name
        out.mkdir()
        write(out / "checkpoint.safetensors")
        code = main("torch", ["--dataset", "digits", "--resize", "0", "--out", str(out),
                              "--resume", "--threads", "2"])
        err = capsys.readouterr().err
        assert code == 2 and str(out / "checkpoint.safetensors") in err, err
        assert ("truncated" in err) if name == "cut" else ("not a checkpoint" in err)


# --- the BatchNorm geometry check at its boundary ---------------------------------------------

@pytest.mark.parametrize("n, h, w", [(2, 4, 4), (1, 8, 4), (1, 4, 8)])
def test_a_training_batch_of_exactly_two_values_per_channel_trains(n, h, w):
    """Two values per channel is enough for a batch variance: two examples whose last map is
    1x1, or one example whose last map is 2x1 or 1x2 (a non-square input). Every framework
    trains on it (a finite loss) and changes its weights; one value less is refused."""
    from common.core.oracle import smallest_bn_map
    bh, bw, _ = smallest_bn_map(SPEC, h, w)
    assert n * bh * bw == 2, (bh, bw)
    x, y = batch(n, 8)
    x = np.ascontiguousarray(x[:, :, :h, :w])
    shallow = blocks_per_stage(SPEC)  # the same strides and maps; each framework compiles less
    assert smallest_bn_map(shallow, h, w) == (bh, bw, _)
    for fw in FRAMEWORKS:
        adapter = MODULES[fw].Adapter(shallow, init_weights(shallow, 0))
        loss, _ = adapter.train_step(x, y)
        assert np.isfinite(loss), fw
        assert not np.array_equal(adapter.get_weights()["head.fc.bias"],
                                  init_weights(shallow, 0)["head.fc.bias"]), fw
    one_less = (x[:1, :, :4, :4], y[:1])  # one example, a 1x1 map
    assert len(set(errors(lambda a: a.train_step(*one_less)).values())) == 1


# --- the finiteness check's slow path ---------------------------------------------------------

def huge_weights() -> dict:
    """The shared initial weights with every value of stem.conv.weight 3e38: finite, but the
    float32 sum overflows, so the quick test (a sum) must fall back to the exact one."""
    weights = init_weights(SPEC, 0)
    weights["stem.conv.weight"] = np.full_like(weights["stem.conv.weight"], 3e38)
    with np.errstate(over="ignore"):
        assert not np.isfinite(weights["stem.conv.weight"].sum())
    return weights


def test_huge_but_finite_weights_load_in_every_framework():
    weights = huge_weights()
    for fw, module in MODULES.items():
        model = module.from_canonical(module.build(SPEC, init="framework"), weights)
        back = module.to_canonical(model)
        assert np.array_equal(back["stem.conv.weight"], weights["stem.conv.weight"]), fw


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_a_non_finite_weight_among_huge_ones_is_named_with_its_position(bad):
    weights = huge_weights()
    weights["stem.conv.weight"][3, 1, 2, 0] = bad
    assert weight_errors(weights) == {f"stem.conv.weight: expected finite values, got {bad} at "
                                      f"position (3, 1, 2, 0)"}
