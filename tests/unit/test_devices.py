"""Device slugs and the environment recorded with evaluations."""
from __future__ import annotations

import re

import pytest

from fibuild.devices import cpu_model_name, device_environment, device_slug, slugify
from fibuild.errors import ConfigError


def test_slugify():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("  Intel(R) Xeon(R) CPU @ 2.20GHz ") == "intel-r-xeon-r-cpu-2-20ghz"


def test_cpu_slug_from_model_name():
    slug = device_slug("cpu")
    assert slug == "cpu-" + slugify(cpu_model_name())
    assert re.fullmatch(r"cpu-[a-z0-9]+(-[a-z0-9]+)*", slug)
    assert device_slug("cpu") is slug  # cached


def test_environment_is_complete_and_hostname_free():
    import platform
    import socket

    env = device_environment("cpu")
    for key in ("device", "device_name", "compute_capability", "driver", "cuda", "torch", "triton",
                "tvm_ffi", "flashinfer", "fibuild"):
        assert key in env
    assert env["device"] == device_slug("cpu")
    import torch

    assert env["torch"] == torch.__version__
    assert socket.gethostname() not in {str(v) for v in env.values()}
    env["extra"] = 1
    assert "extra" not in device_environment("cpu")  # a fresh dict each call
    assert platform.python_version() == env["python"]


def test_bad_device_names():
    with pytest.raises(ConfigError, match="expected cpu, cuda"):
        device_slug("tpu")


def test_cuda_slug_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        slug = device_slug("cuda")
        major, minor = torch.cuda.get_device_capability(0)
        assert slug.endswith(f"-sm{major}{minor}")
    else:
        with pytest.raises(ConfigError, match="no CUDA device"):
            device_slug("cuda")


def test_parse_kinds_and_refuse_the_rest():
    from fibuild.devices import Device, is_kind, parse_kind

    assert parse_kind("cuda:1") == ("cuda", 1) and parse_kind("CUDA") == ("cuda", None)
    assert parse_kind("cpu") == ("cpu", None)
    for bad in ("cpu:0", "cuda:x", "gpu", "", "nvidia-h100-80gb-hbm3-sm90"):
        assert not is_kind(bad)
        with pytest.raises(ConfigError, match="expected cpu, cuda or cuda:N"):
            parse_kind(bad)
    cpu = Device.parse("cpu")
    assert (cpu.kind, cpu.index, cpu.compute_capability, cpu.local) == ("cpu", None, None, True)
    assert cpu.slug == device_slug("cpu") and cpu.torch_device == "cpu" and Device.parse("cpu") is cpu


def test_slug_devices_carry_their_compute_capability():
    from fibuild.devices import Device

    h100 = Device.from_slug("nvidia-h100-80gb-hbm3-sm90")
    assert (h100.kind, h100.compute_capability, h100.local) == ("cuda", (9, 0), False)
    assert Device.from_slug("nvidia-b200-sm100").compute_capability == (10, 0)
    assert Device.from_slug("nvidia-gb10-sm121").compute_capability == (12, 1)
    assert Device.from_slug("cpu-amd-epyc").kind == "cpu"
    with pytest.raises(ConfigError, match="not a device slug"):
        Device.from_slug("../etc")
    with pytest.raises(ConfigError, match="not a device of this machine"):
        h100.torch_device


@pytest.mark.parametrize("targets, h100, cpu", [
    ((), True, True), (("any",), True, True), (("cpu",), False, True), (("cuda",), True, False),
    (("gpu", "cpu"), True, True), (("sm90",), True, False), (("sm_90a",), True, False),
    (("9.0",), True, False), (("sm100",), False, False), (("H100",), True, False),
    (("b200",), False, False), (("sm100", "h100"), True, False)])
def test_target_hardware_matching(targets, h100, cpu):
    from fibuild.devices import Device

    gpu = Device.from_slug("nvidia-h100-80gb-hbm3-sm90")
    here = Device.from_slug("cpu-amd-epyc")
    assert gpu.matches(targets) is h100 and here.matches(targets) is cpu
    if not h100:
        assert gpu.mismatch(targets) == (f"target_hardware [{', '.join(targets)}] does not include "
                                         "nvidia-h100-80gb-hbm3-sm90")


def test_device_argument_takes_a_kind_or_a_slug():
    from fibuild.devices import resolve_device_arg

    here = device_slug("cpu")
    assert resolve_device_arg("cpu").slug == here
    assert resolve_device_arg(here).local  # this machine's slug
    other = resolve_device_arg("nvidia-h100-80gb-hbm3-sm90", ["nvidia-h100-80gb-hbm3-sm90"])
    assert not other.local and other.compute_capability == (9, 0)
    with pytest.raises(ConfigError, match=rf"expected cpu, cuda or cuda:N, or a device slug \(.*{here}"):
        resolve_device_arg("nvidia-h100-80gb-hbm3-sm90")  # not known: not a registry device


def test_device_text_is_read_in_one_place():
    """Empty text takes the settings' kind; a slug of another machine only where asked for."""
    from fibuild.config import Settings
    from fibuild.devices import device_named

    assert device_named("", Settings.from_env({"FIBUILD_DEVICE": "cpu"})).slug == device_slug("cpu")
    assert device_named(" CPU ").kind == "cpu"
    other = device_named("nvidia-h200-sm90", any_slug=True)
    assert (other.slug, other.local) == ("nvidia-h200-sm90", False)
    assert not device_named("nvidia-h200-sm90", known_slugs=["nvidia-h200-sm90"]).local
    with pytest.raises(ConfigError, match="or a device slug"):
        device_named("nvidia-h200-sm90")  # a machine that is neither here nor named
