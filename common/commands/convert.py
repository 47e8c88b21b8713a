"""Convert a weights file between formats: four frameworks, torchvision and timm.

Every conversion goes through canonical weights (common.core.weights). Formats (`--from`/`--to
NAME`; `auto` reads a file's format from its name and the names it holds, and writes the default
format of the name): canonical `.safetensors`/`.npz` (any framework), torch `.pt`/`.pth` (this
project's PyTorch state_dict), tf `.weights.h5` (Keras), mx `.params` (Gluon), jax `.msgpack`
(Flax), torchvision `.pth`/`.pt`/`.bin`/`.safetensors` (torchvision's and timm's ResNet
state_dicts), keras `.weights.h5`/`.h5` (Keras applications), gluon `.params` (the Gluon model zoo): the other
libraries' formats come from each package's module `library` (its `FORMATS`).

    python -m common.commands.convert model.pt model.weights.h5 --arch d2l_resnet18
    python -m common.commands.convert resnet18-f37072fd.pth resnet18.safetensors --arch resnet18
    python -m common.commands.convert weights.safetensors resnet18.pth --arch resnet18 --to torchvision
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.commands.cli import Parser, add_spec_flags, description, guarded, path_arg, spec_of
from common.formats import libraries
from common.formats.libraries import Format, head_bias
from common.core.conventions import (CONVENTIONS, Convention, get_convention, metadata,
                                     read_labels)
from common.core.presets import convention_of
from common.formats.metadata import read_meta, write_meta
from common.core.files import arrays_bytes, atomic_path, ensure_space, writable_dir
from common.frameworks import FRAMEWORKS, load, module
from common.core.spec import ResNetSpec
from common.core.errors import Error
from common.core.weights import (Weights, WeightsError, canonical_layout, check_weights, load_weights,
                                 save_weights)


def _native(framework: str) -> tuple:
    """read and write of a framework's own file: its model loads or saves it."""
    def read(path: Path, spec: ResNetSpec) -> Weights:
        module = load(framework)
        return module.to_canonical(module.load_native(module.build(spec, init="framework"),
                                                      str(path)))

    def write(weights: Weights, path: Path, spec: ResNetSpec) -> None:
        module = load(framework)
        model = module.from_canonical(module.build(spec, init="framework"), weights)
        with atomic_path(path) as tmp:
            module.save_native(model, str(tmp))
    return read, write


def _canonical_names(names) -> bool:
    """The project's names: canonical ones, PyTorch's and Gluon's (`arg:` from export) alike."""
    return any(n.split(":", 1)[-1].startswith(("stem.", "stage", "head.")) for n in names)


def _write_canonical(weights: Weights, path: Path, spec: ResNetSpec) -> None:
    check_weights(spec, weights)
    save_weights(weights, path)


# Every format, by the name --from/--to take: the project's own, then each package's library's
# (torchvision, keras, gluon), in the registry's order. For a suffix that several share, the
# first listed is what `auto` writes (the project's own); reading, `auto` asks each one's
# detect() (common.formats.libraries.Format).
LIBRARIES = [module(fw, "library") for fw in FRAMEWORKS]
FORMATS: dict[str, Format] = {
    "torch": Format("PyTorch state_dict of this project's model", (".pt", ".pth"),
                    _canonical_names, *_native("torch"), head_bias("head.fc.bias")),
    "tf": Format("Keras weights of this project's model", (".weights.h5",),
                 lambda names: any(n.startswith(("head/fc/", "layers/stem/")) for n in names),
                 *_native("tf"), head_bias("head/fc/vars/1")),
    "mx": Format("Gluon parameters of this project's model", (".params",), _canonical_names,
                 *_native("mx"), head_bias("head.fc.bias", "arg:head.fc.bias")),
    "jax": Format("Flax variables of this project's model", (".msgpack",),
                  lambda names: any(n.startswith(("params/stem/", "params/head/")) for n in names),
                  *_native("jax"), head_bias("params/head/fc/bias")),
    "canonical": Format("canonical weights, any framework", (".safetensors", ".npz"),
                        _canonical_names, lambda path, spec: load_weights(path, spec),
                        _write_canonical, head_bias("head.fc.bias")),
    **{name: fmt for library in LIBRARIES for name, fmt in library.FORMATS.items()},
}
# The containers whose names and shapes detection reads: .safetensors and .npz, then each
# package's (.pt/.pth/.bin, .h5, .params).
CONTAINERS = libraries.CONTAINERS | {suffix: shapes for library in LIBRARIES
                                     for suffix, shapes in library.CONTAINERS.items()}
