"""fibuild.load / apply / resolve on CPU, against real manifests, builds and registry files."""
from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import fibuild
from fibuild.errors import FibuildError, ResolveError
from fibuild.runtime.api import apply, load, resolve
from fibuild.runtime.decisions import Accepted, PolicySkipped, Rejected
from fibuild.runtime.resolve import nearest_order

from runtime_helpers import DEF, inputs, reference_rmsnorm


def entry_file(kernel, key) -> str:
    """The source file of the entry point memoized for ``key`` (says which solution runs)."""
    return inspect.unwrap(kernel.entry(key)).__code__.co_filename


def test_routes_each_key_to_its_fastest_passed_solution(workspace):
    # torch_fp32 is the CPU baseline (defs: baseline [flashinfer, torch_fp32]): torch_alt
    # replaces it where it wins clearly (8), and it stays where it is faster (64).
    workspace.record("torch_fp32", 8, 50.0)
    workspace.record("torch_alt", 8, 20.0)
    workspace.record("torch_fp32", 64, 20.0)
    workspace.record("torch_alt", 64, 30.0)
    k = load(DEF, settings=workspace.settings)
    for batch, winner in ((8, "torch_alt"), (64, "torch_fp32")):
        x, w = inputs(batch)
        y = k(x, w)
        torch.testing.assert_close(y, reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
        res = k.explain(batch_size=batch)
        assert res.solution.name == winner and res.policy == "nearest"
        assert res.build_key and len(res.build_key) == 64
        # The memoized callable is the chosen solution's, from its build directory.
        assert entry_file(k, (batch,)).startswith(str(workspace.settings.cache_dir))
        assert f"{winner}-" in entry_file(k, (batch,))
        loser = {"torch_alt", "torch_fp32"} - {winner}
        why = "replaced by torch_alt: FAST" if winner == "torch_alt" else "SLOW"
        assert any(isinstance(d, Rejected) and d.solution in loser and why in d.reason
                   for d in res.decisions), res.explain()
        assert res.verdict == ("FAST" if winner == "torch_alt" else "SLOW")


def test_unevaluated_key_uses_nearest_evaluated_key(workspace):
    workspace.record("torch_fp32", 8, 50.0)
    workspace.record("torch_alt", 8, 20.0)
    workspace.record("torch_fp32", 1024, 200.0)
    workspace.record("torch_alt", 1024, 300.0)
    k = load(DEF, settings=workspace.settings)
    x, w = inputs(16)
    torch.testing.assert_close(k(x, w), reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    res = k.explain(batch_size=16)
    assert res.solution.name == "torch_alt" and res.evaluated_key == (8,)
    assert "nearest evaluated key (8,) at distance 0.69" in str(res.decisions)


def test_baseline_when_nothing_is_evaluated(workspace, caplog, monkeypatch):
    from fibuild.runtime import api

    monkeypatch.setattr(api, "_WARNED", set())
    with caplog.at_level("WARNING", logger="fibuild.runtime"):
        k = load(DEF, settings=workspace.settings)
        x, w = inputs(5)
        torch.testing.assert_close(k(x, w), reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
        k(*inputs(6))
        load(DEF, settings=workspace.settings)
    res = k.explain(batch_size=5)
    assert res.solution.name == "torch_fp32" and res.policy == "baseline" and res.build_key
    assert res.baseline == "torch_fp32" and res.verdict is None and not res.borrowed
    assert Rejected("torch_alt", "no evaluation on this device") in res.decisions
    assert "torch_fp32-" in entry_file(k, (5,))
    # Said once for the definition, whatever the number of keys, naming the device and the fix.
    said = [r.getMessage() for r in caplog.records if "no usable evaluation" in r.getMessage()]
    assert len(said) == 1 and workspace.device in said[0] and f"fibuild bench {DEF}" in said[0]


def test_reference_when_no_baseline_can_run(workspace):
    path = workspace.root / "defs" / "rmsnorm" / f"{DEF}.yaml"
    path.write_text(path.read_text().replace("baseline: [flashinfer, torch_fp32]", "baseline: flashinfer"))
    k = load(DEF, settings=workspace.settings)
    x, w = inputs(5)
    torch.testing.assert_close(k(x, w), reference_rmsnorm(x, w), atol=0, rtol=0)
    res = k.explain(batch_size=5)
    assert res.solution is None and res.policy == "reference" and res.build_key is None
    assert any(isinstance(d, PolicySkipped) and d.policy == "baseline" and "flashinfer" in d.reason
               for d in res.decisions)
    assert "<reference of rmsnorm_h4096>" == entry_file(k, (5,))


def test_failing_solution_is_not_chosen_for_its_key(workspace):
    workspace.record("torch_alt", 32, status="INCORRECT_NUMERICAL")
    workspace.record("torch_alt", 64, 5.0)
    workspace.record("torch_fp32", 32, 40.0)
    workspace.record("torch_fp32", 64, 50.0)
    res = resolve(DEF, {"batch_size": 32}, settings=workspace.settings)
    assert res.solution.name == "torch_fp32"
    assert Rejected("torch_alt", "INCORRECT_NUMERICAL on 1/2 workloads (fails at (32,))") in res.decisions


def test_misses_resolve_once_and_are_memoized(workspace, monkeypatch):
    workspace.record("torch_alt", 8, 20.0)
    k = load(DEF, settings=workspace.settings)
    calls = []
    original = k._resolver.resolve
    monkeypatch.setattr(k._resolver, "resolve", lambda *a, **kw: calls.append(a[0]) or original(*a, **kw))
    x, w = inputs(8)
    first = k(x, w)
    for _ in range(3):
        torch.testing.assert_close(k(x, w), first, atol=0, rtol=0)
    x2, w2 = inputs(3)
    k(x2, w2)
    k(x2, w2)
    assert calls == [(8,), (3,)]
    assert sorted(k.keys) == [(3,), (8,)]


def test_strict_policy_without_answer_raises_with_trace(workspace):
    workspace.record("torch_alt", 8, 20.0)
    k = load(DEF, settings=workspace.settings, policy="exact", strict=True)
    x, w = inputs(8)
    k(x, w)  # evaluated here: fine
    with pytest.raises(ResolveError) as info:
        k(*inputs(9))
    text = str(info.value)
    assert "no solution for (9,)" in text and "policy exact: no usable PASSED evaluation at (9,)" in text
    assert any(isinstance(d, Rejected) and d.solution == "torch_fp32" for d in info.value.decisions)


def test_broken_reference_and_nothing_evaluated_raises_with_trace(workspace):
    path = workspace.root / "defs" / "rmsnorm" / f"{DEF}.yaml"
    path.write_text(path.read_text().replace("  import torch\n", "  import torch\n  import no_such_module_here\n", 1)
                    .replace("baseline: [flashinfer, torch_fp32]", "baseline: flashinfer"))
    k = load(DEF, settings=workspace.settings)
    with pytest.raises(ResolveError) as info:
        k(*inputs(4))
    text = str(info.value)
    assert "nothing can run (4,)" in text
    assert "rejected reference: the reference cannot be loaded: ModuleNotFoundError" in text
    assert "rejected torch_fp32: no evaluation on this device" in text


def test_solution_that_fails_to_build_is_excluded_and_the_next_one_runs(workspace):
    workspace.add_solution("broken", workspace_manifest("broken"), {"kernel.py": "def run(x, w:\n"})
    workspace.record("torch_fp32", 8, 40.0)
    workspace.record("broken", 8, 1.0, digest=_digest(workspace, "broken"))
    k = load(DEF, settings=workspace.settings)
    x, w = inputs(8)
    torch.testing.assert_close(k(x, w), reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    res = k.explain(batch_size=8)
    assert res.solution.name == "torch_fp32"
    assert any(isinstance(d, Rejected) and d.solution == "broken" and "failed to build" in d.reason
               for d in res.decisions)


def workspace_manifest(name: str) -> str:
    return (f"name: {name}\ndefinition: {DEF}\nlanguage: python\nentry_point: kernel.py::run\n"
            "sources: [kernel.py]\ntarget_hardware: [cpu]\n")


def _digest(ws, name):
    from fibuild.compile.keys import solution_digest
    from fibuild.spec.workspace import Workspace

    w = Workspace(ws.root)
    return solution_digest(w.definition(DEF), w.solution(name, DEF))


def test_edited_solution_records_are_stale(workspace):
    workspace.record("torch_alt", 8, 1.0)
    workspace.record("torch_fp32", 8, 40.0)
    kernel_py = workspace.root / "solutions" / DEF / "torch_alt" / "kernel.py"
    kernel_py.write_text(kernel_py.read_text() + "\n# tuned\n")
    res = resolve(DEF, {"batch_size": 8}, settings=workspace.settings)
    assert res.solution.name == "torch_fp32"
    assert any(isinstance(d, Rejected) and d.solution == "torch_alt" and "stale digest" in d.reason
               for d in res.decisions)


def test_out_receives_results_for_both_styles(workspace):
    workspace.record("torch_alt", 8, 20.0)   # destination-passing
    workspace.record("torch_fp32", 16, 20.0)  # value-returning
    k = load(DEF, settings=workspace.settings)
    for batch in (8, 16, 3):  # 3: reference
        x, w = inputs(batch)
        buf = torch.empty(batch, 4096, dtype=torch.bfloat16)
        got = k(x, w, out=buf)
        assert got is buf
        torch.testing.assert_close(buf, reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    assert k.explain(batch_size=8).solution.destination_passing_style


def test_bad_arguments_name_the_inputs(workspace):
    k = load(DEF, settings=workspace.settings)
    with pytest.raises(FibuildError, match=r"expected inputs \(hidden_states \[batch_size, hidden_size\], weight"):
        k(3.0, 4.0)
    with pytest.raises(FibuildError, match="expected inputs"):
        k(inputs(2)[0])


def test_explain_checks_axes(workspace):
    k = load(DEF, settings=workspace.settings)
    with pytest.raises(ResolveError, match="missing value for var axis batch_size"):
        k.explain()
    with pytest.raises(ResolveError, match="unknown axis 'seq'"):
        k.explain(batch_size=2, seq=3)
    with pytest.raises(ResolveError, match="hidden_size is const 4096, got 10"):
        k.explain(batch_size=2, hidden_size=10)
    assert k.explain(batch_size=2, hidden_size=4096).key == (2,)


def test_unknown_definition_policy_and_device(workspace):
    with pytest.raises(FibuildError, match="unknown definition 'rmsnorm_h409'.*did you mean"):
        load("rmsnorm_h409", settings=workspace.settings)
    with pytest.raises(ResolveError, match="unknown policy 'fastest'"):
        load(DEF, policy="fastest", settings=workspace.settings)
    with pytest.raises(FibuildError, match="expected cpu, cuda or cuda:N"):
        load(DEF, device="tpu", settings=workspace.settings)


def test_apply_decorator_uses_its_body_as_fallback(workspace):
    calls = []

    @apply(DEF, settings=workspace.settings)
    def rmsnorm(hidden_states, weight):
        calls.append(hidden_states.shape[0])
        return reference_rmsnorm(hidden_states, weight)

    assert rmsnorm.__name__ == "rmsnorm"
    x, w = inputs(4)
    torch.testing.assert_close(rmsnorm(x, w), reference_rmsnorm(x, w), atol=0, rtol=0)
    assert calls == [4]
    kernel = rmsnorm.kernel()
    res = kernel.explain(batch_size=4)
    accepted = [d for d in res.decisions if isinstance(d, Accepted)]
    assert res.policy == "fallback" and [d.solution for d in accepted] == ["fallback"]
    # The caller's fallback is what it runs anyway: it stands in for the definition's baseline.
    assert any(isinstance(d, PolicySkipped) and d.policy == "baseline" and "fallback stands in" in d.reason
               for d in res.decisions)


def test_apply_decorator_prefers_an_evaluated_solution(workspace):
    workspace.record("torch_alt", 4, 20.0)
    calls = []

    @apply(DEF, settings=workspace.settings)
    def rmsnorm(hidden_states, weight):
        calls.append(1)
        return reference_rmsnorm(hidden_states, weight)

    x, w = inputs(4)
    torch.testing.assert_close(rmsnorm(x, w), reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    assert calls == []


def test_apply_as_a_call(workspace):
    calls = []

    def fallback(x, w):
        calls.append(1)
        return reference_rmsnorm(x, w)

    x, w = inputs(2)
    y = apply(DEF, args=(x, w), fallback=fallback, settings=workspace.settings)
    y2 = apply(DEF, args=(x, w), fallback=fallback, settings=workspace.settings)
    torch.testing.assert_close(y, reference_rmsnorm(x, w), atol=0, rtol=0)
    torch.testing.assert_close(y2, y, atol=0, rtol=0)
    assert calls == [1, 1]


def test_public_names_are_lazy_attributes(workspace):
    assert fibuild.load is load and fibuild.resolve is resolve
    # Importing the runtime subpackages must not shadow the verb.
    importlib.import_module("fibuild.runtime.dispatch")

    assert fibuild.apply is apply
    calls = []

    @fibuild.apply(DEF, settings=workspace.settings)
    def rmsnorm(x, w):
        calls.append(1)
        return reference_rmsnorm(x, w)

    x, w = inputs(2)
    torch.testing.assert_close(rmsnorm(x, w), reference_rmsnorm(x, w), atol=0, rtol=0)
    y = fibuild.apply(DEF, args=(x, w), fallback=reference_rmsnorm, settings=workspace.settings)
    torch.testing.assert_close(y, reference_rmsnorm(x, w), atol=0, rtol=0)
    assert calls == [1]


def test_apply_takes_strict(workspace):
    workspace.record("torch_alt", 8, 20.0)

    @apply(DEF, policy="exact", strict=True, settings=workspace.settings)
    def rmsnorm(hidden_states, weight):
        return reference_rmsnorm(hidden_states, weight)

    rmsnorm(*inputs(8))
    with pytest.raises(ResolveError, match=r"no solution for \(9,\)"):
        rmsnorm(*inputs(9))
    with pytest.raises(ResolveError, match=r"no solution for \(9,\)"):
        apply(DEF, args=inputs(9), policy="exact", strict=True, settings=workspace.settings)


def test_load_takes_this_machines_slug_and_refuses_others(workspace):
    from fibuild.devices import device_slug
    from fibuild.errors import ConfigError

    k = load(DEF, settings=workspace.settings, device=device_slug("cpu"))
    assert k.device == "cpu"
    with pytest.raises(ConfigError, match="nvidia-h100-80gb-hbm3-sm90"):
        load(DEF, settings=workspace.settings, device="nvidia-h100-80gb-hbm3-sm90")


def test_apply_runs_its_body_for_calls_the_definition_does_not_cover(workspace):
    """flashinfer-bench's ``apply`` runs the decorated function when no definition fits the
    call; so does fibuild's: another hidden size, another dtype. ``load`` still refuses them."""
    from fibuild.errors import InputError

    workspace.record("torch_alt", 4, 20.0)
    calls = []

    @apply(DEF, settings=workspace.settings)
    def rmsnorm(hidden_states, weight):
        calls.append((hidden_states.shape[-1], hidden_states.dtype))
        return reference_rmsnorm(hidden_states, weight)

    x, w = inputs(4)
    rmsnorm(x, w)
    assert calls == []                                             # covered: the solution ran
    narrow = (torch.randn(3, 2048).to(torch.bfloat16), torch.ones(2048, dtype=torch.bfloat16))
    torch.testing.assert_close(rmsnorm(*narrow), reference_rmsnorm(*narrow), atol=0, rtol=0)
    rmsnorm(x.float(), w.float())
    assert calls == [(2048, torch.bfloat16), (4096, torch.float32)]
    y = apply(DEF, args=narrow, fallback=reference_rmsnorm, settings=workspace.settings)
    torch.testing.assert_close(y, reference_rmsnorm(*narrow), atol=0, rtol=0)
    with pytest.raises(InputError, match="2048"):
        load(DEF, settings=workspace.settings)(*narrow)
    with pytest.raises(InputError):                                # no fallback: the error stands
        apply(DEF, args=narrow, settings=workspace.settings)


def test_load_resolve_and_apply_take_a_root(workspace, tmp_path, monkeypatch):
    """``root=`` names the workspace, as ``fibuild.enable(root=...)`` does, whatever the
    environment and the current directory say."""
    import dataclasses

    workspace.record("torch_fp32", 8, 40.0)  # the baseline, measured beside it
    workspace.record("torch_alt", 8, 20.0)
    monkeypatch.chdir(tmp_path)
    elsewhere = dataclasses.replace(workspace.settings, root=tmp_path / "elsewhere")
    k = load(DEF, settings=elsewhere, root=workspace.root)
    assert k.explain(batch_size=8).solution.name == "torch_alt"
    assert resolve(DEF, {"batch_size": 8}, settings=elsewhere, root=str(workspace.root)).solution.name == "torch_alt"
    x, w = inputs(8)
    torch.testing.assert_close(apply(DEF, args=(x, w), settings=elsewhere, root=workspace.root),
                               reference_rmsnorm(x, w), atol=1e-2, rtol=1e-2)
    with pytest.raises(FibuildError, match="elsewhere"):
        load(DEF, settings=elsewhere)


def test_an_unseen_key_takes_the_nearest_evaluated_key_ties_go_above(workspace):
    """The closest evaluated key by log-distance, in either direction; at equal distance the
    key above (its winner runs the shape in at most its time there)."""
    workspace.record("torch_fp32", 4, 10.0)
    workspace.record("torch_alt", 4, 20.0)
    workspace.record("torch_fp32", 32, 40.0)
    workspace.record("torch_alt", 32, 30.0)
    k = load(DEF, settings=workspace.settings)
    nearer_above = k.explain(batch_size=16)  # ratio 2 to 32, 4 to 4
    assert (nearer_above.solution.name, nearer_above.evaluated_key) == ("torch_alt", (32,))
    assert "(32,) at distance 0.69, above it" in str(nearer_above.decisions)
    nearer_below = k.explain(batch_size=6)  # ratio 1.5 to 4, 5.3 to 32
    assert (nearer_below.solution.name, nearer_below.evaluated_key) == ("torch_fp32", (4,))
    assert "(4,) at distance 0.41, below it" in str(nearer_below.decisions)
    # equal distances: the key above first, then the larger key
    assert nearest_order((8,), [(4,), (16,)]) == [(16,), (4,)]
    assert nearest_order((8, 8), [(4, 16), (16, 16), (16, 4), (8, 8)]) == [(8, 8), (16, 16), (16, 4), (4, 16)]
    assert (k.explain(batch_size=100).solution.name, k.explain(batch_size=100).evaluated_key) == \
        ("torch_alt", (32,))
    # beyond 4x of every evaluated key nothing measured speaks for the shape: the baseline runs
    far = k.explain(batch_size=1000)
    assert far.policy == "baseline" and far.evaluated_key is None
    assert "no usable PASSED evaluation within 4x of (1000,)" in str(far.decisions)
    assert "lies beyond 4x of every evaluated key" in str(far.decisions)
