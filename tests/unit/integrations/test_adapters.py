"""Adapters against the stand-in flashinfer: names, fallbacks, in-place effects, disable()."""
from __future__ import annotations

import sys

import pytest
import torch

import fibuild
import fibuild.integrations
from fibuild.integrations.adapters.base import Unmapped, bind
from fibuild.integrations.adapters.functions import FusedAddRMSNorm, Linear, RMSNorm, SiluAndMul

BF16 = torch.bfloat16


def call_of(adapter, *args, **kwargs):
    return bind(adapter.parameters, args, kwargs)


@pytest.mark.parametrize("adapter, args, kwargs, name", [
    (RMSNorm(), (torch.zeros(3, 4096, dtype=BF16), torch.zeros(4096, dtype=BF16), 1e-5), {}, "rmsnorm_h4096"),
    (FusedAddRMSNorm(), (torch.zeros(2, 4096, dtype=BF16), torch.zeros(2, 4096, dtype=BF16),
                         torch.zeros(4096, dtype=BF16)), {"eps": 1e-5}, "fused_add_rmsnorm_h4096"),
    (SiluAndMul(), (torch.zeros(5, 2 * 14336, dtype=BF16),), {}, "silu_and_mul_i14336"),
    (Linear(), (torch.zeros(7, 4096, dtype=torch.float16), torch.zeros(6144, 4096, dtype=torch.float16)), {},
     "gemm_n6144_k4096"),
    (Linear(), (torch.zeros(2, 3, 4096, dtype=BF16), torch.zeros(6144, 4096, dtype=BF16)), {},
     "gemm_n6144_k4096_bf16"),
])
def test_names_follow_the_dataset(adapter, args, kwargs, name):
    assert adapter.matches(call_of(adapter, *args, **kwargs)) == name


@pytest.mark.parametrize("adapter, args, kwargs, reason", [
    (RMSNorm(), (torch.zeros(3, 64, dtype=BF16), torch.zeros(64, dtype=BF16)),
     {"out": torch.zeros(3, 64, dtype=BF16)}, "out= is given"),
    (RMSNorm(), (torch.zeros(3, 64, dtype=BF16), torch.zeros(64, dtype=torch.float16)), {}, "dtypes"),
    (RMSNorm(), (torch.zeros(3, 2, 64, dtype=BF16), torch.zeros(64, dtype=BF16)), {}, "dimensions"),
    (RMSNorm(), (torch.zeros(3, 64, dtype=torch.int32), torch.zeros(64, dtype=torch.int32)), {}, "dtypes"),
    (RMSNorm(), (torch.zeros(3, 64, dtype=BF16), torch.zeros(64, dtype=BF16, device="meta")), {}, "devices"),
    (SiluAndMul(), (torch.zeros(3, 63, dtype=BF16),), {}, "2 * intermediate_size"),
    (SiluAndMul(), (torch.zeros(3, 64, dtype=BF16),), {"out": torch.zeros(3, 32, dtype=BF16)}, "out="),
    (Linear(), (torch.zeros(3, 64), torch.zeros(48, 64), torch.zeros(48)), {}, "bias"),
    (Linear(), (torch.zeros(3, 32), torch.zeros(48, 64)), {}, "K"),
])
def test_unsupported_calls_are_not_matched_and_say_why(adapter, args, kwargs, reason):
    call = call_of(adapter, *args, **kwargs)
    assert adapter.matches(call) is None
    assert reason in adapter.why_not(call)


def test_binding_refuses_unknown_keywords_and_extra_arguments():
    with pytest.raises(Unmapped, match="unsupported keyword"):
        bind(RMSNorm.parameters, (1, 2), {"gamma": 3})
    with pytest.raises(Unmapped, match="positional"):
        bind(SiluAndMul.parameters, (1, 2, 3, 4), {})


