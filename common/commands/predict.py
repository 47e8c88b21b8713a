"""Run images through a network and print the top classes, in one framework or in all.

The images (JPEG, PNG: what Pillow reads) are resized, cropped and normalised as the weights
file's input convention says (its metadata, its library's, or the preset's;
common.core.conventions), once, in NumPy; every framework gets the same NCHW batch. Class
names come from the file's metadata or --labels; otherwise classes are printed by index.

    resnet3 predict photo.jpg --arch resnet18 --weights resnet18.safetensors
    resnet3 predict a.jpg b.png --arch keras_resnet50 --weights resnet50.h5 --framework all
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from common.commands import convert
from common.commands.cli import (Parser, add_spec_flags, description, guarded, path_arg,
                                 positive_int, spec_of)
from common.core.conventions import Convention, ConventionError, load_image, normalise
from common.core.devices import add_device_flag
from common.core.errors import Error
from common.core.files import path_error
from common.core.spec import ResNetSpec
from common.frameworks import FRAMEWORKS, load

ALL = "all"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of a batch of logits, in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def image_batch(paths: list[str], conv: Convention) -> np.ndarray:
    """The images at `paths` as one NCHW float32 batch, as the convention says."""
    for path in paths:
        if not Path(path).is_file():
            raise path_error(FileNotFoundError, f"image: expected an existing file, got {path}",
                             path)
    return normalise(np.concatenate([load_image(p, conv) for p in paths]), conv)


def probabilities(spec: ResNetSpec, weights: dict, x: np.ndarray, frameworks: tuple[str, ...],
                  device: str = "auto") -> dict[str, np.ndarray]:
    """Each framework's class probabilities of the batch x (eval mode)."""
    return {fw: softmax(load(fw).Adapter(spec, weights, device=device).logits(x))
            for fw in frameworks}


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """The k most probable classes of each row, most probable first (ties: lower index)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def agreement(probs: dict[str, np.ndarray], k: int) -> tuple[bool, float, str]:
    """Whether every framework's top-k classes (in order) are the same for every image, the
    largest probability difference between two frameworks, and that pair."""
    tops = {fw: top_k(p, k) for fw, p in probs.items()}
    first = next(iter(tops.values()))
    same = all(np.array_equal(first, t) for t in tops.values())
    worst, pair = 0.0, ""
    for a, b in itertools.combinations(probs, 2):
        diff = float(np.abs(probs[a] - probs[b]).max())
        if diff >= worst:
            worst, pair = diff, f"{a}-{b}"
    return same, worst, pair


def class_name(index: int, labels: list[str] | None) -> str:
    return f"{labels[index]} ({index})" if labels else f"class {index}"


def report(paths: list[str], probs: dict[str, np.ndarray], k: int,
           labels: list[str] | None) -> list[str]:
    """The printed lines: per image, each framework's top k; with several frameworks, whether
    they agree and by how much their probabilities differ."""
    lines = []
    for i, path in enumerate(paths):
        lines.append(f"{path}:")
        for fw, p in probs.items():
            lines.append(f"  {fw}:")
            lines += [f"    {rank}. {p[i, c]:.4f}  {class_name(int(c), labels)}"
                      for rank, c in enumerate(top_k(p[i:i + 1], k)[0], start=1)]
    if len(probs) > 1:
        same, worst, pair = agreement(probs, k)
        lines.append(f"top-{k} {'agree' if same else 'DIFFER'} across {', '.join(probs)}; "
                     f"largest probability difference {worst:.2e} ({pair})")
    return lines


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="resnet-predict", description=description(__doc__))
    p.add_argument("images", nargs="+", type=path_arg, metavar="IMAGE",
                   help="JPEG or PNG files")
    p.add_argument("--weights", required=True, type=path_arg,
                   help="weights file of any format resnet-convert reads")
    p.add_argument("--from", dest="src_format", default="auto", choices=["auto", *convert.FORMATS],
                   help="the file's format; auto: from its name and the names it holds")
    p.add_argument("--framework", default=FRAMEWORKS[0], choices=[*FRAMEWORKS, ALL],
                   help="the framework that runs the network, or all of them")
    p.add_argument("--top", type=positive_int, default=5, help="classes printed per image")
    convert.add_meta_flags(p, "of the weights")
    add_spec_flags(p)
    add_device_flag(p)
    return p


def spec_for_file(args: argparse.Namespace) -> ResNetSpec:
    """The spec of the flags, with the classes of the file's head unless --num-classes says."""
    spec = spec_of(args)
    if args.num_classes is None:
        classes = convert.file_classes(args.weights, args.src_format)
        if classes is not None and classes != spec.num_classes:
            spec = spec.with_overrides(num_classes=classes)
    return spec


def check_request(args: argparse.Namespace, spec: ResNetSpec, conv: Convention) -> None:
    """What does not fit, refused before any framework loads."""
    if conv.channels != spec.in_channels:
        raise ConventionError(f"--convention: expected one giving the network's "
                              f"{spec.in_channels} input channel(s), got {conv.name!r} "
                              f"({conv.color}: {conv.channels})")
    if args.top > spec.num_classes:
        raise Error(f"--top: expected at most the network's {spec.num_classes} classes, got "
                    f"{args.top}")


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not Path(args.weights).is_file():
        raise path_error(FileNotFoundError, f"--weights: expected an existing file, got "
                         f"{args.weights}", args.weights)
    spec = spec_for_file(args)
    meta = convert.file_meta(args.weights, spec, args.src_format, args.convention, args.labels)
    convert.check_labels(meta, spec, f"--labels {args.labels}" if args.labels
                         else f"the labels of {args.weights}")
    conv = meta["convention"]
    check_request(args, spec, conv)
    x = image_batch(args.images, conv)
    weights = convert.read(args.weights, spec, args.src_format)
    frameworks = FRAMEWORKS if args.framework == ALL else (args.framework,)
    probs = probabilities(spec, weights, x, tuple(frameworks), args.device)
    print(f"{spec.name} from {args.weights}, input convention {conv.name}")
    print("\n".join(report(args.images, probs, args.top, meta.get("labels"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
