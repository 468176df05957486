"""Fixtures of the integration tests: the stand-in flashinfer, a small workspace, cleanup."""
from __future__ import annotations

import sys

import pytest
from integration_helpers import STUB_DIR, SmallWorkspace


@pytest.fixture
def flashinfer_stub():
    """The stand-in ``flashinfer`` package, imported fresh (so patch-on-import is exercised)."""
    for name in [n for n in sys.modules if n == "flashinfer" or n.startswith("flashinfer.")]:
        del sys.modules[name]
    sys.path.insert(0, str(STUB_DIR))
    yield
    sys.path.remove(str(STUB_DIR))
    for name in [n for n in sys.modules if n == "flashinfer" or n.startswith("flashinfer.")]:
        del sys.modules[name]


@pytest.fixture
def small_ws(tmp_path) -> SmallWorkspace:
    return SmallWorkspace.create(tmp_path)


@pytest.fixture(autouse=True)
def _disable_after():
    yield
    from fibuild.integrations.activation import disable

    disable()
