"""Reading manifest files: YAML traps, duplicate keys, unreadable files, JSON lines."""
from __future__ import annotations

from fibuild.spec.documents import parse_json_line, parse_yaml_mapping, read_text


def test_yaml_1_1_traps_come_through_as_yaml_reads_them():
    data, problems = parse_yaml_mapping("a: 1e-3\nb: 1.0e-3\nc: on\nd: no\ne: yes\n")
    assert problems == []
    assert data == {"a": "1e-3", "b": 0.001, "c": True, "d": False, "e": True}


def test_duplicate_keys_are_reported_with_pointer_and_lines():
    text = "top:\n  list:\n    - {k: 1, k: 2}\n  list: []\nother: 1\n"
    data, problems = parse_yaml_mapping(text)
    assert data is not None
    assert sorted(problems) == [
        ("/top/list", "duplicate key 'list' at line 4 (first at line 2)"),
        ("/top/list/0/k", "duplicate key 'k' at line 3 (first at line 3)"),
    ]


def test_merge_keys_and_aliases_are_not_duplicates():
    text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  x: 3\nagain: *b\n"
    data, problems = parse_yaml_mapping(text)
    assert problems == []
    assert data["derived"] == {"x": 3, "y": 2}


def test_recursive_alias_is_a_problem_not_a_hang():
    data, problems = parse_yaml_mapping("a: &x [1, *x]\n")
    assert data == {"a": [1, None]}
    assert problems == [("/a/1", "recursive YAML alias: a value may not contain itself")]


def test_non_string_keys_are_reported_and_stringified():
    data, problems = parse_yaml_mapping("inputs:\n  yes: 1\n  3: 2\n")
    assert data == {"inputs": {"True": 1, "3": 2}}
    assert [p for p, _ in sorted(problems)] == ["/inputs/3", "/inputs/True"]
    assert all("expected a string" in m for _, m in problems)


def test_malformed_yaml_names_line_and_column():
    data, problems = parse_yaml_mapping("a: [1, 2\nb: 3\n")
    assert data is None
    (pointer, message), = problems
    assert pointer == "/" and message.startswith("malformed YAML at line 2, column 2")


def test_python_tags_are_rejected_not_executed():
    data, problems = parse_yaml_mapping("a: !!python/object/apply:os.system ['true']\n")
    assert data is None and "malformed YAML" in problems[0][1]


def test_empty_and_non_mapping_documents():
    assert parse_yaml_mapping("")[1] == [("/", "empty file: expected a mapping of manifest fields")]
    assert parse_yaml_mapping("# only a comment\n")[0] is None
    data, problems = parse_yaml_mapping("- 1\n- 2\n")
    assert data is None and problems == [("/", "expected a mapping of manifest fields at the top "
                                                "level, got list")]
    assert parse_yaml_mapping("just text\n")[1][0][1].endswith("got string 'just text'")


def test_several_documents_are_malformed():
    data, problems = parse_yaml_mapping("a: 1\n---\nb: 2\n")
    assert data is None and "malformed YAML" in problems[0][1]


def test_read_text_reports_missing_directory_and_binary(tmp_path):
    assert read_text(tmp_path / "nope.yaml") == (None, [("/", "file not found")])
    assert read_text(tmp_path) == (None, [("/", "is a directory, expected a file")])
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    text, problems = read_text(binary)
    assert text is None and problems[0][1].startswith("not UTF-8 text")


def test_parse_json_line():
    assert parse_json_line('{"a": 1}') == ({"a": 1}, None)
    assert parse_json_line('{"a": 1, "a": 2}') == (None, "duplicate key 'a'")
    value, error = parse_json_line('{"a": ')
    assert value is None and error.startswith("malformed JSON")


def test_absurd_nesting_is_a_problem_not_a_crash():
    data, problems = parse_yaml_mapping("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert data is None and problems == [("/", "nested too deeply to be a manifest")]