def test_patching_covers_every_alias_and_disable_restores_the_same_objects(flashinfer_stub, small_ws):
    import flashinfer  # imported before enable: patched at once

    before = {"norm.rmsnorm": flashinfer.norm.rmsnorm, "rmsnorm": flashinfer.rmsnorm,
              "fused": flashinfer.fused_add_rmsnorm, "silu": flashinfer.activation.silu_and_mul,
              "plan": vars(flashinfer.BatchDecodeWithPagedKVCacheWrapper)["plan"],
              "run": vars(flashinfer.BatchDecodeWithPagedKVCacheWrapper)["run"],
              "linear": torch.nn.functional.linear}
    integration = fibuild.enable(apply=True, settings=small_ws.settings)
    assert flashinfer.rmsnorm is flashinfer.norm.rmsnorm is not before["rmsnorm"]
    assert flashinfer.fused_add_rmsnorm is not before["fused"]
    assert torch.nn.functional.linear is not before["linear"]
    assert vars(flashinfer.BatchDecodeWithPagedKVCacheWrapper)["run"] is not before["run"]
    assert "flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper" in integration.patched
    fibuild.disable()
    after = {"norm.rmsnorm": flashinfer.norm.rmsnorm, "rmsnorm": flashinfer.rmsnorm,
             "fused": flashinfer.fused_add_rmsnorm, "silu": flashinfer.activation.silu_and_mul,
             "plan": vars(flashinfer.BatchDecodeWithPagedKVCacheWrapper)["plan"],
             "run": vars(flashinfer.BatchDecodeWithPagedKVCacheWrapper)["run"],
             "linear": torch.nn.functional.linear}
    assert all(after[k] is before[k] for k in before)
    assert not any(type(f).__name__ == "PostImportFinder" for f in sys.meta_path)


def test_flashinfer_imported_after_enable_is_patched_on_import(flashinfer_stub, small_ws):
    fibuild.enable(apply=True, settings=small_ws.settings)
    assert "flashinfer" not in sys.modules
    import flashinfer
    from flashinfer import rmsnorm  # the engine's way: a name bound at its import

    assert rmsnorm.__wrapped__.__module__ == "flashinfer.norm"
    assert flashinfer.__loader__.__class__.__name__ != "_PostLoader"  # the real loader is put back


def test_in_place_updates_are_exact_through_the_patched_function(flashinfer_stub, small_ws):
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g).to(BF16)
    r = torch.randn(4, 64, generator=g).to(BF16)
    w = torch.rand(64, generator=g).to(BF16)
    x0, r0 = x.clone(), r.clone()
    assert flashinfer.fused_add_rmsnorm(x, r, w, 1e-5) is None
    fibuild.disable()
    x1, r1 = x0.clone(), r0.clone()
    flashinfer.fused_add_rmsnorm(x1, r1, w, 1e-5)
    assert torch.equal(x, x1) and torch.equal(r, r1)  # reference resolution -> the original ran


def test_unmapped_and_unresolved_calls_run_the_original_itself(flashinfer_stub, small_ws):
    import flashinfer

    fibuild.enable(apply=True, settings=small_ws.settings)
    x, w = torch.randn(2, 96, dtype=BF16), torch.rand(96, dtype=BF16)   # no rmsnorm_h96 definition
    flashinfer.rmsnorm(x, w, 1e-5)
    y, v = torch.randn(2, 64, dtype=BF16), torch.rand(64, dtype=BF16)   # rmsnorm_h64, nothing evaluated
    flashinfer.rmsnorm(y, v, 1e-5)
    flashinfer.rmsnorm(y, v, 1e-5)
    memo = flashinfer.rmsnorm.fibuild_memo
    original = flashinfer.rmsnorm.__wrapped__
    # the handlers are the original behind its counter, nothing else
    assert len(memo) == 2 and all(h.__wrapped__ is original for h in memo.values())
    assert flashinfer.CALLS["rmsnorm"] == 3
    row = fibuild.integrations.stats()["flashinfer.norm.rmsnorm"]
    assert row["calls"] == 3 and row["substituted"] == 0 and row["original"] == 2
    (reason, n), = row["fallbacks"].items()
    assert n == 1 and "rmsnorm_h96" in reason
