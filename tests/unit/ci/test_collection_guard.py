""".ci/collection_guard.py fails when a test folder drops out of collection (renamed to build)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GUARD = REPO / ".ci" / "collection_guard.py"


def _tree(root: Path) -> Path:
    """The repository's pytest configuration (pyproject.toml) over two small test folders:
    3 test functions, one of them parametrized. (No conftest: it would import torch.)"""
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "tests" / "kernels").mkdir()
    (root / "tests" / "unit" / "test_a.py").write_text("def test_one():\n    assert 1\n")
    (root / "tests" / "kernels" / "test_b.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\ndef test_two(n):\n    assert n\n\n"
        "class TestThree:\n    def test_three(self):\n        assert 3\n\n"
        "    def helper(self):\n        pass\n\n"
        "@pytest.fixture\ndef test_data():\n    return 1\n")
    return root


def _guard(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GUARD), "--root", str(root)], capture_output=True, text=True,
                          timeout=300)


def test_guard_passes_when_everything_is_collected_and_fails_when_a_folder_is_renamed_build(tmp_path):
    root = _tree(tmp_path)
    ok = _guard(root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 of 3 test functions in 2 files collected (4 test items" in ok.stdout

    (root / "tests" / "kernels").rename(root / "tests" / "build")
    failed = _guard(root)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "2 of 3 test functions defined under tests/ were not collected" in failed.stderr
    assert "tests/build/test_b.py: TestThree::test_three, test_two" in failed.stderr


def test_guard_fails_when_a_test_module_cannot_be_collected(tmp_path):
    root = _tree(tmp_path)
    (root / "tests" / "unit" / "test_a.py").write_text("import no_such_module_anywhere\n\ndef test_one():\n    pass\n")
    result = _guard(root)
    assert result.returncode == 1
    assert "pytest --collect-only failed" in result.stderr and "no_such_module_anywhere" in result.stderr
