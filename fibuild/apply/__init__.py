"""Resolution and dispatch: ApplyTable, Resolver, the Kernel ``fibuild.load`` returns.

``fibuild.apply`` names both this package and the public ``apply`` verb: importing any
submodule makes the package the attribute ``fibuild.apply``, so the package itself is
callable and forwards to :func:`fibuild.apply.api.apply` (``@fibuild.apply("name")`` and
``fibuild.apply("name", args=...)`` work whichever of the two the attribute holds).
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .api import apply

        return apply(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
