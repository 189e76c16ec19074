"""The statements analysts type on an unknown lake, answered read-only: SHOW TABLES, DESCRIBE [TABLE]
[EXTENDED] t [column], DESCRIBE DETAIL t, DESCRIBE HISTORY t [LIMIT n], SHOW COLUMNS IN t, and
EXPLAIN [mode] / DESCRIBE QUERY of a query.

Spark runs these as commands, eagerly, and several of its commands write; so none of them is handed
to Spark as a command. Each parsed statement is recognised by its plan node, its table must be a
lake table named by its bare name (no path, no other catalog), and the answer is built here from
what the table itself holds: its schema with Delta's column comments, and Delta's own detail and
history of that table (`DeltaTable`, which only reads the log). EXPLAIN and DESCRIBE QUERY get the
same checks as a query (`check_parsed`); Spark then produces only their plan text or output schema.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession

from nextplay.tables import TABLE_COMMENTS, Lake

class Refused(Exception):
    """The statement is not one of these, or names something that is not a lake table."""


def _seq(scala_seq: Any) -> list[Any]:
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def _option(scala_option: Any) -> Any | None:
    return None if scala_option.isEmpty() else scala_option.get()


def _lake_table(node: Any, tables: list[str]) -> str:
    """The lake table a statement's child names; refuses a path, another catalog or an unknown name."""
    child = node.children().apply(0)
    kind = child.getClass().getSimpleName()
    if kind not in ("UnresolvedTableOrView", "UnresolvedTable"):
        raise Refused(f"describe a lake table by its bare name, not a path ({kind})")
    parts = [str(p) for p in _seq(child.multipartIdentifier())]
    known = {t.lower(): t for t in tables}
    if len(parts) != 1 or parts[0].lower() not in known:
        raise Refused(f"{'.'.join(parts)} is not a lake table: name one of {', '.join(sorted(tables)) or '(none yet)'} "
                      "by its bare name (paths and other catalogs are not allowed)")
    return known[parts[0].lower()]


def _like(pattern: str) -> re.Pattern[str]:
    """SHOW TABLES LIKE: `*` any characters, `|` alternatives, case-insensitive (as Spark matches)."""
    return re.compile("|".join(".*".join(map(re.escape, alt.strip().split("*"))) for alt in pattern.split("|")),
                      re.IGNORECASE)


def _columns(session: SparkSession, table: str) -> list[tuple[str, str, str | None]]:
    return [(f.name, f.dataType.simpleString(), f.metadata.get("comment"))
            for f in session.table(table).schema.fields]


def _show_tables(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    pattern = _option(node.pattern())
    names = [t for t in tables if pattern is None or _like(str(pattern)).fullmatch(t)]
    return session.createDataFrame([(t, TABLE_COMMENTS.get(t)) for t in names], "tableName string, description string")


def _describe(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    table = _lake_table(node, tables)
    if not node.partitionSpec().isEmpty():
        raise Refused("DESCRIBE ... PARTITION is not supported: filter the table in a query instead")
    rows = list(_columns(session, table))
    if node.isExtended():
        detail = lake.delta_table(session, table).detail().first()
        rows += [("", "", None), ("# Detail", "", None), ("Description", TABLE_COMMENTS.get(table, ""), None),
                 ("Partition columns", ", ".join(detail["partitionColumns"]) or "(none)", None),
                 ("Clustering columns", ", ".join(detail["clusteringColumns"] or []) or "(none)", None),
                 ("Files", str(detail["numFiles"]), None), ("Size in bytes", str(detail["sizeInBytes"]), None),
                 ("Last modified", str(detail["lastModified"]), None)]
    return session.createDataFrame(rows, "col_name string, data_type string, comment string")


def _describe_column(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    table = _lake_table(node, tables)
    wanted = ".".join(str(p) for p in _seq(node.column().nameParts()))
    match = [c for c in _columns(session, table) if c[0].lower() == wanted.lower()]
    if not match:
        raise Refused(f"{table} has no column {wanted}: SHOW COLUMNS IN {table} lists them")
    name, data_type, comment = match[0]
    return session.createDataFrame([("col_name", name), ("data_type", data_type), ("comment", comment or "NULL")],
                                   "info_name string, info_value string")


def _show_columns(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    table = _lake_table(node, tables)
    if not node.namespace().isEmpty():
        raise Refused("SHOW COLUMNS ... IN <namespace>: lake tables have no namespace; name the table alone")
    return session.createDataFrame([(c[0],) for c in _columns(session, table)], "col_name string")


def _describe_detail(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    return lake.delta_table(session, _lake_table(node, tables)).detail()


def _describe_history(session: SparkSession, node: Any, tables: list[str], lake: Lake) -> DataFrame:
    history = lake.delta_table(session, _lake_table(node, tables)).history()
    limit = _option(node.limit())
    return history if limit is None else history.limit(int(limit))


_STATEMENTS: dict[str, Callable[[SparkSession, Any, list[str], Lake], DataFrame]] = {
    "ShowTables": _show_tables, "DescribeRelation": _describe, "DescribeColumn": _describe_column,
    "ShowColumns": _show_columns, "DescribeDeltaDetailCommand": _describe_detail,
    "DescribeDeltaHistory": _describe_history,
}
_QUERY_STATEMENTS = ("ExplainCommand", "DescribeQueryCommand")


def answers(plan: Any) -> bool:
    """Whether `plan` (parsed) is one of the statements this module answers."""
    return plan.getClass().getSimpleName() in (*_STATEMENTS, *_QUERY_STATEMENTS)


def answer(session: SparkSession, lake: Lake, query: str, plan: Any, tables: list[str],
           check_inner: Callable[[Any], None]) -> DataFrame:
    """The result of statement `query` (parsed: `plan`) over `tables` of `lake`. EXPLAIN and DESCRIBE
    QUERY run as Spark runs them (both only analyse their query, neither executes it) once
    `check_inner` has accepted the query they hold, as it accepts a query `nextplay sql` runs."""
    name = plan.getClass().getSimpleName()
    if name in _STATEMENTS:
        return _STATEMENTS[name](session, plan, tables, lake)
    if name in _QUERY_STATEMENTS:
        check_inner(plan.logicalPlan() if name == "ExplainCommand" else plan.plan())
        return session.sql(query)
    raise Refused(f"not a statement nextplay sql answers: {name}")
