"""The commands end to end, through their main(argv) and their flags: convert, summary,
crosscheck and compare. Files they write are read back with each format's own library."""
import argparse
import importlib
import itertools
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from common.commands import compare
from common.commands import convert
from common.commands import crosscheck
from common.commands import summary
from common.core.init import init_weights
from common.frameworks import FRAMEWORKS, NAMES
from common.core.oracle import param_counts, part_table
from common.core.spec import get_spec
from common.commands.train import parser as train_parser
from common.core.weights import load_weights, save_weights
from tests.helpers import MODULES

ARCH = "cifar_resnet20"  # small: 97 tensors, 0.27 M parameters


def canonical_file(path: Path, seed: int = 3, **overrides) -> dict:
    weights = init_weights(get_spec(ARCH, **overrides), seed)
    save_weights(weights, path)
    return weights


def assert_same_weights(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == np.float32 and np.array_equal(got[name], want[name]), name


# --- convert -------------------------------------------------------------------------------

def assert_file_is_format(path: Path, weights: dict) -> None:
    """The file is in the format its suffix names: read with that format's own library, a
    few tensors in that framework's layout equal the canonical ones."""
    name, head = str(path), path.read_bytes()[:8]
    if name.endswith((".pt", ".pth")):
        import torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert head[:2] == b"PK"  # torch.save's zip container
        assert np.array_equal(state["stem.conv.weight"].numpy(), weights["stem.conv.weight"])
        assert np.array_equal(state["head.fc.weight"].numpy(), weights["head.fc.weight"])
    elif name.endswith(".weights.h5"):
        import h5py
        assert head == b"\x89HDF\r\n\x1a\n"
        with h5py.File(path, "r") as f:  # Keras keeps a dense kernel as (in, out)
            assert np.array_equal(f["head/fc/vars/0"][()], weights["head.fc.weight"].T)
            assert np.array_equal(f["head/fc/vars/1"][()], weights["head.fc.bias"])
    elif name.endswith(".params"):
        from resnet_mx.library import load_mx_params
        arrays = load_mx_params(name)  # in either of MXNet's modes
        assert isinstance(arrays, dict)
        assert np.array_equal(arrays["stem.conv.weight"].asnumpy(), weights["stem.conv.weight"])
        assert np.array_equal(arrays["head.fc.weight"].asnumpy(), weights["head.fc.weight"])
    elif name.endswith(".npz"):
        assert head[:2] == b"PK"
        with np.load(path, allow_pickle=False) as f:
            assert_same_weights({k: f[k] for k in f.files}, weights)
    elif name.endswith(".safetensors"):
        from safetensors.numpy import load_file
        assert_same_weights(load_file(name), weights)
    else:
        raise AssertionError(f"no reader for {path}")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".weights.h5", ".params", ".npz",
                                    ".safetensors"])
def test_convert_writes_the_format_its_suffix_names_and_back_bit_exact(tmp_path, suffix, capsys):
    weights = canonical_file(tmp_path / "start.safetensors")
    out = tmp_path / f"model{suffix}"
    assert convert.main([str(tmp_path / "start.safetensors"), str(out), "--arch", ARCH]) == 0
    fmt = convert.NATIVE.get(suffix, "canonical")
    assert f"(canonical) -> {out} ({fmt}), {ARCH}" in capsys.readouterr().out
    assert_file_is_format(out, weights)
    for back in ("back.safetensors", "back.npz"):
        assert convert.main([str(out), str(tmp_path / back), "--arch", ARCH]) == 0
        assert_same_weights(load_weights(tmp_path / back), weights)


@pytest.mark.parametrize("flag,value,override,suffix", [
    ("--num-classes", "7", {"num_classes": 7}, ".pt"),
    ("--num-classes", "7", {"num_classes": 7}, ".params"),
    ("--in-channels", "1", {"in_channels": 1}, ".weights.h5"),
    ("--in-channels", "1", {"in_channels": 1}, ".params"),
])
def test_convert_overrides_decide_which_file_fits(tmp_path, capsys, flag, value, override, suffix):
    weights = canonical_file(tmp_path / "w.safetensors", **override)
    src, native = str(tmp_path / "w.safetensors"), tmp_path / f"w{suffix}"
    assert convert.main([src, str(native), "--arch", ARCH]) == 2
    err = capsys.readouterr().err
    # refused from the file's header, before its data is read: the message names the file
    assert err.startswith(f"error: weights file {src}: weights do not fit 'cifar_resnet20'")
    assert "mis-shaped" in err and not native.exists()
    assert convert.main([src, str(native), "--arch", ARCH, flag, value]) == 0
    assert_file_is_format(native, weights)
    # A native file of the overridden model is refused without the flag, read with it.
    assert convert.main([str(native), str(tmp_path / "back.npz"), "--arch", ARCH]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "back.npz").exists()
    assert convert.main([str(native), str(tmp_path / "back.npz"), "--arch", ARCH, flag,
                         value]) == 0
    assert_same_weights(load_weights(tmp_path / "back.npz"), weights)


