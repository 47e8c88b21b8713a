"""Flax's files as this package writes them: `.msgpack` containers (`flax.serialization`'s
msgpack of the variables, resnet_jax/weights.py). JAX has no model zoo of ResNet weights here,
so the package registers no library format (`FORMATS` is empty); its own `.msgpack` format is
common.commands.convert's "jax".

Importing this module imports no framework: listing a container's names and shapes reads the
msgpack data with `msgpack` alone (flax's own dependency), whose unpacker builds only dicts,
lists, numbers and bytes, so reading a file never runs code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from common.core.weights import WeightsError
from common.formats.libraries import Format

NDARRAY = 1  # flax.serialization's msgpack extension code of an array: (shape, dtype, bytes)


def _leaf_shape(code: int, data: bytes):
    """An extension value as its array's shape (flax writes arrays and NumPy scalars, codes 1
    and 3, as the msgpack of (shape, dtype name, bytes)); another code stays as it is."""
    import msgpack
    if code in (NDARRAY, 3):
        shape, _, _ = msgpack.unpackb(data, raw=True)
        return tuple(int(n) for n in shape)
    return msgpack.ExtType(code, data)


def msgpack_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of a Flax `.msgpack` file, its path in the variables joined
    with "/" ("params/stage2/0/conv1/kernel", "batch_stats/stem/bn/mean"), in Flax's layout."""
    import msgpack
    try:
        tree = msgpack.unpackb(Path(path).read_bytes(), ext_hook=_leaf_shape, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise WeightsError(f"{path}: expected a Flax msgpack file, got one msgpack cannot "
                           f"read ({err})") from None
    out: dict[str, tuple[int, ...]] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + "/")
            elif isinstance(value, tuple):
                out[name] = value
    if isinstance(tree, dict):
        walk(tree, "")
    return out


# The containers this package reads (common.formats.libraries.stored_shapes); no library's
# formats (common.commands.convert offers the package's own "jax" beside the others').
CONTAINERS: dict[str, Callable[[str | Path], dict[str, tuple[int, ...]]]] = {
    ".msgpack": msgpack_shapes}
FORMATS: dict[str, Format] = {}
