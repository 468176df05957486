"""``fibuild resolve``: output, --explain, --json, --device of another machine, exit codes."""
from __future__ import annotations

import json

import pytest

from fibuild.cli import main
from fibuild.cli.resolve import parse_axes
from fibuild.errors import ResolveError

from runtime_helpers import DEF

H100 = "nvidia-h100-80gb-hbm3-sm90"


@pytest.fixture
def cli(workspace, monkeypatch):
    monkeypatch.setenv("FIBUILD_ROOT", str(workspace.root))
    monkeypatch.setenv("FIBUILD_CACHE_DIR", str(workspace.settings.cache_dir))
    monkeypatch.setenv("FIBUILD_DEVICE", "cpu")
    return workspace


def test_prints_choice_and_trace(cli, capsys):
    cli.record("torch_alt", 32, 30.1)
    cli.record("torch_fp32", 32, 41.2)
    assert main(["resolve", DEF, "--axes", "batch_size=32", "--explain"]) == 0
    out = capsys.readouterr().out
    assert f"{DEF} at batch_size=32 on {cli.device}" in out
    assert "solution   torch_alt" in out and "language   python" in out
    assert "latency    30.1 µs" in out
    assert "build      not built (built on first use)" in out
    assert "mode       eager" in out and "verdict    FAST" in out and "baseline   torch_fp32" in out
    assert ("- accepted torch_alt: FAST (26.9% faster, intervals apart) against torch_fp32, the baseline, "
            "at (32,): 30.1 µs vs 41.2 µs (eager cost) [robust interval rule") in out
    assert "- rejected torch_fp32: 41.2 µs; replaced by torch_alt: FAST" in out


def test_build_status_after_a_load(cli, capsys):
    import torch

    from fibuild.runtime.api import load

    cli.record("torch_fp32", 4, 3.0)
    k = load(DEF, settings=cli.settings)
    k(torch.randn(4, 4096, dtype=torch.bfloat16), torch.ones(4096, dtype=torch.bfloat16))
    assert main(["resolve", DEF, "--axes", "batch_size=4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["solution"] == "torch_fp32" and data["build_status"].startswith("committed (")
    assert data["build_key"] == k.explain(batch_size=4).build_key


def test_other_device_answers_from_its_records(cli, capsys):
    # Records of the H100 only; this CPU machine has none.
    cli.record("torch_fp32", 32, 9.0, device=H100)
    cli.record("torch_alt", 32, 7.5, device=H100)
    assert main(["resolve", DEF, "--axes", "batch_size=64", "--device", H100, "--explain"]) == 0
    out = capsys.readouterr().out
    assert f"on {H100}" in out and "solution   torch_alt" in out
    assert "latency    7.50 µs (measured at (32,))" in out
    assert "build      not checked (the device is not this machine)" in out
    assert "note: nvidia-h100-80gb-hbm3-sm90 is not this machine" in out
    assert "nearest evaluated key (32,) at distance 0.69" in out
    # The same question about this machine: nothing evaluated here (a CPU borrows from no GPU),
    # so the baseline runs, never the reference.
    assert main(["resolve", DEF, "--axes", "batch_size=64", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "solution   torch_fp32" in out and "policy     baseline" in out
    assert f"no evaluation on this device (evaluated on {H100})" in out
    assert f"run `fibuild bench {DEF}` there" in out


def test_json_output(cli, capsys):
    cli.record("torch_fp32", 32, 40.0)  # the baseline, measured on this device at another key
    cli.record("torch_alt", 8, 12.0)
    assert main(["resolve", DEF, "--axes", "batch_size=8", "--json", "--policy", "exact"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["solution"] == "torch_alt" and data["policy"] == "exact"
    assert data["axes"] == {"batch_size": 8} and data["latency_us"] == 12.0
    accepted = [d for d in data["decisions"] if d["kind"] == "accepted"]
    assert [d["solution"] for d in accepted] == ["torch_alt"]
    assert accepted[0]["reason"].startswith("torch_alt, the fastest measured solution (the baseline torch_fp32 "
                                            "has no usable evaluation at (8,)), runs (8,) (12.0 µs, eager cost)")
    assert data["mode"] == "eager" and data["baseline"] == "torch_fp32" and data["borrowed"] is None


@pytest.mark.parametrize("argv, message", [
    (["resolve", "rmsnorm_h409", "--axes", "batch_size=3"], "unknown definition 'rmsnorm_h409'"),
    (["resolve", DEF, "--axes", "batch=3"], "unknown axis 'batch'"),
    (["resolve", DEF], "missing value for var axis batch_size"),
    (["resolve", DEF, "--axes", "batch_size=3.5"], "axis batch_size='3.5' is not an integer"),
    (["resolve", DEF, "--axes", "batch_size=-2"], "axis batch_size=-2 is negative"),
    (["resolve", DEF, "--axes", "batch_size"], "expected AXIS=N"),
    (["resolve", DEF, "--axes", "batch_size=1,batch_size=2"], "given twice"),
    (["resolve", DEF, "--axes", "batch_size=3", "--policy", "exact", "--strict"], "no solution for (3,)"),
])
def test_bad_input_exits_1_with_a_message(cli, capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_axes():
    assert parse_axes(["batch_size=32,k=4", " m = 8 "]) == {"batch_size": "32", "k": "4", "m": "8"}
    with pytest.raises(ResolveError):
        parse_axes(["=3"])
