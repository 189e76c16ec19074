"""`nextplay sql`: lake tables by name; JSON output that json.loads takes as is."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from nextplay.cli import main
from nextplay.sql import run_sql
from nextplay.tables import ITEM_INDEX, ITEM_INDEX_SCHEMA, SESSIONS, SESSIONS_SCHEMA, Lake


def test_json_output_parses_and_keeps_types(spark, cfg, capsys):
    lake = Lake(cfg.lake)
    start = datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    rows = [("u1", "s1", start, start, start.date(), [3, 1, 2], 3, "train"),
            ("u2", "s2", start, start, start.date(), [5, 4], 2, "test")]
    lake.create_if_missing(spark, SESSIONS, SESSIONS_SCHEMA)
    lake.write(spark.createDataFrame(rows, SESSIONS_SCHEMA), SESSIONS)
    capsys.readouterr()

    run_sql(cfg, "SELECT user_id, items, start_ts, event_date, CAST(NULL AS STRING) AS note FROM sessions ORDER BY user_id",
            fmt="json")
    assert json.loads(capsys.readouterr().out) == [
        {"user_id": "u1", "items": [3, 1, 2], "start_ts": "2025-03-01T10:00:00.123456Z", "event_date": "2025-03-01", "note": None},
        {"user_id": "u2", "items": [5, 4], "start_ts": "2025-03-01T10:00:00.123456Z", "event_date": "2025-03-01", "note": None},
    ]
    assert main(["sql", "--lake", cfg.lake.root, "--format", "json",
                 "SELECT split, count(*) AS n FROM sessions WHERE length > 5 GROUP BY split"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["sql", "--lake", cfg.lake.root, "SELECT split, length FROM sessions ORDER BY split"]) == 0
    table = capsys.readouterr().out
    assert "|split|length|" in table.replace(" ", "") and "train" in table


# -- read-only by construction ------------------------------------------------------------------

@pytest.fixture
def small_lake(spark, cfg):
    """sessions and item_index with three rows each, in the test's own lake."""
    lake = Lake(cfg.lake)
    start = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
    sessions = [("u1", "s1", start, start, start.date(), [3, 1, 2], 3, "train"),
                ("u1", "s2", start, start, start.date(), [2, 1], 2, "train"),
                ("u2", "s3", start, start, start.date(), [5, 4], 2, "test")]
    lake.create_if_missing(spark, SESSIONS, SESSIONS_SCHEMA)
    lake.write(spark.createDataFrame(sessions, SESSIONS_SCHEMA), SESSIONS)
    index = [("a", 1, 10), ("b", 2, 7), ("c", 3, 1)]
    lake.create_if_missing(spark, ITEM_INDEX, ITEM_INDEX_SCHEMA)
    lake.write(spark.createDataFrame(index, ITEM_INDEX_SCHEMA), ITEM_INDEX)
    return lake


