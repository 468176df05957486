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


def test_the_documentation_list_links_every_doc_and_only_existing_ones():
    links = re.findall(r"\]\((docs/[^)#]+)\)", README)
    assert links, "README links no docs/ page"
    for link in links:
        assert (REPO / link).is_file(), f"README links {link}, which does not exist"
    listed = set(README.split("## Documentation", 1)[1].split("\n## ", 1)[0].split("(docs/")[1:])
    listed = {item.split(")", 1)[0] for item in listed}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages <= listed, f"docs/ pages missing from README's Documentation list: {sorted(pages - listed)}"


def test_the_walkthrough_comes_first_and_runs_in_ci():
    """A newcomer reads set-up, then the first kernel (init → definition → solution → build →
    bench → load); CI runs its commands (.ci/wheel_smoke.sh extracts the bash blocks)."""
    headings = re.findall(r"(?m)^## (.*)$", README)
    assert headings[:2] == ["Set-up: two commands", "Your first kernel"]
    section = README.split("\n## Your first kernel\n", 1)[1].split("\n## ", 1)[0]
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))
    order = ["fibuild init", "defs/", "solutions/", "fibuild build", "fibuild bench", "fibuild.load"]
    positions = [commands.index(step) for step in order]
    assert positions == sorted(positions)
    assert "Your first kernel" in (REPO / ".ci" / "wheel_smoke.sh").read_text()


def test_the_env_table_is_the_one_config_documents():
    from fibuild.config import env_table_markdown

    assert env_table_markdown() in README
