"""Readers: every supported input format, turned into the RAW_PLAYS shape (all strings, as received).

Readers never judge a value: they only split records into fields, keep the record as received in
`_raw`, and set `_parse_error` when a record cannot even be split (broken JSON, a wrong number of
columns). Judging happens once, in `validate`, so every format gets the same rules and reasons.

Text formats are read line by line: a line is a record (CSV fields with embedded line breaks are
not supported). Blank lines and header lines are not records and are not counted.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from nextplay.tables import RAW_PLAYS

FORMATS = ("json", "csv", "parquet", "lastfm", "lfm1b", "yoochoose", "diginetica")
FIELDS = ("user_id", "track_id", "ts", "ms_played", "event_id")  # the generic formats' column names
_COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst")
_CSV_WIDTH = 64  # columns a CSV line is split into; the named columns must lie within the first 64


@dataclass(frozen=True, order=True)
class InputFile:
    path: str
    size: int
    modified: str


def list_input(spark: SparkSession, path: str) -> list[InputFile]:
    """The files Spark will read for `path` (a file, folder or glob), or a plain error.

    Listed through Spark's own file index (the binaryFile source, content not read) so that globs,
    hidden-file rules and every Hadoop file system behave exactly as in the read that follows.
    """
    try:
        rows = (spark.read.format("binaryFile").load(path)
                .select("path", "length", F.col("modificationTime").cast("string")).collect())
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e) or "does not exist" in str(e):
            raise FileNotFoundError(f"ingest.input: {path} does not exist") from None
        raise
    files = sorted(InputFile(r[0], r[1], r[2]) for r in rows)
    if not files or all(f.size == 0 for f in files):
        raise ValueError(f"ingest.input: {path} is empty (no files with data)")
    return files


def batch_id_for(path: str, files: list[InputFile]) -> str:
    """Same files (names, sizes, modification times) -> same batch id, so a plain re-run is a no-op."""
    digest = hashlib.sha256(path.encode())
    for f in files:
        digest.update(f"\n{f.path}\t{f.size}\t{f.modified}".encode())
    return "auto-" + digest.hexdigest()[:16]


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def detect_format(spark: SparkSession, files: list[InputFile]) -> str:
    """Guess the format from the first file's extension, else from its first line."""
    stem = _stem(files[0].path)
    if stem.endswith(".parquet"):
        return "parquet"
    if stem.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    first = next((r.value for r in spark.read.text(files[0].path).limit(20).collect() if r.value.strip()), "")
    line = first.lstrip("\ufeff").strip()
    head = line.lower()
    tabs = line.split("\t")
    if line.startswith("{"):
        return "json"
    if head.startswith("session_id;user_id;item_id"):
        return "diginetica"
    if head.replace(" ", "").startswith("sessionid\titemid\ttime"):
        return "yoochoose"
    if len(tabs) == 6 and tabs[1][:4].isdigit() and "-" in tabs[1]:
        return "lastfm"
    if len(tabs) == 5 and tabs[4].strip().isdigit():
        return "lfm1b"
    if "user_id" in head and "track_id" in head and "," in head:
        return "csv"
    raise ValueError(f"ingest.format: cannot tell the format of {files[0].path} from its name or first line "
                     f"({line[:60]!r}); pass --format, one of {', '.join(FORMATS)}")


def _lines(spark: SparkSession, path: str) -> DataFrame:
    """Non-blank lines with their file; a BOM and a trailing CR (Windows files) are not data."""
    value = F.regexp_replace(F.regexp_replace("value", "^\ufeff", ""), "\r$", "")
    return (spark.read.text(path)
            .select(value.alias("value"), F.col("_metadata.file_path").alias("_source_file"),
                    F.col("_metadata.file_block_start").alias("_block"),
                    F.monotonically_increasing_id().alias("_line"))
            .where(F.trim("value") != ""))


def _shape(df: DataFrame, user: Column, track: Column, ts: Column, ms: Column | None = None,
           event_id: Column | None = None, raw: str = "value", error: Column | None = None) -> DataFrame:
    none = F.lit(None).cast("string")
    cols = [user, track, ts, none if ms is None else ms, none if event_id is None else event_id, F.col(raw),
            F.col("_source_file"), none if error is None else error]
    return df.select(*[c.cast("string").alias(f.name) for c, f in zip(cols, RAW_PLAYS.fields)])


def _read_json(spark: SparkSession, path: str) -> DataFrame:
    schema = ", ".join(f"{name} string" for name in FIELDS) + ", _corrupt string"
    parsed = _lines(spark, path).select(
        "value", "_source_file", F.from_json("value", schema, {"columnNameOfCorruptRecord": "_corrupt"}).alias("j"))
    error = F.when(F.col("j._corrupt").isNotNull(), F.lit("malformed line: not a JSON object"))
    return _shape(parsed, *[F.col(f"j.{name}") for name in FIELDS], error=error)


def _read_csv(spark: SparkSession, path: str) -> DataFrame:
    """Comma-separated with a header line per file; columns are found by name in each file's own header,
    so files with columns in another order, extra or missing columns are all read correctly."""
    lines = _lines(spark, path)
    width = ", ".join(f"c{i} string" for i in range(_CSV_WIDTH))
    rfc4180 = {"escape": '"'}  # a quote inside a quoted field is doubled, as every CSV writer does it
    split = lambda c: F.array(*[F.col(f"{c}.c{i}") for i in range(_CSV_WIDTH)])  # noqa: E731
    # A file's header is its first line: the lowest line id in the split that starts the file.
    headers = (lines.where(F.col("_block") == 0).groupBy("_source_file")
               .agg(F.min_by("value", "_line").alias("header"), F.min("_line").alias("_header_line"))
               .select("_source_file", "_header_line", F.from_csv("header", width, rfc4180).alias("h"))
               .select("_source_file", "_header_line",
                       F.transform(split("h"), lambda x: F.lower(F.trim(x))).alias("names")))
    data = (lines.join(F.broadcast(headers), "_source_file", "left")
            .where(F.col("_header_line").isNull() | (F.col("_line") != F.col("_header_line")))
            .select("value", "_source_file", "names", F.from_csv("value", width, rfc4180).alias("p")))
    data = data.select("value", "_source_file", "names", split("p").alias("fields"))

    def field(name: str) -> Column:
        pos = F.array_position("names", name)
        return F.when(pos > 0, F.element_at("fields", pos.cast("int")))

    return _shape(data, *[field(name) for name in FIELDS])