def refused(argv_query: str, root: str, capsys) -> str:
    """Run `nextplay sql` and assert it refuses with one line and exit code 2; returns stdout+stderr."""
    capsys.readouterr()
    assert main(["sql", "--lake", root, argv_query]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nextplay") and "Traceback" not in out.err, out.err
    return out.out + out.err


def session_rows(spark, lake: Lake) -> list:
    return sorted(tuple(r) for r in lake.read(spark, SESSIONS).select("session_id", "length").collect())


@pytest.mark.parametrize("template", [
    "DELETE FROM delta.`{sessions}` WHERE length > 0",
    "DELETE FROM sessions",
    "UPDATE delta.`{sessions}` SET length = 0",
    "UPDATE sessions SET length = 0",
    "MERGE INTO delta.`{sessions}` t USING sessions s ON t.session_id = s.session_id WHEN MATCHED THEN DELETE",
    "DROP TABLE delta.`{sessions}`",
    "TRUNCATE TABLE delta.`{sessions}`",
    "INSERT INTO delta.`{sessions}` SELECT * FROM sessions",
    "ALTER TABLE delta.`{sessions}` ADD COLUMNS (x INT)",
    "OPTIMIZE delta.`{sessions}`",
    "VACUUM delta.`{sessions}` RETAIN 0 HOURS",
    "RESTORE TABLE delta.`{sessions}` TO VERSION AS OF 0",
])
def test_writes_to_the_lake_are_refused(spark, cfg, small_lake, capsys, template):
    before = session_rows(spark, small_lake)
    version = small_lake.delta_table(spark, SESSIONS).history(1).first()["version"]
    refused(template.format(sessions=small_lake.path(SESSIONS)), cfg.lake.root, capsys)
    assert session_rows(spark, small_lake) == before
    assert small_lake.delta_table(spark, SESSIONS).history(1).first()["version"] == version


@pytest.mark.parametrize("template", [
    "INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM sessions",
    "INSERT OVERWRITE LOCAL DIRECTORY '{out}' STORED AS TEXTFILE SELECT * FROM sessions",
    "WITH w AS (SELECT * FROM sessions) INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM w",
    "WITH w AS (INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM sessions) SELECT 1",
    "CREATE TABLE sneaky USING parquet LOCATION '{out}' AS SELECT * FROM sessions",
    "CREATE TABLE sneaky USING delta LOCATION '{out}' AS SELECT * FROM sessions",
])
def test_writes_outside_the_lake_are_refused(spark, cfg, small_lake, capsys, tmp_path, template):
    out = tmp_path / "elsewhere"
    refused(template.format(out=out), cfg.lake.root, capsys)
    assert not out.exists()
    assert not spark.catalog.tableExists("sneaky")


@pytest.mark.parametrize("query", [
    "SET spark.sql.runSQLOnFiles=true",
    "RESET",
    "ADD JAR /tmp/nextplay-no-such.jar",
    "ADD FILE /etc/hostname",
    "CACHE TABLE sessions",
    "CACHE TABLE c AS SELECT * FROM sessions",
    "UNCACHE TABLE sessions",
    "CREATE TEMPORARY VIEW v AS SELECT * FROM sessions",
    "CREATE FUNCTION f AS 'java.lang.String'",
    "REFRESH TABLE sessions",
    "USE other",
    "SHOW CREATE TABLE sessions",
    "SHOW PARTITIONS sessions",
    "DESCRIBE default.sessions",
    "DESCRIBE not_a_lake_table",
    "DESCRIBE DETAIL '/etc'",
    "DESCRIBE HISTORY delta.`/tmp`",
    "DESCRIBE DETAIL spark_catalog.default.sessions",
    "SHOW COLUMNS IN sessions IN other",
    "EXPLAIN SELECT * FROM csv.`/etc/hostname`",
    "EXPLAIN SELECT * FROM default.sessions",
    "EXPLAIN DELETE FROM sessions",
    "EXPLAIN INSERT OVERWRITE DIRECTORY '/tmp/nextplay-explain' USING parquet SELECT * FROM sessions",
    "DESCRIBE QUERY SELECT * FROM text.`/etc/hostname`",
    "DESCRIBE QUERY SELECT reflect('java.lang.System', 'getenv', 'HOME')",
    "SELECT * FROM sessions VERSION AS OF 0",
    "SELECT * FROM IDENTIFIER('sessions')",
    "SELECT * FROM range(10)",
    "SELECT * FROM default.sessions",
    "SELECT * FROM not_a_lake_table",
    "SELECT * FROM sessions s TRANSFORM (user_id) USING 'cat'",
    "SELECT TRANSFORM (user_id) USING 'cat' AS (u) FROM sessions",
])
def test_commands_and_other_relations_are_refused(spark, cfg, small_lake, capsys, query):
    refused(query, cfg.lake.root, capsys)
    assert not spark.catalog.tableExists("c") and not spark.catalog.tableExists("v")


@pytest.mark.parametrize("template", [
    "SELECT value FROM text.`{file}`",
    "SELECT * FROM csv.`{file}`",
    "SELECT * FROM json.`{file}`",
    "SELECT * FROM read_files('{file}')",
    "SELECT * FROM read_files('{file}', format => 'text')",
    "SELECT * FROM sessions WHERE user_id IN (SELECT value FROM text.`{file}`)",
    "WITH f AS (SELECT * FROM text.`{file}`) SELECT * FROM f",
])
def test_reading_files_outside_the_lake_is_refused(spark, cfg, small_lake, capsys, tmp_path, template):
    planted = tmp_path / "private.txt"
    planted.write_text("private-marker-4711\n")
    text = refused(template.format(file=planted), cfg.lake.root, capsys)
    assert "private-marker-4711" not in text


@pytest.mark.parametrize("query", [
    "SELECT java_method('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE')",
    "SELECT JAVA_METHOD('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE')",
    "SELECT reflect('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE')",
    "SELECT try_reflect('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE')",
    "SELECT system.builtin.reflect('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE')",
    "SELECT user_id FROM sessions WHERE user_id IN (SELECT Java_Method('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE'))",
    "SELECT user_id FROM sessions WHERE EXISTS (SELECT 1 FROM item_index WHERE track_id = reflect('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE'))",
    "WITH e AS (SELECT reflect('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE') AS v) SELECT * FROM e",
    "SELECT max(length) FILTER (WHERE java_method('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE') IS NOT NULL) FROM sessions",
    "SELECT max(length) OVER w FROM sessions WINDOW w AS (PARTITION BY java_method('java.lang.System', 'getenv', 'NEXTPLAY_SQL_PROBE'))",
])
def test_reflection_is_refused(spark, cfg, small_lake, capsys, monkeypatch, query):
    monkeypatch.setenv("NEXTPLAY_SQL_PROBE", "env-marker-0815")
    text = refused(query, cfg.lake.root, capsys)
    assert "env-marker-0815" not in text
    assert "java_method" in text.lower() or "reflect" in text.lower()


def test_syntax_and_analysis_errors_are_one_line(cfg, small_lake, capsys):
    assert "`nope`" in refused("SELECT nope FROM sessions", cfg.lake.root, capsys)
    assert "SYNTAX" in refused("SELEC * FROM sessions", cfg.lake.root, capsys)


def test_read_only_queries_still_work(spark, cfg, small_lake, capsys):
    queries = {
        "join": ("SELECT s.session_id, i.track_id FROM sessions s JOIN item_index i ON i.item_idx = s.items[0] "
                 "ORDER BY s.session_id", [{"session_id": "s1", "track_id": "c"}, {"session_id": "s2", "track_id": "b"}]),
        "cte": ("WITH per_user AS (SELECT user_id, count(*) AS n FROM Sessions GROUP BY user_id), "
                "top AS (SELECT * FROM per_user WHERE n > 1) SELECT user_id, n FROM TOP", [{"user_id": "u1", "n": 2}]),
        "window": ("SELECT session_id, row_number() OVER (PARTITION BY user_id ORDER BY length DESC) AS r "
                   "FROM sessions ORDER BY session_id",
                   [{"session_id": "s1", "r": 1}, {"session_id": "s2", "r": 2}, {"session_id": "s3", "r": 1}]),
        "subqueries": ("SELECT track_id, (SELECT max(length) FROM sessions) AS longest FROM item_index "
                       "WHERE item_idx IN (SELECT explode(items) FROM sessions WHERE split = 'train') "
                       "AND EXISTS (SELECT 1 FROM sessions) ORDER BY track_id",
                       [{"track_id": "a", "longest": 3}, {"track_id": "b", "longest": 3}, {"track_id": "c", "longest": 3}]),
        "values_and_lateral": ("SELECT x, y FROM VALUES (1, 'a') AS v(x, y) UNION ALL "
                               "SELECT item, session_id FROM sessions LATERAL VIEW explode(items) e AS item "
                               "WHERE session_id = 's2' AND item = 2", [{"x": 1, "y": "a"}, {"x": 2, "y": "s2"}]),
    }
    for name, (query, expected) in queries.items():
        capsys.readouterr()
        assert main(["sql", "--lake", cfg.lake.root, "--format", "json", query]) == 0, name
        assert json.loads(capsys.readouterr().out) == expected, name
        assert main(["sql", "--lake", cfg.lake.root, query]) == 0, name
        table = capsys.readouterr().out.replace(" ", "")
        assert "|" + "|".join(expected[0]) + "|" in table, name
    # The caller's own session keeps its settings: the read-only ones belong to a session of its own.
    assert spark.conf.get("spark.sql.runSQLOnFiles") == "true"


def test_a_catalog_table_hidden_behind_a_cte_name_is_refused(spark, cfg, small_lake, capsys, tmp_path):
    """`outside` is a CTE name inside the parentheses only: the first reference reaches the catalog
    table of that name, which the analyzed plan's check refuses."""
    spark.range(2).write.parquet(str(tmp_path / "outside"))
    spark.sql(f"CREATE TABLE outside_lake USING parquet LOCATION '{tmp_path / 'outside'}'")
    try:
        text = refused("SELECT id FROM outside_lake UNION ALL (WITH outside_lake AS (SELECT 7L AS id) "
                       "SELECT id FROM outside_lake)", cfg.lake.root, capsys)
        assert "other than the lake tables" in text
        refused("SELECT id FROM outside_lake", cfg.lake.root, capsys)
    finally:
        spark.sql("DROP TABLE outside_lake")


def _json(cfg, query: str, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["sql", "--lake", cfg.lake.root, "--format", "json", query]) == 0, query
    return json.loads(capsys.readouterr().out)


def test_the_statements_that_describe_the_lake_answer_and_write_nothing(spark, cfg, small_lake, capsys):
    version = small_lake.delta_table(spark, SESSIONS).history(1).first()["version"]
    shown = _json(cfg, "SHOW TABLES", capsys)
    assert [t["tableName"] for t in shown] == ["item_index", "sessions"] and all(t["description"] for t in shown)
    assert [t["tableName"] for t in _json(cfg, "SHOW TABLES LIKE 'sess*'", capsys)] == ["sessions"]

    columns = _json(cfg, "DESCRIBE sessions", capsys)
    assert [c["col_name"] for c in columns] == [f.name for f in SESSIONS_SCHEMA.fields]
    assert all(c["comment"] for c in columns)  # the column comments the table was created with
    assert {c["col_name"]: c["data_type"] for c in columns}["items"] == "array<int>"
    extended = _json(cfg, "DESCRIBE TABLE EXTENDED sessions", capsys)
    assert {"col_name": "Partition columns", "data_type": "event_date", "comment": None} in extended
    assert _json(cfg, "DESC sessions length", capsys)[:2] == [{"info_name": "col_name", "info_value": "length"},
                                                             {"info_name": "data_type", "info_value": "int"}]
    assert [c["col_name"] for c in _json(cfg, "SHOW COLUMNS IN item_index", capsys)] == [f.name for f in ITEM_INDEX_SCHEMA.fields]

    detail = _json(cfg, "DESCRIBE DETAIL sessions", capsys)
    assert detail[0]["format"] == "delta" and detail[0]["partitionColumns"] == ["event_date"]
    history = _json(cfg, "DESCRIBE HISTORY sessions LIMIT 1", capsys)
    assert len(history) == 1 and history[0]["version"] == version

    plan = _json(cfg, "EXPLAIN FORMATTED SELECT user_id, count(*) FROM sessions GROUP BY user_id", capsys)
    assert "HashAggregate" in plan[0]["plan"]
    described = _json(cfg, "DESCRIBE QUERY SELECT user_id, length FROM sessions", capsys)
    assert [(c["col_name"], c["data_type"]) for c in described] == [("user_id", "string"), ("length", "int")]
    assert small_lake.delta_table(spark, SESSIONS).history(1).first()["version"] == version


def test_a_refused_command_is_named_in_sql_words_not_by_spark_class(cfg, small_lake, capsys):
    text = refused("CREATE TEMPORARY VIEW v AS SELECT * FROM sessions", cfg.lake.root, capsys)
    assert "CREATE VIEW" in text and "Command" not in text
    assert "DROP TABLE" in refused("DROP TABLE sessions", cfg.lake.root, capsys)
