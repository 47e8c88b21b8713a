"""Framework-neutral core: the architecture as data, its oracle, weights, initialisation.

Nothing in this package imports a deep-learning framework.
"""
from common.core.oracle import ParamCounts, param_counts, part_table
from common.core.presets import PRESETS, get_spec
from common.core.spec import BatchNormSpec, ResNetSpec, SpecError, Stage, Stem

__all__ = ["BatchNormSpec", "ResNetSpec", "SpecError", "Stage", "Stem", "PRESETS", "get_spec",
           "ParamCounts", "part_table", "param_counts"]
