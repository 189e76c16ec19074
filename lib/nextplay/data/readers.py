"""Readers: every supported input format, turned into the RAW_PLAYS shape (all strings, as received).

Readers never judge a value: they only split records into fields, keep the record as received in
`_raw`, and set `_parse_error` when a record cannot even be split (broken JSON, a CSV line whose field
count is not its header's, a wrong number of columns, a Parquet file that cannot be read). Judging
happens once, in `validate`, so every format gets the same rules and reasons.

Readers read exactly the files they are given (the listing that defines a batch), never a glob of
their own: a file landing after the listing is left for the next batch. With format `auto` each file
is read by the reader of its own format, so one folder may hold JSON lines, CSV and Parquet together.

Text formats are read line by line: a line is a record (CSV fields with embedded line breaks are
not supported). Blank lines and header lines are not records and are not counted.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import reduce
from typing import Sequence

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from nextplay.tables import RAW_PLAYS

FORMATS = ("json", "csv", "parquet", "lastfm", "lfm1b", "yoochoose", "diginetica")
FIELDS = ("user_id", "track_id", "ts", "ms_played", "event_id")  # the generic formats' column names
IDS = ("user_id", "track_id", "event_id")  # fields that must be a string or a number
_COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst")
_CSV_WIDTH = 64  # columns a CSV line is split into; the named columns must lie within the first 64
_HEAD_BYTES = 65_536  # bytes read from a file's start to tell its format
_GLOB = re.compile(r"([\\*?\[\]{}])")


@dataclass(frozen=True, order=True)
class InputFile:
    """One input file as a batch records it; equal files are the same content."""

    path: str  # fully qualified (scheme and authority) by Hadoop: one spelling per file
    size: int
    modified: int  # epoch milliseconds


def list_input(spark: SparkSession, path: str) -> list[InputFile]:
    """The files under `path` (a file, folder or glob), fully qualified, or a plain error.

    Listed through Spark's own file index (the binaryFile source, content not read) so that globs,
    hidden-file rules and every Hadoop file system behave as in a read; the paths it gives are
    qualified, so `x`, `./x/`, `file:/abs/x` and `x/*` list the same files under the same names.
    """
    try:
        rows = (spark.read.format("binaryFile").load(path)
                .select("path", "length", F.unix_millis("modificationTime")).collect())
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e) or "does not exist" in str(e):
            raise FileNotFoundError(f"ingest.input: {path} does not exist") from None
        raise
    files = sorted(InputFile(r[0], int(r[1]), int(r[2])) for r in rows)
    if not files or all(f.size == 0 for f in files):
        raise ValueError(f"ingest.input: {path} is empty (no files with data)")
    return files


def batch_id_for(files: Sequence[InputFile]) -> str:
    """Same files (paths, sizes, modification times) -> same batch id, however the input was spelled."""
    return "auto-" + files_digest(files)


def files_digest(files: Sequence[InputFile]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f"{f.path}\t{f.size}\t{f.modified}\n".encode())
    return digest.hexdigest()[:16]


def _literal(path: str) -> str:
    """`path` with glob characters escaped: a file named `a[1].json` is that file, not a pattern."""
    return _GLOB.sub(r"\\\1", path)


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _head(spark: SparkSession, path: str) -> str:
    """The first bytes of a file (decompressed by its codec), as text; read on the driver through the
    file's Hadoop file system, so telling formats apart costs no Spark job."""
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    stream = hpath.getFileSystem(conf).open(hpath)
    try:
        codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
        reader = stream if codec is None else codec.createInputStream(stream)
        data = bytes(reader.readNBytes(_HEAD_BYTES))
    finally:
        stream.close()
    return data.decode("utf-8", errors="replace")


def sniff(spark: SparkSession, path: str) -> tuple[str | None, str]:
    """(format or None, the first line): from the file's extension, else from its first line."""
    stem = _stem(path)
    if stem.endswith(".parquet"):
        return "parquet", ""
    if stem.endswith((".json", ".jsonl", ".ndjson")):
        return "json", ""
    first = next((ln for ln in _head(spark, path).splitlines()[:20] if ln.strip()), "")
    line = first.lstrip("\ufeff").strip()
    head = line.lower()
    tabs = line.split("\t")
    if line.startswith("{"):
        return "json", line
    if head.startswith("session_id;user_id;item_id"):
        return "diginetica", line
    if head.replace(" ", "").startswith("sessionid\titemid\ttime"):
        return "yoochoose", line
    if len(tabs) == 6 and tabs[1][:4].isdigit() and "-" in tabs[1]:
        return "lastfm", line
    if len(tabs) == 5 and tabs[4].strip().isdigit():
        return "lfm1b", line
    if "user_id" in head and "track_id" in head and "," in head:
        return "csv", line
    if stem.endswith(".csv") and "," in head:  # a CSV file whose header lacks a column: read, then quarantined
        return "csv", line
    return None, line


