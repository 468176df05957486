"""The ninja writer and runner, against the real ninja."""
from __future__ import annotations

from fibuild.compile.ninja import NinjaFile, escape_path, parse_failures, run_ninja, write_if_different


def test_escape_path():
    assert escape_path("/a b/c:d$e") == "/a$ b/c$:d$$e"


def test_write_if_different_keeps_mtime(tmp_path):
    path = tmp_path / "f.ninja"
    assert write_if_different(path, "a\n")
    before = path.stat().st_mtime_ns
    assert not write_if_different(path, "a\n")
    assert path.stat().st_mtime_ns == before
    assert write_if_different(path, "b\n") and path.read_text() == "b\n"


def _sub(tmp_path, name, fail):
    d = tmp_path / name
    d.mkdir()
    nf = NinjaFile()
    nf.rule("make", ("false" if fail else "echo made > $out") + " # $in", description=f"MAKE {name}",
            pool="$nvcc_pool")
    nf.build([d / "out.txt"], "make", [])
    path = d / "build.ninja"
    write_if_different(path, nf.text())
    return path


def test_subninja_with_pool_variable_runs_alone_and_from_a_top_file(tmp_path):
    ok = _sub(tmp_path, "ok", fail=False)
    alone = run_ninja(ok, jobs=1)  # nvcc_pool undefined: no pool, still valid
    assert alone.ok, alone.output
    (tmp_path / "ok" / "out.txt").unlink()
    bad = _sub(tmp_path, "bad", fail=True)
    top = NinjaFile()
    top.pool("nvcc", 1)
    top.variable("nvcc_pool", "nvcc")
    top.subninja(ok)
    top.subninja(bad)
    (tmp_path / "top").mkdir()
    top_file = tmp_path / "top" / "top.ninja"
    write_if_different(top_file, top.text())
    seen = []
    result = run_ninja(top_file, jobs=2, keep_going=True, on_status=lambda n, t, d: seen.append((n, t, d)))
    assert not result.ok
    assert result.failed_outputs == [str(tmp_path / "bad" / "out.txt")]
    assert (tmp_path / "ok" / "out.txt").read_text() == "made\n"  # -k 0: the other edge still ran
    assert {d for _, _, d in seen} == {"MAKE ok", "MAKE bad"} and all(t == 2 for _, t, _ in seen)
    block = result.failure_logs[str(tmp_path / "bad" / "out.txt")]
    assert block.startswith("FAILED: ") and "false" in block


def test_parse_failures_blocks():
    out = "[1/3] CXX a\nFAILED: [code=1] /x/a.o\ng++ ...\nerror: boom\n[2/3] CXX b\nninja: build stopped"
    failed, blocks = parse_failures(out)
    assert failed == ["/x/a.o"]
    assert blocks["/x/a.o"].splitlines() == ["FAILED: [code=1] /x/a.o", "g++ ...", "error: boom"]