NATIVE = {suffix: fw for fw in FRAMEWORKS for suffix in FORMATS[fw].suffixes}
CANONICAL = FORMATS["canonical"].suffixes
SUFFIXES = tuple(dict.fromkeys(s for fmt in FORMATS.values() for s in fmt.suffixes))


def stored_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in a weights file, from its container
    (common.formats.libraries.stored_shapes)."""
    return libraries.stored_shapes(path, CONTAINERS)


def formats_of_name(path: str | Path) -> list[str]:
    """The formats whose files may have this name, the name's default first."""
    return [name for name, fmt in FORMATS.items() if str(path).endswith(fmt.suffixes)]


def file_format(path: str | Path) -> str:
    """The default format of a file name: what `write` writes there unless told otherwise."""
    found = formats_of_name(path)
    if not found:
        raise WeightsError(f"weights file: expected a name ending in {', '.join(SUFFIXES)}, "
                           f"got {str(path)!r}")
    return found[0]


def _checked(path: str | Path, fmt: str) -> str:
    """A format asked for by name (--from/--to), after checking that it reads this file name."""
    if fmt not in FORMATS:
        raise Error(f"format: expected one of auto, {', '.join(FORMATS)}, got {fmt!r}")
    if not str(path).endswith(FORMATS[fmt].suffixes):
        raise WeightsError(f"{fmt} weights file: expected a name ending in "
                           f"{', '.join(FORMATS[fmt].suffixes)}, got {str(path)!r}")
    return fmt


def detect_format(path: str | Path) -> str:
    """The format of an existing file: among the formats its name allows, the first whose
    detect() takes the names the file holds. If none does, or the file cannot be listed, the
    name's default, whose reader then says what does not fit or why it cannot read it."""
    file_format(path)  # a name of no format is refused
    found = formats_of_name(path)
    if len(found) > 1:
        try:
            names = stored_shapes(path)
        except Exception:  # noqa: BLE001 - a damaged file: its default reader names the fault
            return found[0]
        return next((f for f in found if FORMATS[f].detect(names)), found[0])
    return found[0]


def source_format(path: str | Path, fmt: str = "auto") -> str:
    """The format to read `path` in: `fmt`, or with "auto" the file's own (detect_format)."""
    file_format(path)
    if not Path(path).is_file():
        raise WeightsError(f"weights file: expected an existing file, got {path}")
    return detect_format(path) if fmt == "auto" else _checked(path, fmt)


def target_format(path: str | Path, fmt: str = "auto") -> str:
    """The format to write `path` in: `fmt`, or with "auto" the default of its name."""
    return file_format(path) if fmt == "auto" else _checked(path, fmt)


def read(path: str | Path, spec: ResNetSpec, fmt: str = "auto") -> Weights:
    """Canonical weights from any supported file, checked against `spec`."""
    weights = FORMATS[source_format(path, fmt)].read(Path(path), spec)
    check_weights(spec, weights)
    return {name: weights[name] for name in canonical_layout(spec)}  # canonical order


def write(weights: Weights, path: str | Path, spec: ResNetSpec, fmt: str = "auto") -> None:
    """Write canonical weights in any supported format; refused before it starts when the
    file system has too little room (a library may crash on a full disk: MXNet does)."""
    ensure_space(path, arrays_bytes(weights.values()))
    FORMATS[target_format(path, fmt)].write(weights, Path(path), spec)


