"""torchvision's and timm's ResNet state_dicts, both ways (common.formats.libraries), format detection in
resnet-convert, and --weights on the train scripts.

torchvision itself is not installed (its wheel does not import beside the CPU torch here), so
its state_dict is written below from torchvision's ResNet structure (models/resnet.py: BasicBlock,
Bottleneck, _make_layer), independently of common.formats.libraries, and its forward pass is written
with torch.nn.functional from torchvision's forward(). Offline, random weights.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.commands import convert
from common.commands import crosscheck
from common.formats import libraries as ecosystem
from common.frameworks import FRAMEWORKS, module
from common.core.init import init_weights
from common.core.spec import Stage, Stem, get_spec
from common.commands.train import main as train_main, parser, train
from common.core.weights import WeightsError, canonical_layout, load_weights, save_weights
from tests.helpers import MODULES

# torchvision.models.resnet: name -> (block, layers, groups, width_per_group)
TORCHVISION = {
    "resnet18": ("basic", [2, 2, 2, 2], 1, 64), "resnet34": ("basic", [3, 4, 6, 3], 1, 64),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 1, 64),
    "resnet101": ("bottleneck", [3, 4, 23, 3], 1, 64),
    "resnet152": ("bottleneck", [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": ("bottleneck", [3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": ("bottleneck", [3, 4, 23, 3], 32, 8),
    "resnext101_64x4d": ("bottleneck", [3, 4, 23, 3], 64, 4),
    "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3], 1, 64 * 2),
    "wide_resnet101_2": ("bottleneck", [3, 4, 23, 3], 1, 64 * 2),
}


def torchvision_keys(block: str, layers: list[int], groups: int = 1, width_per_group: int = 64,
                     num_classes: int = 1000, in_channels: int = 3,
                     planes_per_layer=(64, 128, 256, 512), stem: tuple = (64, 7)):
    """torchvision's ResNet(block, layers, ...).state_dict() as key -> shape, in its order
    (a module's parameters, then its buffers, then its children in registration order)."""
    keys: dict[str, tuple[int, ...]] = {}
    expansion = 4 if block == "bottleneck" else 1

    def conv(name, out, inp, k):
        keys[f"{name}.weight"] = (out, inp, k, k)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{p}"] = (c,)
        keys[f"{name}.num_batches_tracked"] = ()

    conv("conv1", stem[0], in_channels, stem[1])
    bn("bn1", stem[0])
    inplanes = stem[0]
    for i, (planes, blocks) in enumerate(zip(planes_per_layer, layers), start=1):
        stride = 1 if i == 1 else 2
        for j in range(blocks):
            at = f"layer{i}.{j}."
            if block == "basic":
                conv(at + "conv1", planes, inplanes, 3)
                bn(at + "bn1", planes)
                conv(at + "conv2", planes, planes, 3)
                bn(at + "bn2", planes)
            else:
                width = int(planes * (width_per_group / 64.0)) * groups
                conv(at + "conv1", width, inplanes, 1)
                bn(at + "bn1", width)
                conv(at + "conv2", width, width // groups, 3)
                bn(at + "bn2", width)
                conv(at + "conv3", planes * expansion, width, 1)
                bn(at + "bn3", planes * expansion)
            if j == 0 and (stride != 1 or inplanes != planes * expansion):
                conv(at + "downsample.0", planes * expansion, inplanes, 1)
                bn(at + "downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys["fc.weight"] = (num_classes, planes_per_layer[-1] * expansion)
    keys["fc.bias"] = (num_classes,)
    return keys


def random_state(keys: dict, seed: int = 0, batches_tracked: int = 0) -> dict[str, torch.Tensor]:
    """Random values of a trained network's kind: He-scaled kernels, BatchNorm statistics
    away from (0, 1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in keys.items():
        param = key.rsplit(".", 1)[1]
        if key.endswith("num_batches_tracked"):
            value = np.array(batches_tracked, np.int64)
        elif len(shape) == 4:
            value = rng.normal(0, np.sqrt(2 / (shape[0] * shape[2] * shape[3])), shape)
        elif key.startswith("fc."):
            value = rng.uniform(-0.05, 0.05, shape)
        elif param in ("weight", "running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # BatchNorm bias, running_mean
            value = rng.normal(0, 0.2, shape)
        state[key] = torch.from_numpy(np.asarray(value, np.int64 if value.dtype == np.int64
                                                 else np.float32))
    return state


def torchvision_forward(state: dict, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """torchvision's ResNet.forward in eval mode, written with torch.nn.functional."""
    def bn(y, name):
        return F.batch_norm(y, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                            state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)

    stem_k = state["conv1.weight"].shape[-1]
    x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=stem_k // 2), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    i = 1
    while f"layer{i}.0.conv1.weight" in state:
        j = 0
        while f"layer{i}.{j}.conv1.weight" in state:
            at = f"layer{i}.{j}."
            stride = 2 if i > 1 and j == 0 else 1
            identity = x
            if at + "conv3.weight" in state:  # Bottleneck: the stride on the 3x3 (v1.5)
                out = F.relu(bn(F.conv2d(x, state[at + "conv1.weight"]), at + "bn1"))
                out = F.relu(bn(F.conv2d(out, state[at + "conv2.weight"], stride=stride,
                                         padding=1, groups=groups), at + "bn2"))
                out = bn(F.conv2d(out, state[at + "conv3.weight"]), at + "bn3")
            else:  # BasicBlock
                out = F.relu(bn(F.conv2d(x, state[at + "conv1.weight"], stride=stride,
                                         padding=1), at + "bn1"))
                out = bn(F.conv2d(out, state[at + "conv2.weight"], padding=1), at + "bn2")
            if at + "downsample.0.weight" in state:
                identity = bn(F.conv2d(x, state[at + "downsample.0.weight"], stride=stride),
                              at + "downsample.1")
            x = F.relu(out + identity)
            j += 1
        i += 1
    x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
    return F.linear(x, state["fc.weight"], state["fc.bias"])


def save_state(state: dict, path) -> None:
    """A state_dict file as torchvision (torch.save) or timm (safetensors) write it."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, str(path))


def stored(path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def assert_same_state(got: dict, want: dict, ordered: bool = True) -> None:
    """The same keys (in the same order, but in a .safetensors, which stores them sorted), and
    equal shapes, dtypes and values, num_batches_tracked too."""
    assert list(got) == list(want) if ordered else sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert torch.equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 .pth with 10 classes and 1 input channel (the digits data set)."""
    path = tmp_path_factory.mktemp("tv") / "resnet18-digits.pth"
    state = random_state(torchvision_keys("basic", [2, 2, 2, 2], num_classes=10,
                                          in_channels=1), seed=1)
    save_state(state, path)
    return path, state


# --- names and shapes: every torchvision preset ----------------------------------------------

@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_every_torchvision_preset_takes_torchvision_keys_and_shapes_in_order(arch):
    block, layers, groups, width = TORCHVISION[arch]
    spec = get_spec(arch)
    want = {k: s for k, s in torchvision_keys(block, layers, groups, width).items()
            if not k.endswith("num_batches_tracked")}
    names = ecosystem.torchvision_names(spec)
    layout = canonical_layout(spec)
    assert list(names.values()) == list(want)
    assert {key: layout[name] for name, key in names.items()} == want


def test_the_mapping_is_the_documented_one():
    names = ecosystem.torchvision_names(get_spec("resnet50"))
    assert names["stem.conv.weight"] == "conv1.weight"
    assert names["stem.bn.gamma"] == "bn1.weight" and names["stem.bn.beta"] == "bn1.bias"
    assert names["stage1.0.conv3.weight"] == "layer1.0.conv3.weight"
    assert names["stage1.0.conv4.weight"] == "layer1.0.downsample.0.weight"
    assert names["stage3.0.bn4.running_var"] == "layer3.0.downsample.1.running_var"
    assert names["head.fc.bias"] == "fc.bias"
    basic = ecosystem.torchvision_names(get_spec("resnet18"))
    assert basic["stage2.0.conv3.weight"] == "layer2.0.downsample.0.weight"
    assert basic["stage2.0.bn3.gamma"] == "layer2.0.downsample.1.weight"


@pytest.mark.parametrize("arch,why", [("d2l_resnet18", "convolution biases"),
                                      ("resnet50_v2", "pre-activation blocks"),
                                      ("cifar_resnet20", "zero-padded shortcuts"),
                                      ("keras_resnet50", "the stride on the first 1x1"),
                                      ("gluon_resnet50_v1", "convolution biases")])
def test_a_preset_of_another_structure_is_refused_with_the_reason(arch, why):
    with pytest.raises(WeightsError, match=f"got {arch!r} with .*{why}"):
        ecosystem.torchvision_names(get_spec(arch))


# --- files: logits in every framework, and back ----------------------------------------------

@pytest.mark.parametrize("arch,suffix", [("resnet18", ".pth"), ("resnet50", ".safetensors"),
                                         ("resnext50_32x4d", ".bin")])
def test_torchvision_file_gives_torchvision_logits_in_every_framework_and_goes_back(
        arch, suffix, tmp_path, capsys):
    block, layers, groups, width = TORCHVISION[arch]
    state = random_state(torchvision_keys(block, layers, groups, width), seed=2)
    path = tmp_path / f"{arch}{suffix}"
    save_state(state, path)
    spec = get_spec(arch)
    assert convert.detect_format(path) == "torchvision"
    weights = convert.read(path, spec)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = torchvision_forward(state, torch.from_numpy(x), groups).numpy()
    for fw in FRAMEWORKS:
        got = MODULES[fw].Adapter(spec, weights).logits(x, training=False)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), fw
    # Through resnet-convert: to our canonical file, and back to torchvision's names.
    canonical, back = tmp_path / "w.safetensors", tmp_path / f"back{suffix}"
    assert convert.main([str(path), str(canonical), "--arch", arch]) == 0
    assert convert.main([str(canonical), str(back), "--arch", arch, "--to", "torchvision"]) == 0
    out = capsys.readouterr().out
    assert f"{path} (torchvision) -> {canonical} (canonical)" in out
    assert f"(canonical) -> {back} (torchvision)" in out
    assert_same_state(stored(back), state, ordered=suffix != ".safetensors")


def test_num_batches_tracked_of_a_trained_file_is_read_and_written_as_a_fresh_models(tmp_path):
    keys = torchvision_keys("basic", [1, 1], planes_per_layer=(8, 16), stem=(8, 3),
                            num_classes=5)
    state = random_state(keys, batches_tracked=123456)
    spec = tiny_spec()
    weights = ecosystem.from_torchvision_state({k: v.numpy() for k, v in state.items()}, spec)
    again = ecosystem.torchvision_state(weights, spec)
    assert list(again) == list(state)
    assert all(again[k].shape == () and again[k].dtype == np.int64 and again[k] == 0
               for k in again if k.endswith("num_batches_tracked"))
    assert all(np.array_equal(again[k], state[k].numpy()) for k in again
               if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("dtype,suffix", [(torch.float16, ".safetensors"),
                                          (torch.bfloat16, ".safetensors"),
                                          (torch.bfloat16, ".pth")])
def test_half_precision_files_are_read_as_float32(tmp_path, dtype, suffix):
    spec = tiny_spec()
    keys = torchvision_keys("basic", [1, 1], planes_per_layer=(8, 16), stem=(8, 3),
                            num_classes=5)
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in random_state(keys, seed=3).items()}
    save_state(state, tmp_path / f"half{suffix}")
    weights = convert.read(tmp_path / f"half{suffix}", spec)
    names = ecosystem.torchvision_names(spec)
    assert all(weights[n].dtype == np.float32 for n in names)
    assert all(np.array_equal(weights[n], state[k].float().numpy()) for n, k in names.items())


def tiny_spec():
    """A network of torchvision's structure, small: 8 and 16 channels, one block per stage."""
    return get_spec("resnet18", stages=(Stage(8, 1), Stage(16, 1, 2, project=True)),
                    stem=Stem(8, 3, 2, True), num_classes=5)


# --- detection and --from/--to ----------------------------------------------------------------

def test_formats_are_detected_from_the_names_a_file_holds(tmp_path):
    spec = tiny_spec()
    weights = init_weights(spec, 0)
    tv = ecosystem.torchvision_state(weights, spec)
    files = {"tv.pth": "torchvision", "tv.pt": "torchvision", "tv.bin": "torchvision",
             "tv.safetensors": "torchvision", "ours.pt": "torch", "ours.pth": "torch",
             "ours.safetensors": "canonical", "ours.npz": "canonical"}
    for name, fmt in files.items():
        if name.startswith("tv"):
            module("torch", "library").write_state_dict(tv, tmp_path / name)
        else:
            convert.write(weights, tmp_path / name, spec)
        assert convert.detect_format(tmp_path / name) == fmt, name
        back = convert.read(tmp_path / name, spec)
        assert all(np.array_equal(back[k], weights[k]) for k in weights), name
    # What `auto` writes for a name: the name's default; --to chooses another.
    assert [convert.file_format(f"w{s}") for s in (".pth", ".pt", ".bin", ".safetensors",
                                                     ".npz", ".weights.h5", ".params")] == [
        "torch", "torch", "torchvision", "canonical", "canonical", "tf", "mx"]
    convert.write(weights, tmp_path / "forced.pth", spec, fmt="torchvision")
    assert list(stored(tmp_path / "forced.pth"))[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert convert.file_classes(tmp_path / "forced.pth") == 5
    assert convert.file_classes(tmp_path / "ours.pt") == 5


def test_from_and_to_force_a_format_and_refuse_one_that_does_not_fit(tmp_path, resnet18_file,
                                                                      capsys):
    path, state = resnet18_file
    flags = ["--arch", "resnet18", "--num-classes", "10", "--in-channels", "1"]
    out = tmp_path / "ours.pth"
    assert convert.main([str(path), str(out), *flags]) == 0
    assert f"{path} (torchvision) -> {out} (torch)" in capsys.readouterr().out
    assert "stem.bn.running_var" in stored(out)
    # resnet_torch.load_native reads its ecosystem's names too, so --from torch takes the file;
    # forced as torchvision's, this project's names do not fit: a short error.
    assert convert.main([str(path), str(tmp_path / "x.npz"), *flags, "--from", "torch"]) == 0
    capsys.readouterr()
    assert convert.main([str(out), str(tmp_path / "x.npz"), *flags, "--from", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "missing 102: conv1.weight" in err
    assert "unexpected 102: stem.conv.weight" in err and "Traceback" not in err
    assert convert.main([str(out), str(tmp_path / "tv.pth"), *flags, "--to", "torchvision"]) == 0
    assert_same_state(stored(tmp_path / "tv.pth"), state)
    assert convert.main([str(out), str(tmp_path / "x.npz"), *flags, "--to", "torchvision"]) == 2
    assert ("error: torchvision weights file: expected a name ending in .pth, .pt, .bin, "
            ".safetensors, got") in capsys.readouterr().err
    assert convert.main([str(tmp_path / "x.safetensors"), str(tmp_path / "y.pth"), "--arch",
                         "d2l_resnet18", "--from", "torchvision"]) == 2
    assert "expected an existing file" in capsys.readouterr().err
    save_weights(init_weights(get_spec("d2l_resnet18"), 0), tmp_path / "d2l.safetensors")
    assert convert.main([str(tmp_path / "d2l.safetensors"), str(tmp_path / "d2l.pth"),
                         "--arch", "d2l_resnet18", "--to", "torchvision"]) == 2
    assert (f"error: weights file {tmp_path / 'd2l.pth'}: torchvision's names: expected a preset "
            f"built as torchvision builds ResNets") in capsys.readouterr().err
    assert convert.main([str(path), str(tmp_path / "d2l.npz"), "--arch", "d2l_resnet18"]) == 2
    assert (f"error: weights file {path}: torchvision's names: expected a preset built as "
            f"torchvision builds ResNets (resnet18..152, resnext*, wide_resnet*), got "
            f"'d2l_resnet18' with no BatchNorm on the projection, convolution biases"
            ) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main([str(path), str(tmp_path / "o.npz"), "--from", "timm"])
    assert "--from: expected one of auto, torch, tf, mx, jax, canonical, torchvision, keras, gluon, got 'timm'" \
        in capsys.readouterr().err


# --- bad files --------------------------------------------------------------------------------

def refused(capsys, src, *flags) -> str:
    """resnet-convert's one-line error for src (exit status 2, no traceback, nothing written)."""
    code = convert.main([str(src), str(src.parent / "out.npz"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert len(err) < 1500 and not (src.parent / "out.npz").exists()
    return err


def test_files_that_do_not_fit_get_a_short_error_naming_the_file(tmp_path, resnet18_file,
                                                                 capsys):
    path, state = resnet18_file
    flags = ["--arch", "resnet18", "--num-classes", "10", "--in-channels", "1"]
    err = refused(capsys, path, "--arch", "resnet34", "--num-classes", "10", "--in-channels", "1")
    assert f"weights file {path}: weights do not fit 'resnet34' (torchvision's names): " \
           f"missing 80: layer1.2.conv1.weight" in err and "more)" in err
    err = refused(capsys, path, "--arch", "resnet18")  # 1000 classes, 3 channels
    assert "mis-shaped 3: conv1.weight: expected (64, 3, 7, 7), got (64, 1, 7, 7); " \
           "fc.weight: expected (1000, 512), got (10, 512)" in err
    for damage, message in (
            (lambda p: p.write_bytes(path.read_bytes()[:5000]), "truncated"),
            (lambda p: p.write_bytes(b""), "truncated"),
            (lambda p: torch.save(torch.nn.Linear(2, 2), str(p)), "other Python objects"),
            (lambda p: torch.save({"conv1.weight": [1.0, 2.0]}, str(p)),
             "not a dict of tensors")):
        bad = tmp_path / "bad.bin"
        damage(bad)
        err = refused(capsys, bad, *flags)
        assert str(bad) in err and message in err, err
    for key, value, message in (("layer1.0.bn1.running_var", -1.0, "expected values >= 0"),
                                ("layer3.1.conv2.weight", float("nan"), "expected finite")):
        spoiled = dict(state)
        spoiled[key] = spoiled[key].clone()
        spoiled[key].view(-1)[0] = value
        save_state(spoiled, tmp_path / "spoiled.safetensors")
        err = refused(capsys, tmp_path / "spoiled.safetensors", *flags)
        assert f"weights file {tmp_path / 'spoiled.safetensors'}: {key}: {message}" in err, err
    half = {k: v for k, v in state.items() if k.startswith(("conv1", "bn1", "layer1"))}
    save_state(half, tmp_path / "half.safetensors")
    err = refused(capsys, tmp_path / "half.safetensors", *flags)
    assert "missing 77: layer2.0.conv1.weight" in err


# --- --weights on the train scripts -----------------------------------------------------------

DIGITS = ["--dataset", "digits", "--limit", "64", "--epochs", "1", "--resize", "16",
          "--batch-size", "32", "--arch", "resnet18"]


def test_train_starts_from_a_torchvision_file_and_records_it(tmp_path, resnet18_file):
    path, state = resnet18_file
    lines = []
    args = parser("t").parse_args([*DIGITS, "--lr", "1e-6", "--weights", str(path),
                                   "--out", str(tmp_path / "run")])
    summary = train("torch", args, log=lines.append)
    assert f"PyTorch: starting from {path} (torchvision)" in lines
    assert summary["config"]["weights"] == str(path) and summary["config"]["new_head"] is False
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["weights"] == str(path)
    end = load_weights(tmp_path / "run" / "weights.safetensors")  # lr 1e-6: the file's, nearly
    start = state["conv1.weight"].numpy()
    assert np.abs(end["stem.conv.weight"] - start).max() < 1e-4
    assert np.abs(end["head.fc.bias"] - state["fc.bias"].numpy()).max() < 1e-4
    # --resume refuses another --weights (or none).
    for other in (["--weights", str(tmp_path / "other.pth")], []):
        again = parser("t").parse_args([*DIGITS, "--lr", "1e-6", "--epochs", "2", *other,
                                        "--out", str(tmp_path / "run"), "--resume"])
        with pytest.raises(ValueError, match=f"--weights: expected {str(path)!r}, got "):
            train("torch", again, log=lines.append)


def test_a_head_of_other_classes_is_refused_unless_new_head(tmp_path, capsys):
    state = random_state(torchvision_keys("basic", [2, 2, 2, 2], in_channels=1), seed=4)
    path = tmp_path / "imagenet-classes.pth"
    save_state(state, path)
    argv = [*DIGITS, "--weights", str(path), "--out", str(tmp_path / "run")]
    assert train_main("torch", argv) == 2
    assert (f"error: --weights: {path} has a 1000-class head, the data set digits has 10 "
            f"classes; pass --new-head") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main("torch", [*DIGITS, "--new-head"])
    assert "--new-head: expected --weights too" in capsys.readouterr().err
    lines = []
    args = parser("t").parse_args([*argv, "--new-head", "--lr", "1e-6", "--seed", "5"])
    train("torch", args, log=lines.append)
    assert any("with a new 10-class head (--new-head; the file's has 1000 classes)" in line
               for line in lines), lines
    end = load_weights(tmp_path / "run" / "weights.safetensors")
    fresh = init_weights(get_spec("resnet18", in_channels=1, num_classes=10), 5)
    assert np.abs(end["head.fc.weight"] - fresh["head.fc.weight"]).max() < 1e-4
    assert np.abs(end["stage4.1.conv2.weight"] - state["layer4.1.conv2.weight"].numpy()).max() \
        < 1e-4


def cifar_folder(root, n=8):
    """A --data-dir with a CIFAR-10 of random images in python batches."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def test_the_readme_command_fine_tunes_imagenet_torchvision_weights_on_cifar10_in_keras(
        tmp_path, capsys):
    """README, Bring your own weights: `python -m resnet_tf.train --arch resnet18 --dataset
    cifar10 --weights resnet18-f37072fd.pth --new-head ...`, on a random file of that format."""
    state = random_state(torchvision_keys("basic", [2, 2, 2, 2]), seed=6)
    path = tmp_path / "resnet18-f37072fd.pth"
    save_state(state, path)
    argv = ["--arch", "resnet18", "--dataset", "cifar10", "--weights", str(path), "--new-head",
            "--data-dir", str(cifar_folder(tmp_path / "data")), "--epochs", "1",
            "--resize", "32", "--batch-size", "16", "--lr", "1e-6",
            "--out", str(tmp_path / "run")]
    assert train_main("tf", argv) == 0
    out = capsys.readouterr().out
    assert "with a new 10-class head" in out and "epoch 1/1" in out
    end = load_weights(tmp_path / "run" / "weights.safetensors")
    assert np.abs(end["stem.conv.weight"] - state["conv1.weight"].numpy()).max() < 1e-4


def test_crosscheck_reads_a_torchvision_file(resnet18_file, capsys):
    path, _ = resnet18_file
    assert crosscheck.main(["--weights", str(path), "--arch", "resnet18", "--num-classes", "10",
                            "--in-channels", "1", "--input-size", "16", "--batch", "2",
                            "--dtype", "float64"]) == 0
    assert "within tolerance: yes" in capsys.readouterr().out
