"""The framework-free core: the architecture as data (spec, presets), its oracle, weights,
initialisation, input checks, optimiser settings, data and files.

Nothing here imports a deep-learning framework or a `resnet_*` package. The presets are
imported first, so that `common.core.spec.PRESETS` is full whenever a spec is used.
"""
from common.core import presets  # noqa: F401 - fills common.core.spec.PRESETS
