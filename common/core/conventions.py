"""Input conventions: what a network expects of an image, as data, and the one NumPy function
that applies it to a batch for every framework.

A network's weights are half of it; the other half is the input its library fed it while it
trained. torchvision, timm and the Gluon zoo expect RGB in [0, 1] normalised by ImageNet's
mean and std; Keras's ResNet50/101/152 "caffe" input (BGR, the mean of each channel
subtracted, no scaling); Keras's ResNet*V2 "tf" input ([-1, 1]); d2l a grayscale [0, 1]
image. A `Convention` says all of it: color order, scale, mean, std, resize and crop, and the
interpolation. `normalise` applies the arithmetic to an NHWC batch (NumPy, float32) and
returns the NCHW batch every adapter takes; `load_image` reads a file with Pillow and resizes
and crops it as the convention says.

The arithmetic follows each library's own order of operations, so that the result equals the
library's to float32 rounding: `x / scale`, then `- mean`, then `/ std` (torchvision's
`ToTensor` divides by 255, `Normalize` subtracts and divides; Keras's caffe mode flips RGB to
BGR and subtracts; its tf mode divides by 127.5 and subtracts 1).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.core.errors import Error

COLORS = ("RGB", "BGR", "L")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
RESIZE_MODES = ("shorter", "exact")
# ImageNet's per-channel statistics in RGB order, as torchvision documents them ([0, 1] scale),
# and Keras's caffe means ([0, 255] scale, BGR order, as keras.applications.imagenet_utils).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# ITU-R 601-2 luma, Pillow's convert("L") weights for a color image seen as grayscale.
LUMA = (0.299, 0.587, 0.114)


class ConventionError(Error):
    """A convention, its name or the batch it is applied to is not what it should be."""


@dataclass(frozen=True)
class Convention:
    """How an image becomes a network's input.

    `color`: the channel order the network sees ("RGB", "BGR", or "L": one grayscale
    channel). `scale`: the 0..255 pixel values are divided by it (255: [0, 1]; 127.5 and a
    mean of 1: [-1, 1]; 1: left as they are). `mean`, `std`: per channel of the network's
    input, in its color order, after the scale. `resize`: the image is resized so that its
    shorter side is `resize` ("shorter", torchvision's Resize(int)), or to resize x resize
    ("exact", Keras's load_img(target_size=)); then the centre `crop` x `crop` is taken.
    `interpolation`: Pillow's filter for the resize."""
    name: str
    color: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    crop: int
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    source: str = ""  # where the convention comes from, for a reader

    def __post_init__(self) -> None:
        channels = 1 if self.color == "L" else 3
        _require(self.color in COLORS, "color", f"one of {', '.join(COLORS)}", self.color)
        _require(self.scale > 0, "scale", "a number > 0", self.scale)
        for field in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, field))
            object.__setattr__(self, field, value)
            _require(len(value) == channels, field, f"{channels} values for {self.color}", value)
        _require(all(s > 0 for s in self.std), "std", "values > 0", self.std)
        _require(self.resize_mode in RESIZE_MODES, "resize_mode",
                 f"one of {', '.join(RESIZE_MODES)}", self.resize_mode)
        _require(self.interpolation in INTERPOLATIONS, "interpolation",
                 f"one of {', '.join(INTERPOLATIONS)}", self.interpolation)
        _require(0 < self.crop <= self.resize, "crop", f"a size in 1..resize ({self.resize})",
                 self.crop)

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (what a weights file's metadata holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "convention") -> "Convention":
        """The record from as_dict's data; a ConventionError names what does not fit."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, Mapping) or not set(data) <= fields or "name" not in data:
            raise ConventionError(f"{where}: expected an object with the fields "
                                  f"{', '.join(fields)}, got {data!r}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ConventionError(f"{where}: {err}") from None


def _require(ok: bool, field: str, expected: str, given: Any) -> None:
    if not ok:
        raise ConventionError(f"convention {field}: expected {expected}, got {given!r}")


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("torchvision", "RGB", 255.0, IMAGENET_MEAN, IMAGENET_STD, 256, 224,
               source="torchvision's ImageNet weights (also timm's ResNets and the Gluon zoo): "
                      "Resize(256), CenterCrop(224), ToTensor, Normalize(mean, std)"),
    Convention("caffe", "BGR", 1.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), 224, 224, "exact",
               "nearest", "keras.applications.resnet.preprocess_input (ResNet50/101/152): BGR, "
                          "mean subtracted, not scaled; load_img(target_size=(224, 224))"),
    Convention("tf", "RGB", 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 224, 224, "exact",
               "nearest", "keras.applications.resnet_v2.preprocess_input (ResNet*V2): "
                          "[-1, 1]; load_img(target_size=(224, 224))"),
    Convention("d2l", "L", 255.0, (0.0,), (1.0,), 96, 96, "exact",
               source="d2l's Fashion-MNIST ResNet and this project's data pipeline: grayscale "
                      "in [0, 1], resized to 96 (the training default --resize)"),
    Convention("cifar", "RGB", 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 32, 32, "exact",
               source="this project's data pipeline for CIFAR-10: RGB in [0, 1], 32 x 32"),
)}


def get_convention(name_or_convention: str | Convention) -> Convention:
    """A convention by name (CONVENTIONS), or the record itself."""
    if isinstance(name_or_convention, Convention):
        return name_or_convention
    if name_or_convention not in CONVENTIONS:
        raise ConventionError(f"convention: expected one of {', '.join(CONVENTIONS)}, got "
                              f"{name_or_convention!r}")
    return CONVENTIONS[name_or_convention]


def normalise(images: np.ndarray, convention: str | Convention) -> np.ndarray:
    """An NHWC batch of RGB images with values 0..255 (uint8 or float; 3 channels, or 1 for a
    grayscale image) as the network's NCHW float32 input: the color order, then
    `x / scale - mean`, then `/ std`, in float32 (each library's own order)."""
    conv = get_convention(convention)
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ConventionError(f"images: expected an NHWC batch with 1 or 3 channels (RGB), got "
                              f"shape {x.shape}")
    x = x.astype(np.float32)
    if conv.color == "L" and x.shape[-1] == 3:
        x = x @ np.asarray(LUMA, np.float32)[:, None]
    elif conv.color != "L" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if conv.color == "BGR":
        x = x[..., ::-1]
    x = x / np.float32(conv.scale) - np.asarray(conv.mean, np.float32)
    if any(s != 1.0 for s in conv.std):
        x = x / np.asarray(conv.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def resized(image, conv: Convention):
    """A Pillow image resized and centre-cropped as `conv` says (RGB, or L for a grayscale
    convention)."""
    from PIL import Image
    image = image.convert("L" if conv.color == "L" else "RGB")
    method = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
              "bicubic": Image.BICUBIC}[conv.interpolation]
    w, h = image.size
    if conv.resize_mode == "exact":
        size = (conv.resize, conv.resize)
    elif w <= h:  # torchvision's Resize(int): the shorter side to `resize`, the ratio kept
        size = (conv.resize, int(conv.resize * h / w))
    else:
        size = (int(conv.resize * w / h), conv.resize)
    if size != (w, h):
        image = image.resize(size, method)
    w, h = image.size
    left, top = int(round((w - conv.crop) / 2.0)), int(round((h - conv.crop) / 2.0))
    return image.crop((left, top, left + conv.crop, top + conv.crop))


def load_image(path: str | Path, convention: str | Convention) -> np.ndarray:
    """One image file (JPEG, PNG: what Pillow reads) as a 1 x H x W x C uint8 batch, resized
    and cropped as the convention says; normalise() turns it into the network's input."""
    from PIL import Image, UnidentifiedImageError
    conv = get_convention(convention)
    try:
        with Image.open(path) as image:
            image.load()
            out = np.asarray(resized(image, conv), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ConventionError(f"image {path}: expected a JPEG or PNG file (an image Pillow "
                              f"reads), got a file of another kind") from None
    return out.reshape(1, conv.crop, conv.crop, conv.channels)


# --- a weights file's metadata: its convention and its class names ---------------------------

META_KEY = "resnet3"  # the safetensors metadata key (its values must be strings: JSON here)
SIDECAR = ".resnet3.json"  # beside a file whose format has no room: model.pth.resnet3.json


def metadata(convention: Convention | None, labels: list[str] | None = None) -> dict[str, Any]:
    """What a weights file records about its input and its classes."""
    out: dict[str, Any] = {}
    if convention is not None:
        out["convention"] = convention.as_dict()
    if labels:
        out["labels"] = list(labels)
    return out


def meta_as_text(meta: Mapping[str, Any]) -> dict[str, str]:
    """metadata() as safetensors' string -> string metadata."""
    return {META_KEY: json.dumps(meta)} if meta else {}


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + SIDECAR)


def read_meta_text(text: str | None, where: str) -> dict[str, Any]:
    """metadata() from its JSON text (None: no metadata), checked."""
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise ConventionError(f"{where}: expected JSON metadata, got text it cannot read "
                              f"({err})") from None
    if not isinstance(meta, dict):
        raise ConventionError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    if "convention" in meta:
        meta["convention"] = Convention.from_dict(meta["convention"], f"{where}: convention")
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list)
                                   and all(isinstance(s, str) for s in labels)):
        raise ConventionError(f"{where}: labels: expected a list of names, got {labels!r}")
    return meta


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file, one name per line (blank lines at the end ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConventionError(f"labels file {path}: expected one class name per line, got an "
                              f"empty file")
    return [line.strip() for line in lines]
