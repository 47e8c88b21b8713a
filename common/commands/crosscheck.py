"""Load one weights file into all four frameworks, run the same input, and print the largest
differences of logits (eval and train mode), losses and gradients, for every pair.

    python -m common.commands.crosscheck --weights model.safetensors --input-size 96
    python -m common.commands.crosscheck --dtype float64    # the same, free of float32 rounding
"""
from __future__ import annotations

import itertools
import sys

import numpy as np

from common.core.checks import DTYPES, check_geometry, parts_and_blocks
from common.commands.cli import (Parser, add_spec_flags, description, guarded, non_negative_int,
                                 path_arg, positive_int, spec_of)
from common.core.devices import add_device_flag, check_memory
from common.frameworks import FRAMEWORKS, NAMES, load, module
from common.core.init import init_weights
from common.core.oracle import zero_gradient_biases
from common.core.spec import ResNetSpec
from common.core.tables import render
from common.core.weights import Weights

TOLERANCES = {"eval logits": 1e-5, "train logits": 1e-5, "loss": 1e-5, "gradients": 1e-4}


def measure(spec: ResNetSpec, weights: Weights, x: np.ndarray, y: np.ndarray,
            dtype: str = "float32", device: str = "cpu") -> dict:
    """Per framework: eval logits, train-mode logits, loss and gradients for one batch,
    computed in `dtype` on `device` (on a GPU with each framework's deterministic algorithms
    and no TensorFloat-32: each package's devices.set_deterministic), and the device it used."""
    out = {}
    for fw in FRAMEWORKS:
        devices = module(fw, "devices")
        chosen = devices.select(device)  # a GPU the framework does not see is an error here
        if chosen.is_gpu:
            devices.set_deterministic()
        Adapter, options = load(fw).Adapter, {"dtype": dtype, "device": str(chosen)}
        # One adapter, eval first: a train-mode pass moves BatchNorm's running statistics,
        # which the eval logits read and the train-mode ones (batch statistics) do not.
        adapter = Adapter(spec, weights, **options)
        logits = {"eval logits": adapter.logits(x, training=False),
                  "train logits": adapter.logits(x, training=True)}
        loss, grads = adapter.loss_and_grads(x, y)
        out[fw] = logits | {"loss": np.array(loss), "gradients": grads, "device": str(chosen)}
    return out


def worst_gradient(ga: Weights, gb: Weights, skip: set[str]) -> tuple[float, str]:
    """Largest relative error ||a - b|| / ||b|| over parameters, and which parameter. Conv
    biases in `skip` have an exact gradient of 0 (a BatchNorm follows), so only rounding noise:
    they count by their size relative to the whole gradient instead."""
    total = np.sqrt(sum(float(np.sum(g ** 2)) for g in gb.values()))
    return max((float(np.linalg.norm(ga[n] - gb[n]) /
                       (total * 1e-1 if n in skip else max(np.linalg.norm(gb[n]), 1e-12))), n)
               for n in gb)


def crosscheck(spec: ResNetSpec, weights: Weights, input_size: int, batch: int = 4,
               seed: int = 0, dtype: str = "float32", device: str = "cpu") -> tuple[str, bool]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, spec.in_channels, input_size, input_size)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch)
    res = measure(spec, weights, x, y, dtype, device)
    rows, ok = [], True
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        row: list[object] = [f"{a} vs {b}"]
        for key, tol in TOLERANCES.items():
            if key == "gradients":
                err, where = worst_gradient(res[a][key], res[b][key], zero_gradient_biases(spec))
                row += [f"{err:.2e} ({where})"]
            else:
                err = float(np.abs(res[a][key] - res[b][key]).max())
                row += [f"{err:.2e}"]
            ok &= err <= tol
        rows.append(row)
    header = ["pair", "max |eval logits diff|", "max |train logits diff|", "|loss diff|",
              "max relative gradient error"]
    scale = float(np.abs(res[FRAMEWORKS[0]]["eval logits"]).max())  # the first framework's
    where = ", ".join(f"{fw} {res[fw]['device']}" for fw in FRAMEWORKS)
    text = (render(header, rows) + f"\ncomputed in {dtype} on {where}; logit scale: max |logit| = "
            f"{scale:.3f}; tolerances "
            + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items())
            + f"\nwithin tolerance: {'yes' if ok else 'NO'} ({', '.join(NAMES.values())})")
    return text, ok


PART_TOLERANCE = 1e-5  # of the part's scale: max |output| in the first framework


