"""`omniroute sql`: read-only SQL over the usage files, three output formats, clear refusals."""

import csv
import io
import json

import pytest

from engine.sqlcli import QueryError, ReadOnlyQueryError, main, run_query
from engine.usage import UsageStore


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sql")
    store = UsageStore(d)
    for i, (key, cost) in enumerate([("team-a", 1_500_000), ("team-a", 250), ("team-b", None)]):
        store.record({"request_id": f"r{i}", "ts": 1_773_576_000.0 + i, "key_name": key, "cost_micro_usd": cost,
                      "provider": "openai", "tags": ["x"], "latency_ms": 10.0 * (i + 1)})
    store.close()
    return d


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_output(capsys, data_dir):
    code, out, err = run(capsys, "SELECT key_name, sum(cost_usd) AS usd FROM usage GROUP BY 1 ORDER BY 1",
                         "--data-dir", str(data_dir))
    assert code == 0, err
    assert out.splitlines() == [
        "key_name |      usd",
        "---------+---------",
        "team-a   | 1.500250",
        "team-b   |     NULL",
        "(2 rows)",
    ]


def test_csv_output(capsys, data_dir):
    code, out, _ = run(capsys, "SELECT request_id, ts, cost_usd, tags FROM usage ORDER BY 1", "--format", "csv",
                       "--data-dir", str(data_dir))
    assert code == 0
    got = list(csv.reader(io.StringIO(out)))
    assert got[0] == ["request_id", "ts", "cost_usd", "tags"]
    assert got[1] == ["r0", "2026-03-15T12:00:00Z", "1.500000", '["x"]']
    assert got[3][2] == ""  # NULL


def test_json_output_keeps_money_exact(capsys, data_dir):
    code, out, _ = run(capsys, "SELECT request_id, cost_usd, final FROM requests ORDER BY 1 LIMIT 2",
                       "--format", "json", "--data-dir", str(data_dir))
    assert code == 0
    assert '"cost_usd": 1.500000' in out
    assert json.loads(out) == [{"request_id": "r0", "cost_usd": 1.5, "final": True},
                               {"request_id": "r1", "cost_usd": 0.00025, "final": True}]


def test_max_rows(capsys, data_dir):
    code, out, err = run(capsys, "FROM usage SELECT request_id ORDER BY 1", "--max-rows", "1", "--data-dir", str(data_dir))
    assert code == 0 and "(1 row)" in out and "--max-rows 1" in err


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO usage (request_id) VALUES ('x')",
        "UPDATE usage SET cost_usd = 0",
        "DELETE FROM usage",
        "DROP VIEW usage",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH 'other.duckdb' AS o",
        "DETACH w0",
        "COPY (SELECT 1) TO 'out.csv'",
        "COPY usage FROM 'in.csv'",
        "EXPORT DATABASE 'dump'",
        "PRAGMA enable_checkpoint_on_shutdown",
        "SET enable_external_access = true",
        "CALL pragma_version()",
        "CHECKPOINT",
        "INSTALL httpfs",
        "LOAD httpfs",
        "EXPLAIN ANALYZE DELETE FROM usage",
        "SELECT 1; DROP VIEW usage",
        "SELECT 1; INSERT INTO usage (request_id) VALUES ('x')",
        "WITH x AS (SELECT 1) SELECT * FROM x; UPDATE usage SET final = false",
    ],
)
def test_write_statements_are_refused(data_dir, sql):
    with pytest.raises(ReadOnlyQueryError, match="read-only"):
        run_query(data_dir, sql)


def test_refusal_in_the_cli_is_exit_1_with_a_clear_message(capsys, data_dir):
    code, out, err = run(capsys, "DELETE FROM usage", "--data-dir", str(data_dir))
    assert code == 1 and out == ""
    assert "refused a DELETE statement" in err and "only read statements are allowed" in err
    assert run_query(data_dir, "SELECT count(*) FROM usage")[1] == [(3,)]  # nothing changed


def test_files_outside_the_data_cannot_be_read(data_dir):
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_query(data_dir, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_query(data_dir, "SELECT * FROM glob('/etc/*')")
    # DuckDB still lets a query read the attached files themselves (the data it may query anyway),
    # but nothing else beside them: not budgets.json, not pending batches.
    (data_dir / "budgets.json").write_text("{}")
    with pytest.raises(QueryError, match="disabled by configuration"):
        run_query(data_dir, f"SELECT * FROM read_text('{data_dir}/budgets.json')")


def test_reads_of_every_shape_are_allowed(data_dir):
    for sql in ("WITH k AS (SELECT key_name FROM usage) SELECT count(*) FROM k", "FROM requests SELECT count(*)",
                "DESCRIBE usage", "SHOW TABLES", "SUMMARIZE SELECT latency_ms FROM usage"):
        assert run_query(data_dir, sql)[1]


def test_sql_errors_and_several_selects_are_exit_1(capsys, data_dir):
    code, _, err = run(capsys, "SELECT nope FROM usage", "--data-dir", str(data_dir))
    assert code == 1 and "nope" in err
    code, _, err = run(capsys, "SELECT 1; SELECT 2", "--data-dir", str(data_dir))
    assert code == 1 and "one SELECT at a time" in err
    code, _, err = run(capsys, "   ", "--data-dir", str(data_dir))
    assert code == 1 and "empty query" in err


def test_usage_errors_are_exit_2(capsys, data_dir):
    assert run(capsys)[0] == 2
    assert run(capsys, "SELECT 1", "--format", "xml")[0] == 2
    assert run(capsys, "SELECT 1", "--max-rows", "-1")[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_an_empty_data_dir_answers_and_says_so(capsys, tmp_path):
    code, out, err = run(capsys, "SELECT count(*) AS n FROM usage", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 0 and "(1 row)" in out and "no usage data" in err


def test_params_and_row_cap(data_dir):
    cols, rows = run_query(data_dir, "SELECT request_id FROM usage WHERE key_name = ? ORDER BY 1", ["team-a"], max_rows=1)
    assert cols == ["request_id"] and rows == [("r0",), ("r1",)]  # max_rows + 1 tells "truncated"


def test_timeout_cancels_a_runaway_query(data_dir):
    with pytest.raises(QueryError, match="cancelled after"):
        run_query(data_dir, "SELECT count(*) FROM range(100000000000) a", timeout=0.2)
