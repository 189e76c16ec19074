"""`nextplay sql`: read-only SQL over every table of the lake, each registered under its own name.

Read-only by construction, not by convention: `spark.sql` runs commands (DELETE, INSERT
OVERWRITE DIRECTORY, SET, ADD JAR, ...) eagerly, so the text is first parsed without running it,
and only a query plan built from an allowlist of read-only nodes, over lake tables named by their
bare names, without reflective functions, is handed to Spark. The query then runs in a session of
its own with `spark.sql.runSQLOnFiles=false`, and its analyzed plan must read nothing but the lake
tables' scans. Anything else is refused with one line (`SqlRefused`, exit code 2).

Only results go to stdout (Spark and Python logging write to stderr), so `--format json` output
can be piped straight into `json.loads` or `jq`.
"""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TextIO

from pyspark.errors import PySparkException
from pyspark.logger import PySparkLogger
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.config import Config, ConfigError
from nextplay.spark import get_spark
from nextplay.sql import describe
from nextplay.tables import Lake

# Spark formats each row itself, in the session time zone (UTC): timestamps keep their offset and
# microseconds, nulls stay as null, nested structs and arrays come out as JSON too.
_JSON_OPTIONS = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX", "dateFormat": "yyyy-MM-dd",
                 "ignoreNullFields": "false"}

# Parsed (unresolved) logical plan nodes a read-only query is made of. Everything else is refused:
# every Command, INSERT, DDL, SET, ADD JAR, CACHE, script TRANSFORM, time travel, IDENTIFIER(),
# table-valued functions (read_files, range, ...).
_QUERY_NODES = frozenset({
    "Project", "Filter", "Aggregate", "Join", "LateralJoin", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail",
    "Union", "Intersect", "Except", "Distinct", "Deduplicate", "Window", "WithWindowDefinition", "SubqueryAlias",
    "UnresolvedSubqueryColumnAliases", "UnresolvedWith", "UnresolvedRelation", "OneRowRelation", "LocalRelation",
    "UnresolvedInlineTable", "UnresolvedHaving", "Generate", "Pivot", "Unpivot", "Sample",
    "RepartitionByExpression", "UnresolvedHint",
})
_CATALYST = "org.apache.spark.sql.catalyst."
# Functions that call into the JVM (reflection) or read secrets; matched on the last name part.
_FORBIDDEN_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect", "secret", "try_secret",
                                  "from_protobuf", "to_protobuf", "http_request"})
# Analyzed plan leaves that hold no data of their own (SELECT 1, VALUES), or point at a CTE whose
# definition is itself part of the checked plan.
_DATALESS_LEAVES = frozenset({"OneRowRelation", "LocalRelation", "CTERelationRef"})


class SqlRefused(ConfigError):
    """A statement `nextplay sql` does not run (not a read-only query of the lake, or not valid SQL)."""


def json_lines(df: DataFrame) -> Iterable[str]:
    """Each row of `df` as a JSON object, streamed partition by partition to the driver."""
    for row in df.select(F.to_json(F.struct("*"), _JSON_OPTIONS).alias("j")).toLocalIterator():
        yield row["j"]


def write_json_array(objects: Iterable[str], out: TextIO) -> None:
    out.write("[")
    for i, obj in enumerate(objects):
        out.write(",\n" if i else "\n")
        out.write(obj)
    out.write("\n]\n")


# -- walking JVM trees through py4j ---------------------------------------------------------------

def _seq(scala_seq: Any) -> list[Any]:
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def _simple_name(node: Any) -> str:
    return node.getClass().getSimpleName()


def _plan_nodes(plan: Any) -> Iterator[Any]:
    """Every node of a logical plan: children, CTE definitions and subqueries (inner children)."""
    stack = [plan]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_seq(node.children()))
        stack.extend(_seq(node.innerChildren()))


def _expressions(node: Any) -> Iterator[Any]:
    stack = _seq(node.expressions())
    while stack:
        expr = stack.pop()
        yield expr
        stack.extend(_seq(expr.children()))


def _statement(node_name: str) -> str:
    """A refused plan node as a person reads it: `DropTable` -> `DROP TABLE`, `InsertIntoStatement` ->
    `INSERT INTO` (the node class is Spark's, not the user's word)."""
    words = re.findall(r"[A-Z][a-z]+|[A-Z]+(?![a-z])", re.sub(r"(Command|Statement|Exec)$", "", node_name))
    return " ".join(words).upper() or node_name


def _first_line(message: str) -> str:
    return next((line.strip() for line in message.splitlines() if line.strip()), "invalid SQL")


# -- the checks ---------------------------------------------------------------------------------

def _function_name(expr: Any) -> list[str] | None:
    """The name parts of an unresolved function or generator call, else None."""
    name = _simple_name(expr)
    if name == "UnresolvedFunction":
        return [str(p) for p in _seq(expr.nameParts())]
    if name == "UnresolvedGenerator":
        return [str(expr.name().funcName())]
    return None


