"""vLLM's ``vllm.general_plugins`` entry point: fibuild's serving integration in every vLLM process.

vLLM calls each function of that entry-point group once in every process it runs: the
front end, the engine core and each worker before it builds the model (vLLM 0.34.0
``vllm/plugins/__init__.py`` ``load_general_plugins``, called from
``v1/worker/worker_base.py`` ``init_worker``); ``VLLM_PLUGINS`` may name the ones to load
(this one is ``fibuild``). pyproject.toml registers :func:`register` there, so a worker is
enabled even where the ``.pth`` hook did not run (fibuild installed without it, an
interpreter started with ``-S``).
"""
from __future__ import annotations

import logging
import os


def register() -> None:
    """Enable fibuild from ``FIBUILD_TRACE`` / ``FIBUILD_APPLY`` (as the ``.pth`` hook does);
    nothing when neither is set. Never raises: vLLM logs and skips a failing plugin only at
    load time, not when it is called. Cost when unset: two environment lookups."""
    if not any(os.environ.get(name, "0").strip() not in ("", "0") for name in ("FIBUILD_TRACE", "FIBUILD_APPLY")):
        return
    try:
        from .activation import start_from_env  # deferred: fibuild's integration only when asked for

        start_from_env()
    except Exception:  # noqa: BLE001 - start_from_env never raises; an import failure must not either
        logging.getLogger("fibuild.integrations").exception("fibuild: serving integration not enabled")
