"""One set of rules for every input format: typed values, and a reason a person can act on when a row
cannot go to silver. Pure Spark SQL expressions (no Python UDF): they run inside the JVM at full speed.

Timestamps: ISO-8601 with or without an offset (no offset means UTC), 'T' or a space, optional
fractions, always with a full date; or a number since the epoch, with fractions and exponents,
whose magnitude tells the unit: below 1e11 seconds (until the year 5138), below 1e14 milliseconds,
below 1e17 microseconds, above that nanoseconds (all of them after 1973).
"""
from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from nextplay.config import IngestConfig

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# A full calendar date first: Spark alone would also take "12:00" (today at noon, a moving target).
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}([T ]|$)"
_UNITS = ((1e11, 1), (1e14, 1_000), (1e17, 1_000_000))  # |epoch| below the bound: divide by this for seconds
_NANOS = 1_000_000_000
_YEAR_10000 = 253_402_300_800  # epoch seconds; later (or as early before 1970) is garbage, not a time
_SHOWN = 40  # characters of a bad value quoted in a reason
_ISO = "yyyy-MM-dd'T'HH:mm:ss'Z'"


def parse_timestamp(text: Column) -> Column:
    """A timestamp, or null when `text` is not one (no exception: ANSI-safe `try_` functions only)."""
    t = F.trim(text)
    number = t.try_cast("decimal(38, 6)")
    seconds = F.try_divide(number, F.lit(_NANOS))
    for bound, per_second in reversed(_UNITS):
        seconds = F.when(F.abs(number) < bound, F.try_divide(number, F.lit(per_second))).otherwise(seconds)
    micros = F.when(F.abs(seconds) < _YEAR_10000, F.try_multiply(seconds, F.lit(1_000_000)).try_cast("long"))
    return F.when(t.rlike(_NUMBER), F.timestamp_micros(micros)).when(t.rlike(_ISO_DATE), F.try_to_timestamp(t))


def _shown(value: Column) -> Column:
    """The first `_SHOWN` characters of a bad value, with an ellipsis when there are more."""
    return F.concat(F.substring(value, 1, _SHOWN), F.when(F.length(value) > _SHOWN, F.lit("...")).otherwise(F.lit("")))


def _quoted(value: Column) -> Column:
    return F.concat(F.lit("'"), _shown(value), F.lit("'"))


def play_id(event_id: Column, user: Column, track: Column, ts: Column) -> Column:
    """A play's identity as one value (tables.PLAY_IDENTITY hashed): its event id AND who played what
    when. Sources share the event id namespace and producers reset counters, so two plays that only
    share an event id are two plays. Apply it to silver's columns to find a bronze row's silver twin."""
    return F.sha2(F.concat_ws("\u001f", event_id, user, track, F.unix_micros(ts).cast("string")), 256)


def _not_scalar(name: str) -> Column:
    """True when the reader found a structure (object, array, boolean) in id field `name`."""
    return F.array_contains(F.split(F.coalesce(F.col("_non_scalar_ids"), F.lit("")), ","), name)


def _id_problem(name: str, value: Column, max_len: int) -> Column:
    """Why `value` cannot be id `name`, or null. A JSON object or array is not an id even though its text
    would pass every other rule: `{"a": 1}` as a user would be a user nobody ever is."""
    return (F.when(_not_scalar(name), F.concat(F.lit(f"{name}: not a string or number ("), _shown(value), F.lit(")")))
            .when(value.isNull() | (value == ""), F.lit(f"{name}: missing"))
            .when(F.length(value) > max_len, F.format_string(f"{name}: longer than {max_len} characters (%d)", F.length(value)))
            .when(value.contains("\ufffd"), F.concat(F.lit(f"{name}: not valid UTF-8 text "), _quoted(value))))


def validate(raw: DataFrame, cfg: IngestConfig, now: datetime) -> DataFrame:
    """RAW_PLAYS rows plus `play`, a struct shaped like a silver row plus its `play_id`, and `reason`
    (null when the row is good). `now` is the batch's ingest time: rows later than it by more than
    `max_future_minutes` are clock errors, not plays."""
    user = F.trim("user_id")
    track = F.trim("track_id")
    ts_text = F.trim("ts_raw")
    ts = parse_timestamp(F.col("ts_raw"))
    ms_text = F.trim("ms_played_raw")
    ms_number = ms_text.try_cast("decimal(38, 3)")
    ms = ms_number.try_cast("bigint")
    given_id = F.nullif(F.trim("event_id"), F.lit(""))
    earliest = datetime.fromisoformat(cfg.earliest_ts.replace("Z", "+00:00"))
    earliest = earliest if earliest.tzinfo else earliest.replace(tzinfo=timezone.utc)
    latest = F.lit(now) + F.expr(f"INTERVAL {cfg.max_future_minutes} MINUTES")

    ts_problem = (
        F.when(ts_text.isNull() | (ts_text == ""), F.lit("ts: missing"))
        .when(ts.isNull(), F.concat(F.lit("ts: unparseable "), _quoted(ts_text)))
        .when(ts > latest, F.concat(F.lit("ts: in the future ("), F.date_format(ts, _ISO), F.lit(")")))
        .when(ts < F.lit(earliest), F.concat(F.lit(f"ts: before {cfg.earliest_ts} ("), F.date_format(ts, _ISO), F.lit(")")))
    )
    ms_problem = (
        F.when(ms_text.isNull() | (ms_text == ""), F.lit(None))
        .when(ms_number.isNull(), F.concat(F.lit("ms_played: not a number "), _quoted(ms_text)))
        .when(ms_number < 0, F.concat(F.lit("ms_played: negative ("), ms_text, F.lit(")")))
        .when(ms.isNull(), F.concat(F.lit("ms_played: out of range "), _quoted(ms_text)))
    )
    problems = F.concat_ws("; ", _id_problem("user_id", user, cfg.max_id_length),
                           _id_problem("track_id", track, cfg.max_id_length), ts_problem, ms_problem,
                           F.when(_not_scalar("event_id"), F.concat(
                               F.lit("event_id: not a string or number ("), _shown(given_id), F.lit(")")))
                           .when(F.length(given_id) > cfg.max_id_length,
                                 F.lit(f"event_id: longer than {cfg.max_id_length} characters")))
    reason = F.coalesce(F.col("_parse_error"), F.nullif(problems, F.lit("")))
    # Sources without ids get a stable one: the same play always hashes the same, whatever its format.
    derived_id = F.sha2(F.concat_ws("\u001f", user, track, F.unix_micros(ts).cast("string")), 256)
    event_id = F.coalesce(given_id, derived_id)
    play = F.struct(
        event_id.alias("event_id"), user.alias("user_id"), track.alias("track_id"),
        ts.alias("ts"), ms.alias("ms_played"), F.to_date(ts).alias("event_date"),
        play_id(event_id, user, track, ts).alias("play_id"),
    )
    return raw.select("*", play.alias("play"), reason.alias("reason"))
