"""Fixtures of the integration tests: the stand-in flashinfer, a small workspace, cleanup."""
from __future__ import annotations

import sys

import pytest
from integration_helpers import FIXTURES, STUB_DIR, SmallWorkspace


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


def _fresh(folders, packages):
    """Put ``folders`` first on sys.path and drop ``packages`` (and their submodules) from
    sys.modules before and after the test: each test imports them anew."""
    def drop():
        for name in [n for n in sys.modules if n.split(".")[0] in packages]:
            del sys.modules[name]

    drop()
    for folder in folders:
        sys.path.insert(0, str(folder))
    yield
    for folder in folders:
        sys.path.remove(str(folder))
    drop()


@pytest.fixture
def sglang_standin():
    """The stand-ins of ``sgl_kernel`` (0.4.10) and of SGLang's layers that call it, fresh."""
    yield from _fresh((FIXTURES / "sgl_kernel_stub", FIXTURES / "sglang_stub"), ("sgl_kernel", "sglang"))


@pytest.fixture
def vllm_standin():
    """The vLLM stand-in, fresh, except its ``_C`` ops: defined once per process (as the
    real extension is) by importing ``vllm._C_stable_libtorch``, which stays imported."""
    folder = str(FIXTURES / "vllm_stub")
    sys.path.insert(0, folder)
    ops = sys.modules.get("vllm._C_stable_libtorch")
    for name in [n for n in sys.modules if n.split(".")[0] == "vllm"]:
        del sys.modules[name]
    if ops is not None:
        sys.modules["vllm._C_stable_libtorch"] = ops
    import vllm._C_stable_libtorch  # noqa: F401
    yield
    sys.path.remove(folder)
