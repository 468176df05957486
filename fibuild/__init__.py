"""fibuild: declarative build, benchmark and dispatch of GPU kernels.

Public API (imported lazily, so ``import fibuild`` costs almost nothing):
``load``, ``apply``, ``resolve``, ``Workspace``, ``Settings``, ``__version__``, and the
serving integration's ``enable`` / ``disable``.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "apply", "resolve", "Workspace", "Settings", "enable", "disable", "__version__"]

_LAZY = {
    "load": ("fibuild.runtime.api", "load"),
    "apply": ("fibuild.runtime.api", "apply"),
    "resolve": ("fibuild.runtime.api", "resolve"),
    "Workspace": ("fibuild.spec.manifest", "Workspace"),
    "Settings": ("fibuild.config", "Settings"),
    "enable": ("fibuild.integrations.activation", "enable"),
    "disable": ("fibuild.integrations.activation", "disable"),
}


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fibuild' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
