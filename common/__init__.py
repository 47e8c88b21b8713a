"""Framework-neutral core: the architecture as data, its oracle, weights, initialisation.

Nothing in this package imports a deep-learning framework.
"""
from common.core.spec import (BatchNormSpec, ResNetSpec, SpecError, Stage, Stem, PRESETS,
                         get_spec)
from common.core.oracle import ParamCounts, part_table, layer_table, param_counts

__all__ = ["BatchNormSpec", "ResNetSpec", "SpecError", "Stage", "Stem", "PRESETS", "get_spec",
           "ParamCounts", "part_table", "layer_table", "param_counts"]
