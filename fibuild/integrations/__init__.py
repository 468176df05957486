"""Serving integration: trace and substitute FlashInfer and ``F.linear`` calls in a live process.

Turned on without code changes by ``FIBUILD_TRACE=1`` / ``FIBUILD_APPLY=1`` (the installed
``fibuild_integrations.pth`` hook), by ``fibuild run [--trace] [--apply] -- CMD``, or in code
by ``fibuild.enable(trace=..., apply=...)`` and undone by ``fibuild.disable()``.
Adapters (:mod:`.adapters`) map a call to a definition; :mod:`.tracing` records workloads;
:mod:`.session` decides per call shape; substitution goes through ``fibuild.load``.
Importing this package does nothing.
"""
