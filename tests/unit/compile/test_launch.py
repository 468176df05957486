"""fibuild.compile.launch: the compiled-handle fast path (on a stand-in for Triton's JIT function
and compiled kernel, so it runs without a GPU), the PDL gating from the manifest through the
loader, and Triton's own path under the interpreter."""
from __future__ import annotations

import inspect
import json
import sys
import textwrap
import types

import pytest

from fibuild.compile import launch
from fibuild.compile.launch import BoundLaunch, TritonLaunch, configure_package

torch = pytest.importorskip("torch")


class _Param:
    def __init__(self, p: inspect.Parameter):
        self.name = p.name
        self.default = p.default
        self.has_default = p.default is not inspect.Parameter.empty


class _Compiled:
    """What ``kernel[grid](...)`` returns: ``run`` (the launcher), ``function``, ``packed_metadata``."""

    def __init__(self, log):
        self.function, self.packed_metadata, self.log = 0xF00, ("warps", 8), log

    def run(self, *args):
        self.log.append(("fast", args))


class _FakeJit:
    """A stand-in for a ``@triton.jit`` function: records Triton-path launches, returns a
    compiled kernel."""

    def __init__(self, fn):
        sig = inspect.signature(fn)
        self.arg_names = list(sig.parameters)
        self.params = [_Param(p) for p in sig.parameters.values()]
        self.__name__ = fn.__name__
        self.log = []

    def __getitem__(self, grid):
        def launch_(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)
        return launch_


def _kernel(x_ptr, out_ptr, n, eps, HIDDEN, TAIL=7, PDL=False):  # constexprs after runtime args
    pass


class _Knobs:
    launch_enter_hook = None
    launch_exit_hook = None


@pytest.fixture
def fast(monkeypatch):
    knobs = _Knobs()
    monkeypatch.setattr(launch, "_fast_path", lambda: (lambda: 0, lambda device: 1234, knobs))
    monkeypatch.setattr(launch, "_has_pdl", lambda device: True)
    return knobs


def test_first_call_goes_through_triton_then_the_compiled_handle(fast):
    jit = _FakeJit(_kernel)
    bound = TritonLaunch(jit).bind(HIDDEN=4096, num_warps=8)
    x, out = torch.zeros(4), torch.zeros(4)
    bound((3,), x, out, 5, 1e-5)
    bound((3, 2), x, out, 5, 1e-5)
    assert [e[0] for e in jit.log] == ["triton", "fast"]
    assert jit.log[0][3] == {"HIDDEN": 4096, "num_warps": 8, "PDL": False}
    # grid padded to 3-D, the stream, the handle, the metadata, no hooks, then every
    # parameter in order: runtime args (tensors as their addresses), bound constexprs, defaults
    assert jit.log[1][1] == (3, 2, 1, 1234, 0xF00, ("warps", 8), None, None, None, x.data_ptr(), out.data_ptr(),
                             5, 1e-5, 4096, 7, False)


def test_a_new_argument_key_takes_the_triton_path_again(fast):
    jit = _FakeJit(_kernel)
    bound = TritonLaunch(jit).bind(HIDDEN=4096)
    x, out = torch.zeros(8), torch.zeros(8)
    bound((1,), x, out, 5, 1e-5)
    bound((1,), x, out, 6, 1e-5)  # another int value: Triton may specialize differently
    bound((1,), x[1:], out, 6, 1e-5)  # a pointer no longer 16-byte aligned
    bound((1,), x.half(), out, 6, 1e-5)  # another dtype
    bound((1,), x, out, 6, 1e-5)
    assert [e[0] for e in jit.log] == ["triton", "triton", "triton", "triton", "fast"]
    # True and 1 are equal keys in a dict, but Triton compiles them differently (i1, a constant)
    bound((1,), x, out, 1, 1e-5)
    bound((1,), x, out, True, 1e-5)
    bound((1,), x, out, True, 1e-5)
    assert [e[0] for e in jit.log][5:] == ["triton", "triton", "fast"]


def test_pdl_only_when_declared_and_configured(fast):
    owner = TritonLaunch(_FakeJit(_kernel))
    bound = owner.bind(HIDDEN=4096)
    x = torch.zeros(4)
    bound((1,), x, x, 1, 1.0)
    owner.pdl = True
    bound((1,), x, x, 1, 1.0)
    bound((1,), x, x, 1, 1.0)
    calls = owner.kernel.log
    assert [e[0] for e in calls] == ["triton", "triton", "fast"]
    assert calls[0][3]["PDL"] is False and "launch_pdl" not in calls[0][3]
    assert calls[1][3]["PDL"] is True and calls[1][3]["launch_pdl"] is True
    assert calls[2][1][-1] is True  # the fast path launches the PDL build


def test_a_kernel_without_a_pdl_parameter_never_gets_it(fast):
    def plain(x_ptr, N):
        pass

    owner = TritonLaunch(_FakeJit(plain))
    owner.pdl = True
    owner.bind(N=4)((1,), torch.zeros(4))
    assert not owner.supports_pdl and owner.kernel.log[0][3] == {"N": 4}