def _read_parquet(spark: SparkSession, path: str) -> DataFrame:
    """Columns matched by name, case-insensitively; any type is kept as its string form for validation.
    Files may add or lack columns, but one column must have one type across the batch."""
    # pandas writes nanosecond timestamps, which Spark refuses unless it reads them as numbers
    # (nanoseconds since the epoch; validation tells them apart by magnitude).
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        df = spark.read.option("mergeSchema", "true").parquet(path)
    except (AnalysisException, Py4JJavaError) as e:  # type clashes surface as a plain SparkException
        why = e.java_exception.getMessage() if isinstance(e, Py4JJavaError) else str(e)
        raise ValueError(f"ingest.input: cannot read the Parquet files under {path} as one batch "
                         f"({why.splitlines()[0][:200]}); ingest files with different column types separately") from None
    by_lower = {c.lower(): c for c in df.columns}
    raw = F.to_json(F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in df.columns]))
    df = df.select("*", F.col("_metadata.file_path").alias("_source_file"), raw.alias("_record"))

    def field(name: str) -> Column:
        return F.col(f"`{by_lower[name]}`") if name in by_lower else F.lit(None)

    return _shape(df, *[field(name) for name in FIELDS], raw="_record")


def _split_lines(spark: SparkSession, path: str, sep: str, expected: int, header: str | None, what: str) -> DataFrame:
    """Lines split on `sep`, with a parse error when a line has the wrong number of fields."""
    lines = _lines(spark, path)
    if header is not None:  # header lines (one per file) are not records; a data line never equals one
        lines = lines.where(F.lower(F.trim("value")) != header)
    lines = lines.select("value", "_source_file", F.split("value", sep, -1).alias("f"))
    n = F.size("f")
    error = F.when(n != expected, F.format_string(f"malformed line: expected {expected} {what} fields, got %d", n))
    return lines.select("*", error.alias("_error"))


def _f(i: int) -> Column:
    return F.try_element_at("f", F.lit(i + 1))


def _read_lastfm(spark: SparkSession, path: str) -> DataFrame:
    """Last.fm 1K: userid, timestamp, artist id, artist name, track id, track name. Many plays carry no
    MusicBrainz track id: those are identified by "artist name - track name" instead."""
    df = _split_lines(spark, path, "\t", 6, None, "tab-separated")
    by_name = F.when((F.trim(_f(3)) != "") & (F.trim(_f(5)) != ""), F.concat_ws(" - ", F.trim(_f(3)), F.trim(_f(5))))
    track = F.coalesce(F.nullif(F.trim(_f(4)), F.lit("")), by_name)
    return _shape(df, _f(0), track, _f(1), error=F.col("_error"))


def _read_lfm1b(spark: SparkSession, path: str) -> DataFrame:
    """LFM-1b listening events: user, artist, album, track, unix timestamp (no header)."""
    df = _split_lines(spark, path, "\t", 5, None, "tab-separated")
    return _shape(df, _f(0), _f(3), _f(4), error=F.col("_error"))


def _read_yoochoose(spark: SparkSession, path: str) -> DataFrame:
    """YooChoose clicks: SessionId, ItemId, Time (epoch seconds); each session stands for a listener."""
    df = _split_lines(spark, path, "\t", 3, "sessionid\titemid\ttime", "tab-separated")
    return _shape(df, _f(0), _f(1), _f(2), error=F.col("_error"))


def _read_diginetica(spark: SparkSession, path: str) -> DataFrame:
    """Diginetica views: session_id;user_id;item_id;timeframe;eventdate. Anonymous views (user NA) belong
    to "session-<session_id>", kept apart from the numeric user ids. The time is the event date plus
    `timeframe` milliseconds; when either part is unreadable both are passed on for the reason."""
    df = _split_lines(spark, path, ";", 5, "session_id;user_id;item_id;timeframe;eventdate", "semicolon-separated")
    user = F.trim(_f(1))
    user = F.when(user.isNull() | (user == "") | (F.upper(user) == "NA"), F.concat(F.lit("session-"), F.trim(_f(0)))
                  ).otherwise(user)
    day = F.try_to_timestamp(F.trim(_f(4)), F.lit("yyyy-MM-dd"))
    offset = F.trim(_f(3)).try_cast("bigint")
    millis = F.when(day.isNotNull() & offset.isNotNull(), (F.unix_millis(day) + offset).cast("string"))
    ts = F.coalesce(millis, F.concat_ws(" + ", _f(4), F.concat(_f(3), F.lit(" ms"))))
    return _shape(df, user, _f(2), ts, error=F.col("_error"))


_READERS = {
    "json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "lastfm": _read_lastfm,
    "lfm1b": _read_lfm1b, "yoochoose": _read_yoochoose, "diginetica": _read_diginetica,
}


def read_raw(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """`path` in format `fmt` as RAW_PLAYS rows (lazy: nothing is read until an action)."""
    if fmt not in _READERS:
        raise ValueError(f"ingest.format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
    return _READERS[fmt](spark, path)
