"""fibuild: declarative build, benchmark and dispatch of GPU kernels.

Public API (imported lazily, so ``import fibuild`` costs almost nothing): the verbs
``load``, ``apply``, ``resolve``; the objects they return, ``Kernel`` and ``Resolution``;
``Workspace``, ``Settings``; the serving integration's ``enable`` / ``disable``; the error
hierarchy rooted at ``FibuildError``; ``__version__``.
"""
from __future__ import annotations

__version__ = "0.1.0"
_ERRORS = ("FibuildError", "ConfigError", "ManifestError", "ManifestErrors", "BuildError",
           "BenchError", "InputError", "ResolveError", "CacheError", "RegistryError")

_LAZY = {
    "load": ("fibuild.runtime.api", "load"),
    "apply": ("fibuild.runtime.api", "apply"),
    "resolve": ("fibuild.runtime.api", "resolve"),
    "Kernel": ("fibuild.runtime.dispatch", "Kernel"),
    "Resolution": ("fibuild.runtime.decisions", "Resolution"),
    "Workspace": ("fibuild.spec.workspace", "Workspace"),
    "Settings": ("fibuild.config", "Settings"),
    "enable": ("fibuild.integrations.activation", "enable"),
    "disable": ("fibuild.integrations.activation", "disable"),
    **{name: ("fibuild.errors", name) for name in _ERRORS},
}

__all__ = [*_LAZY, "__version__"]


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