def test_convert_refuses_bad_flags_and_names(tmp_path, capsys):
    canonical_file(tmp_path / "w.safetensors")
    src = str(tmp_path / "w.safetensors")
    for bad in (["--num-classes", "0"], ["--in-channels", "x"], ["--arch", "resnet9"]):
        with pytest.raises(SystemExit) as exit_:
            convert.main([src, str(tmp_path / "o.pt"), *bad])
        assert exit_.value.code == 2
    assert "--num-classes: expected a positive integer, got '0'" in capsys.readouterr().err
    assert convert.main([src, str(tmp_path / "o.pkl"), "--arch", ARCH]) == 2
    assert "error: weights file: expected a name ending in .pt" in capsys.readouterr().err
    assert convert.main([str(tmp_path / "none.pt"), str(tmp_path / "o.npz"), "--arch", ARCH]) == 2
    assert "error: weights file: expected an existing file" in capsys.readouterr().err


# --- summary -------------------------------------------------------------------------------

def test_summary_says_yes_when_every_framework_agrees(capsys):
    assert summary.main(["--arch", ARCH, "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"all agree: yes ({', '.join(NAMES.values())} vs the "
                                 "oracle, cifar_resnet20, input 16x16)")
    counts = param_counts(get_spec(ARCH))
    assert out.count(f"{counts.total:,} in all") == 1 + len(FRAMEWORKS)  # oracle, frameworks
    assert out.count("1x64x4x4") == 1 + len(FRAMEWORKS)  # stage3 at 16x16, in every column


def shape_off_in_stage2(monkeypatch, framework: str) -> None:
    """One framework reports stage2 one row taller than it is; its counts stay right."""
    module = MODULES[framework]
    real = module.part_shapes

    def shapes(model, x):
        got = dict(real(model, x))
        n, c, h, w = got["stage2"]
        got["stage2"] = (n, c, h + 1, w)
        return got
    monkeypatch.setattr(module, "part_shapes", shapes)


def test_summary_says_no_when_only_a_shape_disagrees(monkeypatch, capsys):
    shape_off_in_stage2(monkeypatch, "mx")
    spec = get_spec(ARCH)
    parts = summary.framework_parts("mx", spec, 16)
    oracle = {r.name: (r.out_shape, r.counts) for r in part_table(spec, 16)}
    assert {p: c for p, (_, c) in parts.items()} == {p: c for p, (_, c) in oracle.items()}
    assert parts["stage2"][0] == (1, 32, 9, 8) != oracle["stage2"][0]
    assert summary.main(["--arch", ARCH, "--input-size", "16"]) == 1
    out = capsys.readouterr().out
    assert "all agree: NO" in out and "1x32x9x8" in out


@pytest.mark.parametrize("framework", ["torch", "tf", "mx"])
def test_summary_says_a_missing_part_is_missing(framework, monkeypatch, capsys):
    """A part a framework's model lacks reads n/a, naming the framework, never a shape () and
    counts of 0; the verdict is NO."""
    module = MODULES[framework]
    real = module.part_shapes
    monkeypatch.setattr(module, "part_shapes", lambda model, x: {
        k: v for k, v in real(model, x).items() if k != "stage2"})
    assert summary.main(["--arch", ARCH, "--input-size", "16", "--frameworks", framework]) == 1
    out = capsys.readouterr().out
    stage2 = next(line for line in out.splitlines() if line.startswith("stage2"))
    assert f"n/a (no such part in {NAMES[framework]})" in stage2 and "()" not in stage2, stage2
    assert "all agree: NO" in out


def test_summary_checks_only_the_frameworks_asked_for(monkeypatch, capsys):
    shape_off_in_stage2(monkeypatch, "tf")  # NHWC: (n, h, w, c) -> c is off here
    assert summary.main(["--arch", ARCH, "--input-size", "16", "--frameworks", "torch,mx"]) == 0
    out = capsys.readouterr().out
    assert "all agree: yes (PyTorch, MXNet Gluon vs the oracle" in out
    assert "tf shape" not in out and "torch shape" in out and "mx shape" in out
    assert summary.main(["--arch", ARCH, "--input-size", "16", "--frameworks", "tf"]) == 1
    assert "all agree: NO (TensorFlow/Keras vs the oracle" in capsys.readouterr().out


def test_summary_markdown_is_a_markdown_table(capsys):
    assert summary.main(["--arch", ARCH, "--input-size", "16", "--frameworks", "torch",
                         "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("| part | oracle shape | oracle trainable | oracle BN stats | torch shape "
                        "| torch trainable | torch BN stats |")
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert [line.split(" | ")[0] for line in lines[2:-1]] == [
        "| stem", "| stage1", "| stage2", "| stage3", "| head", "| total"]
    assert lines[-1].startswith("all agree: yes")
    assert summary.main(["--arch", ARCH, "--input-size", "16", "--frameworks", "torch"]) == 0
    assert "|" not in capsys.readouterr().out  # plain text without --markdown


# --- crosscheck ----------------------------------------------------------------------------

def expected_logit_scale(weights: dict, batch: int, size: int, seed: int, dtype: str) -> str:
    """crosscheck's input, rebuilt from its documented recipe, through PyTorch."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    logits = MODULES["torch"].Adapter(get_spec(ARCH), weights, dtype=dtype).logits(x)
    return f"max |logit| = {float(np.abs(logits).max()):.3f}"


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt", ".weights.h5", ".params",
                                    ".msgpack"])
def test_crosscheck_reads_weights_in_every_format(tmp_path, capsys, suffix):
    weights = init_weights(get_spec(ARCH), 5)
    convert.write(weights, tmp_path / f"w{suffix}", get_spec(ARCH))
    argv = ["--weights", str(tmp_path / f"w{suffix}"), "--arch", ARCH, "--input-size", "12",
            "--batch", "3", "--seed", "4", "--dtype", "float64"]
    assert crosscheck.main(argv) == 0
    out = capsys.readouterr().out
    assert "computed in float64" in out and "within tolerance: yes" in out
    assert expected_logit_scale(weights, 3, 12, 4, "float64") in out
    assert [line.split()[:3] for line in out.splitlines() if " vs " in line] == [
        [a, "vs", b] for a, b in itertools.combinations(FRAMEWORKS, 2)]


def test_crosscheck_names_float32_when_asked(tmp_path, capsys):
    weights = init_weights(get_spec(ARCH), 5)
    convert.write(weights, tmp_path / "w.pt", get_spec(ARCH))
    crosscheck.main(["--weights", str(tmp_path / "w.pt"), "--arch", ARCH, "--input-size", "12",
                     "--batch", "2", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert "computed in float32" in out
    assert expected_logit_scale(weights, 2, 12, 0, "float32") in out


def test_crosscheck_fails_when_one_framework_differs(tmp_path, monkeypatch, capsys):
    convert.write(init_weights(get_spec(ARCH), 5), tmp_path / "w.params", get_spec(ARCH))
    real = MODULES["mx"].Adapter.loss_and_grads

    def off(self, x, y):
        loss, grads = real(self, x, y)
        return loss + 1e-3, grads
    monkeypatch.setattr(MODULES["mx"].Adapter, "loss_and_grads", off)
    assert crosscheck.main(["--weights", str(tmp_path / "w.params"), "--arch", ARCH,
                            "--input-size", "12", "--batch", "2", "--dtype", "float64"]) == 1
    assert "within tolerance: NO" in capsys.readouterr().out


def test_crosscheck_refuses_bad_flags(capsys):
    for bad in (["--dtype", "float16"], ["--batch", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            crosscheck.main(["--arch", ARCH, *bad])
        assert exit_.value.code == 2
    assert crosscheck.main(["--arch", ARCH, "--weights", "missing.safetensors"]) == 2
    assert "error: weights file: expected an existing file" in capsys.readouterr().err


# --- compare -------------------------------------------------------------------------------

def other_than_default(action: argparse.Action) -> tuple[object, list[str]]:
    """A value for the flag that differs from its default, and the argv that gives it."""
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        return True, [flag]
    if isinstance(action, argparse._StoreFalseAction):
        return False, [flag]
    if action.choices:
        value = next(c for c in action.choices if c != action.default)
        return value, [flag, str(value)]
    for text in ("3", "0.5", "7", "1", "2", "some/dir", "cpu"):  # 1, 2: --threads <= cores
        try:
            value = action.type(text) if action.type else text
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            continue
        if value != action.default:
            return value, [flag, text]
    raise AssertionError(f"{flag}: found no value other than the default {action.default!r}")


def test_train_flags_pass_on_every_flag_of_the_train_parser():
    p = train_parser("resnet-compare")
    flags = [a for a in p._actions if a.option_strings and a.dest not in ("help", "out")]
    want, argv = {}, ["--out", "reports/somewhere"]
    for action in flags:
        want[action.dest], more = other_than_default(action)
        argv += more
    args = p.parse_args(argv)
    args.frameworks, args.bench_rounds = "torch", 0  # compare's own flags stay with compare
    assert {d: getattr(args, d) for d in want} == want
    again = train_parser("train").parse_args(compare.train_flags(args, Path("out/torch")))
    assert {d: getattr(again, d) for d in want} == want
    assert again.out == "out/torch"
    # And the defaults stay defaults (a flag left out would be dropped, not made up).
    defaults = p.parse_args([])
    again = train_parser("train").parse_args(compare.train_flags(defaults, Path("o")))
    assert vars(again) == vars(defaults) | {"out": "o"}


class PopenWithTimeout(subprocess.Popen):
    """compare's child processes, killed if one runs longer than TIMEOUT seconds."""
    TIMEOUT = 600

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timer = threading.Timer(self.TIMEOUT, self.kill)
        self.timer.start()

    def __exit__(self, *exc):
        self.timer.cancel()
        return super().__exit__(*exc)


def test_compare_trains_every_framework_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.subprocess, "Popen", PopenWithTimeout)
    out = tmp_path / "cmp"
    assert compare.main(["--dataset", "digits", "--epochs", "1", "--limit", "64",
                         "--batch-size", "32", "--resize", "16", "--bench-rounds", "0",
                         "--seed", "3", "--lr", "0.02", "--threads", "1",
                         "--out", str(out)]) == 0
    capsys.readouterr()
    spec = get_spec("d2l_resnet18", in_channels=1, num_classes=10)
    counts = param_counts(spec)
    report = (out / "report.md").read_text()
    results = report.split("## Results")[1].split("##")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in results.splitlines()
            if line.startswith("| ") and not line.startswith("| framework")]
    assert [r[0] for r in rows] == [NAMES[fw] for fw in FRAMEWORKS]
    for row in rows:
        assert row[-3:] == [f"{counts.trainable:,}", f"{counts.non_trainable:,}",
                            f"{counts.total:,}"], row
    assert "## Shapes and parameters per part (input 16x16)" in report
    assert f"all agree: yes ({', '.join(NAMES.values())} vs the oracle, d2l_resnet18, "\
           "input 16x16)" in report
    assert "## Failures" not in report and "## Speed and memory" not in report
    # What ran: each framework's own version (its module's __version__) and its libraries.
    ran = report.split("## What ran")[1].split("##")[0]
    modules = {"torch": "torch", "tf": "tensorflow", "mx": "mxnet", "jax": "jax"}
    for fw in FRAMEWORKS:
        version = importlib.import_module(modules[fw]).__version__
        assert f"- {NAMES[fw]} {version}" in ran, ran
    assert "- CPU flags: avx2" in ran
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fw in FRAMEWORKS:
        run = json.loads((out / fw / "run.json").read_text())
        assert run["framework"] == fw and run["dataset"] == "digits" and run["epochs"] == 1
        assert run["params"] == {"trainable": counts.trainable,
                                 "non_trainable": counts.non_trainable, "total": counts.total}
        assert run["input_size"] == 16 and run["threads"] == 1
        assert {k: run["config"][k] for k in ("batch_size", "limit", "seed", "lr", "resize")} == {
            "batch_size": 32, "limit": 64, "seed": 3, "lr": 0.02, "resize": 16}


def test_crosscheck_and_summary_take_the_spec_overrides(tmp_path, capsys):
    """A 7-class file is refused by crosscheck without --num-classes 7 and checked with it;
    summary builds the network the overrides name (3 channels: a larger stem)."""
    from common.core.weights import save_weights
    spec = get_spec("cifar_resnet20", num_classes=7)
    path = save_weights(init_weights(spec, 0), tmp_path / "w7.safetensors")
    argv = ["--weights", str(path), "--arch", "cifar_resnet20", "--input-size", "8"]
    assert crosscheck.main(argv) == 2
    assert "head.fc.weight: expected (10, 64), got (7, 64)" in capsys.readouterr().err
    assert crosscheck.main([*argv, "--num-classes", "7"]) == 0
    assert summary.main(["--arch", "cifar_resnet20", "--in-channels", "1", "--input-size", "8"]) == 0
    stem = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("stem"))
    assert stem.split()[2] == f"{9 * 16 + 2 * 16:,}"  # 1 channel: 3x3x1x16 weights, gamma, beta
