"""pytest's hooks and fixtures. Importing tests.helpers imports all four frameworks: one that
fails to import fails the run (collection error); nothing is ever skipped for a missing
framework."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# JAX compiles every program in every process anew: its persistent compilation cache, shared by
# this run's workers and every process they start (they inherit the environment), compiles each
# once (a JAX train script's second run: 9.2 s -> 3.4 s). Set before anything imports JAX, by
# the run's first process, which removes it at the end; a cache the user set is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(
        Path(tempfile.gettempdir()) / f"resnet3-tests-jax-cache-{os.getpid()}")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["RESNET3_TESTS_JAX_CACHE_OWNER"] = str(os.getpid())

from common.frameworks import FRAMEWORKS, module  # noqa: E402 - after the cache is set
from tests.helpers import MODULES  # noqa: E402


# The test files that take longest, with their summed seconds from `--durations=0` (2 cores,
# Intel Xeon with AMX, 2026-12-05, commit 03e2048, less what later commits cut); the others
# take under 25 s each.
# pytest-xdist hands out whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder): starting with the long ones keeps both workers busy to the end,
# where a long file left late (test_precision.py, 92 s, had dropped off this list) ran on one
# worker while the other sat idle.
SECONDS = {"test_two_hosts.py": 153, "test_preset_structure.py": 133, "test_fidelity.py": 109,
           "test_zoo.py": 96, "test_precision.py": 92, "test_commands.py": 89,
           "test_notebooks.py": 87, "test_launch.py": 75, "test_bench.py": 74,
           "test_export.py": 64, "test_bad_inputs.py": 59, "test_run_faults.py": 56,
           "test_speed_paths.py": 52, "test_training.py": 51, "test_jax.py": 48,
           "test_convert.py": 47, "test_mx_modes.py": 44, "test_distributed_tf.py": 36,
           "test_ecosystem.py": 33, "test_metrics.py": 32}
LONGEST_FIRST = sorted(SECONDS, key=SECONDS.get, reverse=True)


def _longest_first(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """The long files first (see LONGEST_FIRST; a stable sort keeps each file's own order).
    Tests marked gpu("torch") (or tf, mx) run where that framework sees a GPU, and are
    skipped with that reason elsewhere: the one skip this suite allows (a framework that does
    not import fails the run instead)."""
    stale = [name for name in SECONDS if not (Path(__file__).parent / name).is_file()]
    if stale:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py SECONDS: expected test files, got {stale} "
                                f"that do not exist")
    items.sort(key=_longest_first)
    seen = {}
    for item in items:
        for marker in item.iter_markers("gpu"):  # gpu("torch"), gpu("tf"), ...: all must see one
            framework = marker.args[0]
            if framework not in seen:
                seen[framework] = module(framework, "devices").visible_gpus()
            if not seen[framework]:
                item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {framework} sees none "
                                                        f"here"))
                break


@pytest.fixture(params=FRAMEWORKS)
def fw(request):
    """Each framework package in turn (resnet_torch, resnet_tf, resnet_mx)."""
    return MODULES[request.param]


def pytest_sessionfinish(session):
    """The run's JAX cache goes with the process that made it (pytest children of the tests
    inherit the variable and leave it)."""
    if os.environ.get("RESNET3_TESTS_JAX_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
