"""Fixtures of the apply tests (helpers live in runtime_helpers.py)."""
from __future__ import annotations

import pytest

from runtime_helpers import TempWorkspace, make_workspace


@pytest.fixture
def workspace(tmp_path) -> TempWorkspace:
    """defs/rmsnorm/rmsnorm_h4096.yaml, its torch_fp32 solution and a DPS torch_alt one."""
    return make_workspace(tmp_path)
