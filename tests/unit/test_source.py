"""YAML loading with marks, ${VAR} expansion and schema errors located as FILE:LINE:COL."""

from __future__ import annotations

from engine.source import load_yaml, validate


def problems(text: str, schema: str = "config", env: dict[str, str] | None = None) -> list[str]:
    doc, found = load_yaml(text, "cfg.yaml", env=env or {}, expand=True)
    if doc.data is not None and not found:
        found = validate(doc, schema)
    return [str(p) for p in found]


def test_marks_point_at_keys_and_items() -> None:
    doc, _ = load_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", "f.yaml")
    assert doc.locate(("a", "b")) == (2, 3)
    assert doc.locate(("a", "c", 1)) == (5, 7)
    assert doc.locate(("a", "missing")) == (1, 1)  # nearest ancestor


def test_env_expansion_with_default_and_type_resolution() -> None:
    doc, found = load_yaml("port: ${PORT:-8080}\nkey: ${KEY}\nquoted: '${PORT:-1}'\n", "f.yaml", env={"KEY": "secret"}, expand=True)
    assert not found
    assert doc.data == {"port": 8080, "key": "secret", "quoted": "1"}


def test_missing_env_var_names_variable_and_line() -> None:
    assert problems("providers:\n  openai:\n    api_key: ${OPENAI_API_KEY}\n") == [
        "cfg.yaml:3:14: providers.openai.api_key: environment variable OPENAI_API_KEY is not set "
        "(set it, or write ${OPENAI_API_KEY:-default})"
    ]


def test_unknown_key_lists_valid_keys() -> None:
    [p] = problems("server:\n  hots: 1.2.3.4\n")
    assert p.startswith("cfg.yaml:2:3: server.hots: unknown key 'hots' (valid keys: admin_password_hash, host, max_body_bytes, max_upload_bytes, port,")


def test_enum_lists_valid_values() -> None:
    [p] = problems("keys:\n  - name: a\n    key: abcdefgh12\n    budget: {period: yearly, limit_usd: 1}\n")
    assert p == "cfg.yaml:4:14: keys[0].budget.period: 'yearly' is not valid (valid values: daily, weekly, monthly)"


def test_type_error_and_all_errors_collected() -> None:
    found = problems("server:\n  port: high\n  workers: 0\ndata_dir: 5\n")
    assert found == [
        "cfg.yaml:2:3: server.port: expected integer, got string",
        "cfg.yaml:3:3: server.workers: must be >= 1",
        "cfg.yaml:4:1: data_dir: expected string, got integer",
    ]


def test_secret_values_never_echoed() -> None:
    found = problems("keys:\n  - name: a\n    key: 12345678901\n")
    assert found and all("12345678901" not in p for p in found)


def test_invalid_yaml_located() -> None:
    [p] = problems("a: [1, 2\nb: 3\n")
    assert p.startswith("cfg.yaml:2:2: invalid YAML")


def test_duplicate_key_reported() -> None:
    _, found = load_yaml("a: 1\na: 2\n", "f.yaml")
    assert [str(p) for p in found] == ["f.yaml:2:1: a: duplicate key 'a'"]