def part_outputs(spec: ResNetSpec, weights: Weights, x: np.ndarray, dtype: str = "float32",
                 device: str = "cpu") -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(mode, framework) -> every part's and block's output (NCHW) for the batch, in eval and
    train mode, each from a fresh adapter (a train-mode pass moves the running statistics)."""
    names = parts_and_blocks(spec)
    out = {}
    for fw in FRAMEWORKS:
        chosen = module(fw, "devices").select(device)
        for mode in ("eval", "train"):
            adapter = load(fw).Adapter(spec, weights, dtype=dtype, device=str(chosen))
            out[mode, fw] = adapter.features(x, names, training=mode == "train")
    return out


def per_part(spec: ResNetSpec, weights: Weights, x: np.ndarray, dtype: str = "float32",
             device: str = "cpu") -> tuple[str, bool]:
    """For each part and block in forward order, in eval and train mode, the largest difference
    per framework pair, and the first one beyond PART_TOLERANCE of the part's scale: where
    the frameworks part (a divergence spreads to everything after it)."""
    out, first = part_outputs(spec, weights, x, dtype, device), None
    pairs = list(itertools.combinations(FRAMEWORKS, 2))
    rows = []
    for name in parts_and_blocks(spec):
        for mode in ("eval", "train"):
            scale = float(np.abs(out[mode, FRAMEWORKS[0]][name]).max())
            row: list[object] = [name, mode, f"{scale:.3g}"]
            for a, b in pairs:
                err = float(np.abs(out[mode, a][name] - out[mode, b][name]).max())
                row.append(f"{err:.2e}")
                if first is None and err > PART_TOLERANCE * scale:
                    first = f"{name} in {mode} mode, {a} vs {b}: {err:.2e} > {PART_TOLERANCE:g} x {scale:.3g}"
            rows.append(row)
    header = ["part", "mode", "max |output|"] + [f"{a} vs {b}" for a, b in pairs]
    verdict = (f"first beyond tolerance: {first}" if first else
               f"every part and block within tolerance ({PART_TOLERANCE:g} of its max |output|)")
    return render(header, rows) + "\n" + verdict, first is None


def before_gpu_crosscheck() -> None:
    """Every framework's `devices.before_crosscheck()`, before any framework computes: what must
    be set before a framework loads (MXNet reads its determinism switches once, when it sets up
    its first GPU operator). Last record first: importing a devices module may load frameworks
    besides its own (TensorFlow's loads MXNet first, see resnet_tf/__init__.py), and each hook
    must run before its own framework loads."""
    for fw in reversed(FRAMEWORKS):
        module(fw, "devices").before_crosscheck()


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="resnet-crosscheck", description=description(__doc__))
    parser.add_argument("--weights", type=path_arg, help="weights file in any format resnet-convert reads "
                        "(.safetensors, .npz, .pt, .weights.h5, .params, torchvision/timm .pth, "
                        ".bin), found from its contents; default: the shared seeded "
                        "initialisation")
    add_spec_flags(parser)
    parser.add_argument("--input-size", type=positive_int, default=96)
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="compute dtype in every framework (default float32, as trained); "
                        "float64 shows the agreement free of float32 rounding and ReLU kinks")
    parser.add_argument("--per-part", action="store_true",
                        help="also every part's and block's output, in eval and train mode, per "
                        "framework pair, naming the first beyond tolerance")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    spec = spec_of(args)
    # The batch runs in train mode too: refused here, before any framework loads, if it cannot.
    check_geometry(spec, (args.batch, spec.in_channels, args.input_size, args.input_size),
                   training=True)
    check_memory(spec, args.batch, args.input_size, True,
                 f"--batch {args.batch}, --input-size {args.input_size}",
                 itemsize=8 if args.dtype == "float64" else 4)
    if args.device != "cpu":  # before reading --weights, which may load a framework
        before_gpu_crosscheck()
    if args.weights:
        from common.commands.convert import read
        weights = read(args.weights, spec)
    else:
        weights = init_weights(spec, args.seed)
    text, ok = crosscheck(spec, weights, args.input_size, args.batch, args.seed, args.dtype,
                          args.device)
    print(text)
    if args.per_part:
        x = np.random.default_rng(args.seed).normal(
            size=(args.batch, spec.in_channels, args.input_size, args.input_size)).astype(np.float32)
        text, parts_ok = per_part(spec, weights, x, args.dtype, args.device)
        print("\nper part and block:\n" + text)
        ok &= parts_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