def check_parsed(plan: Any, tables: Iterable[str]) -> None:
    """Refuse a parsed plan unless it is a read-only query of `tables` (see module docstring)."""
    tables = set(tables)
    ctes: set[str] = set()
    relations: list[list[str]] = []
    for node in _plan_nodes(plan):
        cls, name = node.getClass().getName(), _simple_name(node)
        if not cls.startswith(_CATALYST) or name not in _QUERY_NODES:
            raise SqlRefused(f"only read-only queries are allowed, not {_statement(name or cls)}")
        if name == "UnresolvedWith":
            ctes.update(str(rel._1()) for rel in _seq(node.cteRelations()))
        if name == "UnresolvedRelation":
            relations.append([str(p) for p in _seq(node.multipartIdentifier())])
        for expr in _expressions(node):
            parts = _function_name(expr)
            if parts is None:
                continue
            if parts[-1].lower() in _FORBIDDEN_FUNCTIONS:
                raise SqlRefused(f"function {parts[-1]} is not allowed (it reaches outside the query)")
            if len(parts) > 1 and [p.lower() for p in parts[:-1]] not in (["builtin"], ["system", "builtin"]):
                raise SqlRefused(f"function {'.'.join(parts)} is not allowed: call built-in functions by bare name")
    known = {t.lower() for t in tables | ctes}  # Spark resolves names case-insensitively
    for parts in relations:
        if len(parts) != 1 or parts[0].lower() not in known:
            shown = ".".join(parts)
            raise SqlRefused(f"{shown} is not a lake table: name one of {', '.join(sorted(tables)) or '(none yet)'} "
                             "by its bare name (paths and other catalogs are not allowed)")


def _leaf_signature(leaf: Any) -> str | None:
    """What a scan reads: a file relation's root paths, or a catalog table's name; None when unknown."""
    try:
        return "files:" + ",".join(sorted(str(p) for p in _seq(leaf.relation().location().rootPaths())))
    except Exception:  # noqa: BLE001 - py4j raises a generic error for a missing method
        pass
    try:
        return "table:" + str(leaf.table().name())
    except Exception:  # noqa: BLE001
        return None


def _leaves(plan: Any) -> Iterator[Any]:
    return (node for node in _plan_nodes(plan) if node.children().isEmpty())


def check_analyzed(df: DataFrame, allowed: set[str]) -> None:
    """Refuse an analyzed plan that reads anything but the scans in `allowed` or calls a UDF/reflection."""
    plan = df._jdf.queryExecution().analyzed()
    for leaf in _leaves(plan):
        name = _simple_name(leaf)
        if name not in _DATALESS_LEAVES and _leaf_signature(leaf) not in allowed:
            raise SqlRefused(f"the query reads something other than the lake tables ({name})")
    for node in _plan_nodes(plan):
        for expr in _expressions(node):
            name = _simple_name(expr)
            if any(marker in name for marker in ("Reflect", "UDF", "UDAF", "UDTF")):
                raise SqlRefused(f"the query calls {name}, which is not allowed")


@contextmanager
def _quiet_query_errors() -> Iterator[None]:
    """PySpark logs every SQL error with its JVM stack trace to stderr; the refusal says it in one line."""
    logger = PySparkLogger.getLogger("SQLQueryContextLogger")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def read_only_session(spark: SparkSession, lake: Lake) -> tuple[SparkSession, list[str], set[str]]:
    """A session of its own (temp views and settings do not leak into the caller's) with the lake's
    tables registered and SQL on files off; returns it, the table names and their scans' signatures."""
    session = spark.newSession()
    session.conf.set("spark.sql.runSQLOnFiles", "false")
    tables = lake.register_views(session)
    allowed = {sig for t in tables for leaf in _leaves(session.table(t)._jdf.queryExecution().analyzed())
               if (sig := _leaf_signature(leaf)) is not None}
    return session, tables, allowed


def read_only_query(spark: SparkSession, lake: Lake, query: str) -> DataFrame:
    """`query` as a DataFrame over the lake's tables, after every check; raises SqlRefused. The
    statements that describe the lake (SHOW TABLES, DESCRIBE, EXPLAIN, ...) are answered by
    nextplay/sql/describe.py, never run as Spark commands."""
    session, tables, allowed = read_only_session(spark, lake)
    with _quiet_query_errors():
        try:
            plan = session._jsparkSession.sessionState().sqlParser().parsePlan(query)
        except PySparkException as e:  # Spark's ParseException
            raise SqlRefused(_first_line(str(e))) from None
        if describe.answers(plan):
            try:
                return describe.answer(session, lake, query, plan, tables, lambda inner: check_parsed(inner, tables))
            except describe.Refused as e:
                raise SqlRefused(str(e)) from None
            except PySparkException as e:
                raise SqlRefused(_first_line(str(e))) from None
        check_parsed(plan, tables)
        try:
            df = session.sql(query)  # a query plan only: analysed here, nothing runs until it is read
        except PySparkException as e:
            raise SqlRefused(_first_line(str(e))) from None
    check_analyzed(df, allowed)
    return df


def run_sql(cfg: Config, query: str, fmt: str = "table", limit: int = 1000) -> None:
    """Run the read-only `query` with every existing lake table registered; print up to `limit` rows
    as a table, or every row as a JSON array (`fmt="json"`). Raises SqlRefused for anything else."""
    df = read_only_query(get_spark(cfg), Lake(cfg.lake), query)
    if fmt == "json":
        write_json_array(json_lines(df), sys.stdout)
    else:
        df.show(n=limit, truncate=False)
    sys.stdout.flush()
