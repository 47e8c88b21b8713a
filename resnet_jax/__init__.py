"""d2l's ResNet in JAX/Flax (linen), built from the shared spec in `common` (NHWC batches).

Names are imported on first use (common.frameworks.lazy_exports), so that importing the package
does not load JAX. The network a name builds is a `Network` (resnet_jax.model): the Flax module
and its variables together, since a Flax module holds no weights."""
from common.frameworks import EXPORTS, lazy_exports

LAYOUT = "NHWC"

_WHERE = {"Network": "model", **EXPORTS}

__all__ = ["LAYOUT", *_WHERE]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
