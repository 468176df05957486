"""What the README shows is what happens: the printed trace, the layout it lists."""
from __future__ import annotations

import re
from pathlib import Path

import fibuild
from fibuild.spec.workspace import shipped_root

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_printing_explain_shows_the_readable_trace(monkeypatch, capsys, settings_env):
    assert "print(k.explain(batch_size=32))" in README
    monkeypatch.setenv("FIBUILD_ROOT", str(shipped_root()))
    monkeypatch.setenv("FIBUILD_DEVICE", "cpu")
    k = fibuild.load("rmsnorm_h4096")
    print(k.explain(batch_size=32))
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"rmsnorm_h4096 at batch_size=32 on cpu-\S+: \S+ \(policy \w+, (eager|graph) mode"
                        r"(, (FAST|SLOW|SAME|AMBIGUOUS))?\)", lines[0]), lines[0]
    assert lines[1:] and all(line.startswith(("  - ", "  note: ")) for line in lines[1:])
    assert any(line.startswith("  - accepted ") for line in lines)


def test_every_path_of_the_layout_block_exists():
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    paths = [line.split()[0] for line in block.splitlines() if line.strip() and "(optional)" not in line]
    assert "fibuild/spec/schemas/*.schema.json" in paths
    for path in paths:
        pattern = re.sub(r"<[^>]+>", "*", path)
        assert list(REPO.glob(pattern.rstrip("/"))), f"README layout: nothing matches {path}"
