"""pytest's hooks and fixtures. Importing tests.helpers imports all three frameworks: one that
fails to import fails the run (collection error); nothing is ever skipped for a missing
framework."""
from __future__ import annotations

import pytest

from common.frameworks import FRAMEWORKS, module
from tests.helpers import MODULES


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu("torch") (or tf, mx) run where that framework sees a GPU, and are
    skipped with that reason elsewhere: the one skip this suite allows (a framework that does
    not import fails the run instead)."""
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
