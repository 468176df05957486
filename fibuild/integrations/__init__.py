"""Serving integration: trace and substitute FlashInfer and ``F.linear`` calls in a live process.

Turned on without code changes by ``FIBUILD_TRACE=1`` / ``FIBUILD_APPLY=1`` (the installed
``fibuild_integrations.pth`` hook), by ``fibuild run [--trace] [--apply] -- CMD``, or in code
by ``fibuild.enable(trace=..., apply=...)`` and undone by ``fibuild.disable()``.
Adapters (:mod:`.adapters`) map a call to a definition; :mod:`.tracing` records workloads;
:mod:`.session` decides per call shape; substitution goes through ``fibuild.load``.
``stats()`` says what each patched API's calls did. Importing this package does nothing.
"""
from __future__ import annotations


def stats() -> dict:
    """Per patched API: ``calls``, ``substituted``, ``original``, ``fallbacks`` by reason
    (see :func:`fibuild.integrations.activation.stats`)."""
    from .activation import stats as _stats  # deferred: importing the package loads nothing

    return _stats()
