"""What a weights file says about its input and its classes: the input convention
(common.core.conventions) and the class names, as `resnet-convert` writes them and
`resnet3 predict` reads them.

A `.safetensors` file holds them in its header's `__metadata__` (key `resnet3`, JSON text),
whichever library's names the file uses; every other format (`.npz`, `.pt`/`.pth`, `.h5`,
`.params`, ...) has no room that all its readers keep, so a sidecar beside it holds the same
JSON: `model.pth.resnet3.json`. Reading never runs code: JSON and a safetensors header only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from common.core.conventions import META_KEY, meta_as_text, read_meta_text, sidecar
from common.core.files import atomic_path
from common.core.weights import SAFETENSORS_MAX_HEADER, unreadable


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The header object of a .safetensors file and the offset of its data."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > SAFETENSORS_MAX_HEADER:
            raise unreadable(path, "a safetensors file", ValueError(f"a header of {size} bytes"))
        try:
            header = json.loads(f.read(size))
        except ValueError as err:
            raise unreadable(path, "a safetensors file", err) from None
    return header, 8 + size


def write_meta(path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Record `meta` (conventions.metadata()) with the file at `path`: in a .safetensors
    header (the data is copied as it is: its offsets count from the header's end), or in the
    sidecar. Returns where it went. An empty `meta` writes nothing."""
    path = Path(path)
    if not meta:
        return path
    if path.suffix != ".safetensors":
        target = sidecar(path)
        with atomic_path(target) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return target
    header, start = _safetensors_header(path)
    header["__metadata__"] = dict(header.get("__metadata__") or {}) | meta_as_text(meta)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data on 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as out, open(path, "rb") as data:
        out.write(len(text).to_bytes(8, "little") + text)
        data.seek(start)
        shutil.copyfileobj(data, out)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata recorded with a weights file ({} if none): "convention" as a Convention,
    "labels" as a list of names."""
    path = Path(path)
    if path.suffix == ".safetensors":
        header, _ = _safetensors_header(path)
        text = (header.get("__metadata__") or {}).get(META_KEY)
        return read_meta_text(text, f"weights file {path}: metadata")
    side = sidecar(path)
    if side.is_file():
        return read_meta_text(side.read_text(encoding="utf-8"), f"metadata file {side}")
    return {}