def _unknown(path: str, line: str) -> ValueError:
    return ValueError(f"ingest.format: cannot tell the format of {path} from its name or first line "
                      f"({line[:60]!r}); pass --format, one of {', '.join(FORMATS)}")


def detect_format(spark: SparkSession, files: Sequence[InputFile]) -> str:
    """The first file's format (see `sniff`), or a plain error naming the file."""
    fmt, line = sniff(spark, files[0].path)
    if fmt is None:
        raise _unknown(files[0].path, line)
    return fmt


def group_by_format(spark: SparkSession, files: Sequence[InputFile], fmt: str) -> dict[str, list[str]]:
    """Format -> the paths to read with it: every file sniffed on its own when `fmt` is auto. A file
    whose format cannot be told fails the batch (it is not recorded, so `--format` can still read it)."""
    if fmt != "auto":
        if fmt not in _READERS:
            raise ValueError(f"ingest.format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
        return {fmt: [f.path for f in files]}
    groups: dict[str, list[str]] = {}
    for f in files:
        found, line = sniff(spark, f.path)
        if found is None:
            raise _unknown(f.path, line)
        groups.setdefault(found, []).append(f.path)
    return groups


def _lines(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Non-blank lines with their file; a BOM and a trailing CR (Windows files) are not data."""
    value = F.regexp_replace(F.regexp_replace("value", "^\ufeff", ""), "\r$", "")
    return (spark.read.text([_literal(p) for p in paths])
            .select(value.alias("value"), F.col("_metadata.file_path").alias("_source_file"),
                    F.col("_metadata.file_block_start").alias("_block"),
                    F.monotonically_increasing_id().alias("_line"))
            .where(F.trim("value") != ""))


def _shape(df: DataFrame, user: Column, track: Column, ts: Column, ms: Column | None = None,
           event_id: Column | None = None, raw: str = "value", error: Column | None = None,
           non_scalar: Column | None = None) -> DataFrame:
    none = F.lit(None).cast("string")
    cols = [user, track, ts, none if ms is None else ms, none if event_id is None else event_id, F.col(raw),
            F.col("_source_file"), none if error is None else error, none if non_scalar is None else non_scalar]
    return df.select(*[c.cast("string").alias(f.name) for c, f in zip(cols, RAW_PLAYS.fields)])


def _names_where(flags: dict[str, Column]) -> Column:
    """The names whose flag is true, comma-separated; null when none is."""
    return F.nullif(F.concat_ws(",", *[F.when(flag, F.lit(name)) for name, flag in flags.items()]), F.lit(""))


def _read_json(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """One JSON object per line. Ids are parsed as variants so that an object, array or boolean where an
    id belongs is told apart from a string that merely looks like one (`"{\\"a\\": 1}"`)."""
    schema = ", ".join(f"{name} {'variant' if name in IDS else 'string'}" for name in FIELDS) + ", _corrupt string"
    parsed = _lines(spark, paths).select(
        "value", "_source_file", F.from_json("value", schema, {"columnNameOfCorruptRecord": "_corrupt"}).alias("j"))
    error = F.when(F.col("j._corrupt").isNotNull(), F.lit("malformed line: not a JSON object"))
    kind = {name: F.schema_of_variant(F.col(f"j.{name}")) for name in IDS}
    non_scalar = _names_where({name: k.startswith("OBJECT") | k.startswith("ARRAY") | (k == "BOOLEAN")
                               for name, k in kind.items()})
    return _shape(parsed, *[F.col(f"j.{name}") for name in FIELDS], error=error, non_scalar=non_scalar)


def _csv_field_count(line: Column) -> Column:
    """Fields in a CSV line: commas outside quoted fields, plus one (a quoted comma is inside one field)."""
    unquoted = F.regexp_replace(line, '"(?:[^"]|"")*"', "")
    return F.size(F.split(unquoted, ",", -1))


def _read_csv(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Comma-separated with a header line per file; columns are found by name in each file's own header,
    so files with columns in another order, extra or missing columns are all read correctly. A line
    with more or fewer fields than its file's header is malformed: its values cannot be trusted to sit
    under the right names (an unquoted `Hello, World` would shift every later field)."""
    lines = _lines(spark, paths)
    width = ", ".join(f"c{i} string" for i in range(_CSV_WIDTH))
    rfc4180 = {"escape": '"'}  # a quote inside a quoted field is doubled, as every CSV writer does it
    split = lambda c: F.array(*[F.col(f"{c}.c{i}") for i in range(_CSV_WIDTH)])  # noqa: E731
    # A file's header is its first line: the lowest line id in the split that starts the file.
    headers = (lines.where(F.col("_block") == 0).groupBy("_source_file")
               .agg(F.min_by("value", "_line").alias("header"), F.min("_line").alias("_header_line"))
               .select("_source_file", "_header_line", _csv_field_count(F.col("header")).alias("expected"),
                       F.from_csv("header", width, rfc4180).alias("h"))
               .select("_source_file", "_header_line", "expected",
                       F.transform(split("h"), lambda x: F.lower(F.trim(x))).alias("names")))
    data = (lines.join(F.broadcast(headers), "_source_file", "left")
            .where(F.col("_header_line").isNull() | (F.col("_line") != F.col("_header_line")))
            .select("value", "_source_file", "names", "expected", _csv_field_count(F.col("value")).alias("got"),
                    F.from_csv("value", width, rfc4180).alias("p")))
    data = data.select("value", "_source_file", "names", "expected", "got", split("p").alias("fields"))
    error = F.when(F.col("got") != F.col("expected"), F.format_string(
        "malformed line: expected %d fields (the header's), got %d", F.col("expected"), F.col("got")))

    def field(name: str) -> Column:
        pos = F.array_position("names", name)
        return F.when(pos > 0, F.element_at("fields", pos.cast("int")))

    return _shape(data, *[field(name) for name in FIELDS], error=error)


def _footer_schema(spark: SparkSession, path: str) -> str:
    """The Parquet schema in a file's footer, read on the driver (no Spark job); raises when unreadable."""
    jvm = spark._jvm
    hfile = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(
        jvm.org.apache.hadoop.fs.Path(path), spark._jsc.hadoopConfiguration())
    reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(hfile)
    try:
        return str(reader.getFooter().getFileMetaData().getSchema().toString())
    finally:
        reader.close()


def parquet_groups(spark: SparkSession, paths: Sequence[str]) -> tuple[list[list[str]], dict[str, str]]:
    """Paths grouped by their Parquet schema, and the unreadable files with why.

    Files of one schema are read together in one Spark read, so thousands of files cost as many reads
    as there are schemas, and a column typed differently in two files never fails the batch."""
    groups: dict[str, list[str]] = {}
    unreadable: dict[str, str] = {}
    for path in paths:
        try:
            groups.setdefault(_footer_schema(spark, path), []).append(path)
        except Py4JJavaError as e:
            why = (e.java_exception.getMessage() or type(e.java_exception).__name__).splitlines()[0]
            unreadable[path] = f"file: not a readable Parquet file ({why[:200]})"
    return list(groups.values()), unreadable


def _read_parquet_group(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Files of one schema. Columns matched by name, case-insensitively; any type is kept as its string
    form for validation; a struct, list, map or boolean where an id belongs is flagged."""
    df = spark.read.parquet(*[_literal(p) for p in paths])
    by_lower = {c.lower(): c for c in df.columns}
    raw = F.to_json(F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in df.columns]))
    df = df.select("*", F.col("_metadata.file_path").alias("_source_file"), raw.alias("_record"))
    types = {f.name: f.dataType for f in df.schema.fields}
    structured = (T.StructType, T.ArrayType, T.MapType, T.BooleanType)
    non_scalar = _names_where({name: F.col(f"`{by_lower[name]}`").isNotNull() for name in IDS
                               if name in by_lower and isinstance(types[by_lower[name]], structured)})

    def field(name: str) -> Column:
        return F.col(f"`{by_lower[name]}`") if name in by_lower else F.lit(None)

    return _shape(df, *[field(name) for name in FIELDS], raw="_record", non_scalar=non_scalar)


def _read_parquet(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Parquet files of any schemas: each schema's files read together, an unreadable file a row with a reason."""
    # pandas writes nanosecond timestamps, which Spark refuses unless it reads them as numbers
    # (nanoseconds since the epoch; validation tells them apart by magnitude).
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    groups, unreadable = parquet_groups(spark, paths)
    parts = [_read_parquet_group(spark, group) for group in groups]
    if unreadable:
        parts.append(file_rows(spark, unreadable))
    return reduce(DataFrame.unionByName, parts)


def file_rows(spark: SparkSession, reasons: dict[str, str]) -> DataFrame:
    """One RAW_PLAYS row per file that could not be read at all: the path as the record, and why."""
    rows = [(None, None, None, None, None, path, path, why, None) for path, why in sorted(reasons.items())]
    return spark.createDataFrame(rows, RAW_PLAYS)


def _split_lines(spark: SparkSession, paths: Sequence[str], sep: str, expected: int, header: str | None,
                 what: str) -> DataFrame:
    """Lines split on `sep`, with a parse error when a line has the wrong number of fields."""
    lines = _lines(spark, paths)
    if header is not None:  # header lines (one per file) are not records; a data line never equals one
        lines = lines.where(F.lower(F.trim("value")) != header)
    lines = lines.select("value", "_source_file", F.split("value", sep, -1).alias("f"))
    n = F.size("f")
    error = F.when(n != expected, F.format_string(f"malformed line: expected {expected} {what} fields, got %d", n))
    return lines.select("*", error.alias("_error"))


def _f(i: int) -> Column:
    return F.try_element_at("f", F.lit(i + 1))


def _read_lastfm(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Last.fm 1K: userid, timestamp, artist id, artist name, track id, track name. Many plays carry no
    MusicBrainz track id: those are identified by "artist name - track name" instead."""
    df = _split_lines(spark, paths, "\t", 6, None, "tab-separated")
    by_name = F.when((F.trim(_f(3)) != "") & (F.trim(_f(5)) != ""), F.concat_ws(" - ", F.trim(_f(3)), F.trim(_f(5))))
    track = F.coalesce(F.nullif(F.trim(_f(4)), F.lit("")), by_name)
    return _shape(df, _f(0), track, _f(1), error=F.col("_error"))


def _read_lfm1b(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """LFM-1b listening events: user, artist, album, track, unix timestamp (no header)."""
    df = _split_lines(spark, paths, "\t", 5, None, "tab-separated")
    return _shape(df, _f(0), _f(3), _f(4), error=F.col("_error"))


def _read_yoochoose(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """YooChoose clicks: SessionId, ItemId, Time (epoch seconds); each session stands for a listener."""
    df = _split_lines(spark, paths, "\t", 3, "sessionid\titemid\ttime", "tab-separated")
    return _shape(df, _f(0), _f(1), _f(2), error=F.col("_error"))


def _read_diginetica(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """Diginetica views: session_id;user_id;item_id;timeframe;eventdate. Anonymous views (user NA) belong
    to "session-<session_id>", kept apart from the numeric user ids. The time is the event date plus
    `timeframe` milliseconds; when either part is unreadable both are passed on for the reason."""
    df = _split_lines(spark, paths, ";", 5, "session_id;user_id;item_id;timeframe;eventdate", "semicolon-separated")
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


def read_raw(spark: SparkSession, paths: Sequence[str], fmt: str) -> DataFrame:
    """Exactly `paths`, all in format `fmt`, as RAW_PLAYS rows (lazy: nothing is read until an action)."""
    if isinstance(paths, str):  # one path would be read as its characters
        raise TypeError("read_raw takes a list of file paths (list_input gives them), not one path")
    if fmt not in _READERS:
        raise ValueError(f"ingest.format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
    return _READERS[fmt](spark, paths)


def read_input(spark: SparkSession, files: Sequence[InputFile], fmt: str) -> tuple[DataFrame, str]:
    """Exactly `files` as RAW_PLAYS rows, each read by its format's reader, and the formats read
    (comma-separated when a folder mixes them). Files without a byte are left out: nothing to read."""
    groups = group_by_format(spark, [f for f in files if f.size > 0], fmt)
    if not groups:
        raise ValueError("ingest.input: no files with data to read")
    parts = [read_raw(spark, paths, name) for name, paths in sorted(groups.items())]
    return reduce(DataFrame.unionByName, parts), ",".join(sorted(groups))
