"""The examples in the detectors' docstrings run as doctests, so that the documentation cannot rot.

Every module under ``detectors/`` is searched; a module that defines a registered detector must carry at
least one example (river's convention: a detector's docs show it finding drift on a small seeded stream).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import detectors
from detectors import DETECTORS


def _modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(detectors.__path__, prefix=f"{detectors.__name__}.")
    )


_DETECTOR_MODULES = {cls.__module__ for cls in DETECTORS.values()}


def test_every_detector_module_is_searched() -> None:
    assert set(_modules()) >= _DETECTOR_MODULES


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    if name in _DETECTOR_MODULES:
        assert tests, f"{name} defines a detector but has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see above)"
