"""Workload inputs: seeded random tensors, scalars, safetensors, custom; checked against axes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fibuild.bench.inputs import clone_inputs, make_inputs
from fibuild.errors import BenchError
from fibuild.spec.manifest import definition_from_dict, load_definition
from fibuild.spec.model import InputSpec, Workload

ROOT = Path(__file__).resolve().parents[3]

PAGED = {
    "name": "toy_paged", "op_type": "toy",
    "axes": {"n": {"type": "var"}, "len_indptr": {"type": "var"}, "d": {"type": "const", "value": 4}},
    "inputs": {"x": {"shape": ["n", "d"], "dtype": "float16"},
               "indptr": {"shape": ["len_indptr"], "dtype": "int32"},
               "scale": {"shape": None, "dtype": "float32"}},
    "outputs": {"y": {"shape": ["n", "d"], "dtype": "float16"}},
    "custom_inputs_entrypoint": "make_indptr",
    "reference": (
        "import torch\n"
        "def run(x, indptr, scale):\n    return x * scale\n"
        "def make_indptr(axes, device, generator=None):\n"
        "    n = axes['len_indptr']\n"
        "    return {'indptr': torch.arange(n, dtype=torch.int32, device=device)}\n"),
}


def rmsnorm():
    return load_definition(ROOT / "defs/rmsnorm/rmsnorm_h4096.yaml")


def test_random_inputs_are_seeded_typed_and_shaped():
    defn = rmsnorm()
    wl = defn.workloads[1]
    a = make_inputs(defn, wl)
    b = make_inputs(defn, wl)
    assert [t.shape for t in a] == [torch.Size([wl.axes["batch_size"], 4096]), torch.Size([4096])]
    assert all(t.dtype == torch.bfloat16 for t in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # deterministic across calls
    other = make_inputs(defn, defn.workloads[2])
    assert not torch.equal(a[1], other[1])  # seeded per workload
    assert 0.5 < a[0].float().std().item() < 1.5  # ~ N(0, 1)


def test_integer_and_bool_random_inputs_stay_small():
    data = dict(PAGED, inputs={"x": {"shape": ["n", "d"], "dtype": "int32"},
                               "m": {"shape": ["n"], "dtype": "bool"}})
    defn = definition_from_dict(data)
    x, m = make_inputs(defn, Workload("w", {"n": 50, "len_indptr": 2}))
    assert x.dtype == torch.int32 and 0 <= int(x.min()) and int(x.max()) < 16
    assert m.dtype == torch.bool


def test_scalar_and_custom_inputs():
    defn = definition_from_dict(PAGED)
    wl = Workload("w1", {"n": 3, "len_indptr": 4},
                  {"indptr": InputSpec("custom"), "scale": InputSpec("scalar", value=0.5)})
    x, indptr, scale = make_inputs(defn, wl)
    assert x.shape == (3, 4) and x.dtype == torch.float16
    assert indptr.tolist() == [0, 1, 2, 3]
    assert scale == 0.5


def test_custom_inputs_of_the_shipped_paged_definition():
    defn = load_definition(ROOT / "defs/gqa_paged/gqa_paged_decode_h32_kv8_d128_ps1.yaml")
    wl = defn.workloads[1]
    args = make_inputs(defn, wl)
    indptr, indices = args[3], args[4]
    assert int(indptr[-1]) == wl.axes["num_kv_indices"] == indices.shape[0]
    assert torch.equal(indices, make_inputs(defn, wl)[4])  # seeded


def _in_workspace(root: Path):
    """PAGED as if loaded from ``root/defs/toy/toy_paged.yaml`` (safetensors paths are root-relative)."""
    return definition_from_dict(PAGED, root / "defs" / "toy" / "toy_paged.yaml")


def test_safetensors_relative_to_the_workspace_root(tmp_path):
    from safetensors.torch import save_file

    save_file({"ip": torch.tensor([0, 2, 5], dtype=torch.int32)}, str(tmp_path / "t.safetensors"))
    defn = _in_workspace(tmp_path)
    spec = {"indptr": InputSpec("safetensors", path="t.safetensors", tensor_key="ip"),
            "scale": InputSpec("scalar", value=1.0)}
    wl = Workload("w2", {"n": 2, "len_indptr": 3}, spec, source=str(tmp_path / "workloads.jsonl"))
    assert make_inputs(defn, wl)[1].tolist() == [0, 2, 5]
    missing = Workload("w3", {"n": 2, "len_indptr": 3},
                       dict(spec, indptr=InputSpec("safetensors", path="t.safetensors", tensor_key="nope")),
                       source=str(tmp_path / "workloads.jsonl"))
    with pytest.raises(BenchError, match="w3.*'indptr'.*no tensor 'nope'"):
        make_inputs(defn, missing)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.safetensors", "registry/../../outside.safetensors",
                                  "registry/link/outside.safetensors"])
def test_safetensors_paths_are_confined_to_the_workspace(tmp_path, path):
    from safetensors.torch import save_file

    root = tmp_path / "ws"
    (root / "registry").mkdir(parents=True)
    save_file({"ip": torch.tensor([0, 2, 5], dtype=torch.int32)}, str(tmp_path / "outside.safetensors"))
    (root / "registry" / "link").symlink_to(tmp_path)  # a link inside the workspace pointing out of it
    wl = Workload("w5", {"n": 2, "len_indptr": 3},
                  {"indptr": InputSpec("safetensors", path=path, tensor_key="ip"),
                   "scale": InputSpec("scalar", value=1.0)})
    with pytest.raises(BenchError, match="w5.*'indptr'.*leaves the workspace"):
        make_inputs(_in_workspace(root), wl)


def test_axis_values_are_checked_against_tensor_shapes(tmp_path):
    from safetensors.torch import save_file

    save_file({"ip": torch.tensor([0, 2, 5], dtype=torch.int32),
               "ip64": torch.tensor([0, 2, 5], dtype=torch.int64)}, str(tmp_path / "t.safetensors"))
    defn = _in_workspace(tmp_path)
    src = str(tmp_path / "workloads.jsonl")
    wrong_len = Workload("bad_len", {"n": 2, "len_indptr": 4},
                         {"indptr": InputSpec("safetensors", path="t.safetensors", tensor_key="ip"),
                          "scale": InputSpec("scalar", value=1.0)}, source=src)
    with pytest.raises(BenchError, match=r"bad_len.*'indptr'.*shape \(3,\).*len_indptr=4"):
        make_inputs(defn, wrong_len)
    wrong_dtype = Workload("bad_dtype", {"n": 2, "len_indptr": 3},
                           {"indptr": InputSpec("safetensors", path="t.safetensors", tensor_key="ip64"),
                            "scale": InputSpec("scalar", value=1.0)}, source=src)
    with pytest.raises(BenchError, match="bad_dtype.*'indptr'.*int64.*int32"):
        make_inputs(defn, wrong_dtype)


def test_bad_workloads_name_the_workload_and_input():
    defn = definition_from_dict(PAGED)
    with pytest.raises(BenchError, match="w4.*no value for var axis 'len_indptr'"):
        make_inputs(defn, Workload("w4", {"n": 2}))
    with pytest.raises(BenchError, match="w5.*'scale'.*scalar input needs a value"):
        make_inputs(defn, Workload("w5", {"n": 2, "len_indptr": 3}, {"indptr": InputSpec("custom")}))
    with pytest.raises(BenchError, match="w6.*'scale'.*cannot be random"):
        make_inputs(defn, Workload("w6", {"n": 2, "len_indptr": 3},
                                   {"indptr": InputSpec("custom"), "scale": InputSpec("random")}))
    broken = definition_from_dict(dict(PAGED, reference="def run(x, indptr, scale):\n    return x\n"
                                       "def make_indptr(axes, device, generator=None):\n"
                                       "    raise ValueError('bad axes')\n"))
    with pytest.raises(BenchError, match="w7.*make_indptr\\(\\) failed: ValueError: bad axes"):
        make_inputs(broken, Workload("w7", {"n": 2, "len_indptr": 3},
                                     {"indptr": InputSpec("custom"), "scale": InputSpec("scalar", value=1.0)}))


def test_clone_inputs_copies_tensors_only():
    t = torch.zeros(3)
    a, s = clone_inputs([t, 2.0])
    a += 1
    assert t.sum().item() == 0 and s == 2.0