class _HookChain:  # Triton 3.6's knobs hold one of these, empty, by default (never None)
    def __init__(self, calls):
        self.calls = calls


def test_launch_hooks_take_tritons_path_every_time(fast):
    jit = _FakeJit(_kernel)
    bound = TritonLaunch(jit).bind(HIDDEN=1)
    x = torch.zeros(4)
    fast.launch_enter_hook = fast.launch_exit_hook = _HookChain([])  # empty chains: no hook
    for _ in range(2):
        bound((1,), x, x, 1, 1.0)
    fast.launch_enter_hook = _HookChain([print])
    bound((1,), x, x, 1, 1.0)
    fast.launch_enter_hook, fast.launch_exit_hook = None, print
    bound((1,), x, x, 1, 1.0)
    assert [e[0] for e in jit.log] == ["triton", "fast", "triton", "triton"]


def test_bind_is_memoized_and_refuses_pdl():
    owner = TritonLaunch(_FakeJit(_kernel))
    assert owner.bind(HIDDEN=1, num_warps=4) is owner.bind(HIDDEN=1, num_warps=4)
    assert owner.bind(HIDDEN=1) is not owner.bind(HIDDEN=2)
    with pytest.raises(ValueError, match="PDL"):
        owner.bind(PDL=True)
    with pytest.raises(ValueError, match="launch_pdl"):
        owner.bind(launch_pdl=True)


def test_a_parameter_neither_passed_nor_bound_is_an_error(fast):
    bound = TritonLaunch(_FakeJit(_kernel)).bind(num_warps=4)  # HIDDEN missing
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="HIDDEN"):
        bound((1,), x, x, 1, 1.0)


def test_configure_package_reaches_submodules_and_bound_launches(monkeypatch):
    pkg = types.ModuleType("fake_solution_pkg")
    sub = types.ModuleType("fake_solution_pkg.kernels")
    other = types.ModuleType("fake_solution_pkg_other")
    owner, owner_bound, owner_other = (TritonLaunch(_FakeJit(_kernel)) for _ in range(3))
    sub.A = owner
    sub.B = owner_bound.bind(HIDDEN=2)
    other.C = owner_other
    for m in (pkg, sub, other):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    assert configure_package("fake_solution_pkg", pdl=True) == 2
    assert owner.pdl and owner_bound.pdl and not owner_other.pdl
    assert isinstance(sub.B, BoundLaunch)


MANIFEST = """\
name: {name}
definition: rmsnorm_h4096
language: triton
entry_point: kernel.py::rmsnorm
sources: [kernel.py]
{launch}
"""
KERNEL = textwrap.dedent("""\
    from fibuild.compile.launch import TritonLaunch

    class _K:  # no Triton needed to load: only the launcher object matters here
        arg_names = ["x", "PDL"]
        params = []

    LAUNCH = TritonLaunch(_K())

    def rmsnorm(x, w):
        return LAUNCH.pdl
""")


@pytest.mark.parametrize(("declared", "env", "expected"), [
    (True, "1", True), (True, "0", False), (False, "1", False)])
def test_the_loader_gives_pdl_only_to_declaring_solutions(tmp_path, monkeypatch, declared, env, expected):
    from fibuild.compile.cache import BuildCache
    from fibuild.config import Settings
    from fibuild.spec.manifest import load_solution
    from fibuild.spec.workspace import Workspace, shipped_root

    name = f"pdl_{declared}_{env}"
    sol_dir = tmp_path / "rmsnorm_h4096" / name
    sol_dir.mkdir(parents=True)
    (sol_dir / "kernel.py").write_text(KERNEL)
    (sol_dir / "solution.yaml").write_text(MANIFEST.format(name=name, launch="launch: {pdl: true}" if declared else ""))
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FIBUILD_PDL", env)
    sol = load_solution(sol_dir / "solution.yaml")
    assert sol.pdl is declared
    defn = Workspace(shipped_root()).definition("rmsnorm_h4096")
    loaded = BuildCache(Settings.from_env()).get_or_build(defn, sol)
    assert loaded.entry(None, None) is expected
    assert json.loads((loaded.build_dir / "meta.json").read_text())["pdl"] is declared


def test_pdl_is_refused_for_a_python_solution(tmp_path):
    from fibuild.errors import ManifestError
    from fibuild.spec.manifest import load_solution

    sol_dir = tmp_path / "rmsnorm_h4096" / "py"
    sol_dir.mkdir(parents=True)
    (sol_dir / "kernel.py").write_text("def rmsnorm(x, w):\n    return x\n")
    (sol_dir / "solution.yaml").write_text(MANIFEST.format(name="py", launch="launch: {pdl: true}")
                                           .replace("language: triton", "language: python"))
    with pytest.raises(ManifestError, match="/launch/pdl"):
        load_solution(sol_dir / "solution.yaml")
