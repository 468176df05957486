"""The public names import from ``fibuild`` itself, lazily: ``import fibuild`` loads none of them."""
from __future__ import annotations

import subprocess
import sys

import fibuild
from fibuild import errors

PUBLIC = ["load", "apply", "resolve", "Kernel", "Resolution", "Workspace", "Settings",
          "FibuildError", "ConfigError", "ManifestError", "BuildError", "BenchError", "InputError",
          "ResolveError", "CacheError", "RegistryError", "__version__"]


def test_public_names_import_from_fibuild():
    for name in PUBLIC:
        assert name in fibuild.__all__, name
        assert getattr(fibuild, name) is not None
    from fibuild import FibuildError, InputError, Kernel, Resolution  # noqa: F401

    assert fibuild.InputError is errors.InputError
    assert all(issubclass(getattr(fibuild, n), fibuild.FibuildError) for n in PUBLIC if n.endswith("Error"))
    assert fibuild.Kernel.__module__ == "fibuild.runtime.dispatch"


def test_import_fibuild_loads_no_stage():
    code = ("import sys, fibuild; print(sorted(m for m in sys.modules if m.startswith('fibuild.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
