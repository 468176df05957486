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