def file_classes(path: str | Path, fmt: str = "auto") -> int | None:
    """The number of classes of a file's head, from its names and shapes; None if it cannot
    tell (its reader then says what is wrong with the file)."""
    try:
        fmt = source_format(path, fmt)
        return FORMATS[fmt].classes(stored_shapes(path))
    except Exception:  # noqa: BLE001 - left to the reader, which names the file's fault
        return None


def file_meta(path: str | Path, spec: ResNetSpec, fmt: str = "auto",
              convention: str | None = None, labels: str | None = None) -> dict:
    """What a weights file's network expects and names: {"convention": Convention, "labels":
    [...] or absent}. The convention is `convention` if given, else the one the file records
    (its safetensors metadata or its sidecar), else its library format's (torchvision, keras,
    gluon), else the preset's (common.core.presets.convention_of); the labels are those of
    the `labels` file if given, else the file's."""
    meta = read_meta(path)
    fmt = source_format(path, fmt)
    if convention is not None:
        meta["convention"] = get_convention(convention)
    elif "convention" not in meta:
        meta["convention"] = get_convention(FORMATS[fmt].convention(spec) or convention_of(spec))
    if labels is not None:
        meta["labels"] = read_labels(labels)
    return meta


def add_meta_flags(parser, what: str) -> None:
    """--convention and --labels: what a weights file's input and classes are, when the file
    does not say or says it wrongly."""
    parser.add_argument("--convention", default=None, choices=CONVENTIONS,
                        help=f"the input convention {what} (default: the file's metadata, its "
                             f"library's, or the preset's)")
    parser.add_argument("--labels", type=path_arg, default=None,
                        help=f"text file of class names, one a line, {what} (default: the "
                             f"file's metadata)")


def check_labels(meta: dict, spec: ResNetSpec, where: str) -> None:
    """Refuse class names whose count is not the network's."""
    labels = meta.get("labels")
    if labels is not None and len(labels) != spec.num_classes:
        raise Error(f"{where}: expected {spec.num_classes} class names (one a line), got "
                    f"{len(labels)}")


def write_with_meta(weights: Weights, path: str | Path, spec: ResNetSpec, fmt: str,
                    meta: dict) -> None:
    """write(), then the convention and labels recorded with the file (formats.metadata)."""
    write(weights, path, spec, fmt)
    conv: Convention | None = meta.get("convention")
    write_meta(path, metadata(conv, meta.get("labels")))


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="resnet-convert", description=description(__doc__),
                    epilog="formats: " + "; ".join(f"{name}: {fmt.what} ({', '.join(fmt.suffixes)})"
                                                   for name, fmt in FORMATS.items()))
    parser.add_argument("src", type=path_arg, help="weights file to read")
    parser.add_argument("dst", type=path_arg, help="weights file to write")
    parser.add_argument("--from", dest="src_format", default="auto", choices=["auto", *FORMATS],
                        help="SRC's format; auto: from its name and the names it holds")
    parser.add_argument("--to", dest="dst_format", default="auto", choices=["auto", *FORMATS],
                        help="DST's format; auto: the default of its name (.pt/.pth: torch, "
                             ".safetensors: canonical, .bin: torchvision)")
    add_spec_flags(parser)
    add_meta_flags(parser, "DST records")
    args = parser.parse_args(argv)
    spec = spec_of(args)
    dst_format = target_format(args.dst, args.dst_format)  # found before src is read
    writable_dir(Path(args.dst).resolve().parent, "dst")
    src_format = source_format(args.src, args.src_format)
    meta = file_meta(args.src, spec, src_format, args.convention, args.labels)
    check_labels(meta, spec, f"--labels {args.labels}" if args.labels else f"{args.src}")
    write_with_meta(read(args.src, spec, src_format), args.dst, spec, dst_format, meta)
    print(f"{args.src} ({src_format}) -> {args.dst} ({dst_format}), {spec.name}, input "
          f"convention {meta['convention'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
