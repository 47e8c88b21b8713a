"""Convert a weights file between frameworks, through the canonical layout.

The format follows the file name: `.pt`/`.pth` (PyTorch state_dict), `.weights.h5` (Keras),
`.params` (Gluon), `.safetensors`/`.npz` (canonical, any framework).

    python -m common.convert model.pt model.weights.h5 --arch d2l_resnet18
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.files import atomic_path
from common.cli import Parser
from common.frameworks import load
from common.spec import PRESETS, ResNetSpec, get_spec
from common.weights import Weights, canonical_layout, check_weights, load_weights, save_weights

NATIVE = {".pt": "torch", ".pth": "torch", ".weights.h5": "tf", ".params": "mx"}
CANONICAL = (".safetensors", ".npz")


def file_format(path: str | Path) -> str:
    """'canonical' or the framework whose native format `path` names."""
    name = str(path)
    for suffix, fw in NATIVE.items():
        if name.endswith(suffix):
            return fw
    if name.endswith(CANONICAL):
        return "canonical"
    raise ValueError(f"weights file: expected a name ending in "
                     f"{', '.join([*NATIVE, *CANONICAL])}, got {name!r}")


def read(path: str | Path, spec: ResNetSpec) -> Weights:
    """Canonical weights from any supported file, checked against `spec`."""
    fmt = file_format(path)
    if fmt == "canonical":
        weights = load_weights(path)
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights file: expected an existing file, got {path}")
        module = load(fmt)
        weights = module.to_canonical(module.load_native(module.build(spec, init="framework"), str(path)))
    check_weights(spec, weights)
    return {name: weights[name] for name in canonical_layout(spec)}  # canonical order


def write(weights: Weights, path: str | Path, spec: ResNetSpec) -> None:
    """Write canonical weights to any supported file format."""
    fmt = file_format(path)
    if fmt == "canonical":
        check_weights(spec, weights)
        save_weights(weights, path)
        return
    module = load(fmt)
    model = module.from_canonical(module.build(spec, init="framework"), weights)
    with atomic_path(path) as tmp:
        module.save_native(model, str(tmp))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="resnet-convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="weights file to read")
    parser.add_argument("dst", help="weights file to write")
    parser.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS))
    parser.add_argument("--num-classes", type=int, help="override the preset's classes")
    parser.add_argument("--in-channels", type=int, help="override the preset's input channels")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("num_classes", args.num_classes),
                                   ("in_channels", args.in_channels)) if v is not None}
    spec = get_spec(args.arch, **overrides)
    try:
        write(read(args.src, spec), args.dst, spec)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"{args.src} ({file_format(args.src)}) -> {args.dst} ({file_format(args.dst)}), {spec.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
