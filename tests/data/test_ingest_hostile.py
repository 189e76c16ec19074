"""Hypothesis: batches of good and broken plays in every input format go through the real ingest.

Each generated field carries its own verdict (would validation accept it?), so the test knows which
rows must reach silver and which must be quarantined: bad timestamps, future and ancient times,
missing, blank, over-long and mis-encoded ids, negative or non-numeric ms_played, wrong JSON types,
cut-short lines, wrong field counts, extra and missing columns, huge fields, repeated events.
Few examples per format: every example is a full ingest into Delta.
"""
from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextplay.data.ingest import ingest

pytestmark = pytest.mark.slow

BAD_BYTE = "\udcff"  # written as the raw byte 0xFF (surrogateescape): invalid UTF-8 on disk
BASE = datetime(2021, 6, 1, tzinfo=timezone.utc)
MAX_ID = 256  # ingest.max_id_length's default


@dataclass
class Value:
    """A field as the source writes it (None: absent) and whether validation should accept it."""

    text: str | None
    ok: bool
    typed: object = None  # what a JSON or Parquet writer puts there instead of `text`, when set


@dataclass
class Play:
    user: Value
    track: Value
    ts: Value
    ms: Value
    event_id: str | None
    key: object  # what silver de-duplicates on
    broken: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return not self.broken and all(v.ok for v in (self.user, self.track, self.ts, self.ms))


def _alphabet(exclude: str) -> st.SearchStrategy[str]:
    """Printable text of any script; no whitespace, controls or format characters, nor `exclude`.

    Nor U+FFFD: readers decode bytes that are not UTF-8 to it, so ingest quarantines any id holding
    it as undecodable (data/validate.py); the bad-bytes case below covers it."""
    chars = st.characters(exclude_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"),
                          exclude_characters=exclude + "\ufffd")
    return st.text(chars, min_size=1, max_size=12)


def ids(prefix: str, exclude: str, bytes_ok: bool = True) -> st.SearchStrategy[Value]:
    good = _alphabet(exclude).map(lambda s: Value(prefix + s, True))
    padded = _alphabet(exclude).map(lambda s: Value(f"  {prefix}{s} ", True))  # trimmed
    bad = st.sampled_from([Value(None, False), Value("", False), Value("   ", False)])
    huge = st.integers(MAX_ID + 1, 5000).map(lambda n: Value(prefix + "x" * n, False))
    choices = [good, good, good, padded, bad, huge]
    if bytes_ok:
        choices.append(st.just(Value(prefix + "a" + BAD_BYTE + "b", False)))
    return st.one_of(*choices)


def timestamps(k: int, numbers_typed: bool, bytes_ok: bool = True) -> st.SearchStrategy[Value]:
    """Play k's time in one of the accepted spellings, or a bad one. Instants differ per k."""
    when = BASE + timedelta(minutes=k)
    epoch = int(when.timestamp())
    good = [
        Value(when.strftime("%Y-%m-%dT%H:%M:%SZ"), True),
        Value((when + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"), True),
        Value(when.strftime("%Y-%m-%d %H:%M:%S.000"), True),
        Value(str(epoch), True, epoch if numbers_typed else None),
        Value(str(epoch * 1000), True, epoch * 1000 if numbers_typed else None),
        Value(f"{epoch}.25", True),
    ]
    bad = [Value(t, False) for t in ("yesterday", "2024-13-45T25:61:00Z", "12:00", "n/a", "9" * 40,
                                     "2031-06-01T00:00:00Z", "1999-12-31T23:59:59Z", "")]
    bad.append(Value(None, False))
    if bytes_ok:  # Parquet strings are UTF-8 by definition: no raw bytes there
        bad.append(Value("2021-06-01T00:0" + BAD_BYTE, False))
    if numbers_typed:
        bad.append(Value("true", False, True))
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


def ms_played(typed: bool) -> st.SearchStrategy[Value]:
    good = [Value(None, True), Value("", True), Value("0", True), Value("183000", True), Value("12.5", True),
            Value(" 7 ", True)]
    bad = [Value("-5", False), Value("abc", False), Value("1e400", False)]
    if typed:
        good.append(Value("42", True, 42))
        bad.append(Value("[1]", False, [1]))
    return st.sampled_from(good + good + bad)


@st.composite
def batches(draw, fmt: str) -> list[Play]:
    exclude = {"json": "", "csv": "", "parquet": "", "diginetica": ";"}.get(fmt, "")
    typed = fmt == "json"
    n = draw(st.integers(1, 25))
    plays: list[Play] = []
    for k in range(n):
        if plays and draw(st.integers(0, 9)) == 0:  # the same event again
            plays.append(draw(st.sampled_from(plays)))
            continue
        user = draw(ids("u", exclude, bytes_ok=fmt != "parquet"))
        track = draw(ids("t", exclude, bytes_ok=fmt != "parquet"))
        ts = draw(timestamps(k, typed, bytes_ok=fmt != "parquet"))
        ms = draw(ms_played(typed)) if fmt in ("json", "csv", "parquet") else Value(None, True)
        event_id = draw(st.sampled_from([None, f"e{k}"])) if fmt in ("json", "csv", "parquet") else None
        key = event_id or (user.text and user.text.strip(" "), track.text and track.text.strip(" "), k)
        extra = {"note": "x" * draw(st.sampled_from([1, 100_000]))} if draw(st.booleans()) else {}
        broken = fmt not in ("csv", "parquet") and draw(st.integers(0, 7)) == 0
        plays.append(Play(user, track, ts, ms, event_id, key, broken, extra))
    return plays


def _json(plays: list[Play]) -> list[str]:
    lines = []
    for p in plays:
        record = {name: (v.typed if v.typed is not None else v.text) for name, v in
                  (("user_id", p.user), ("track_id", p.track), ("ts", p.ts), ("ms_played", p.ms)) if v.text is not None}
        record.update({"event_id": p.event_id} if p.event_id else {}, **p.extra)
        line = json.dumps(record, ensure_ascii=False)
        lines.append(line[: len(line) // 2] if p.broken else line)
    return lines


def _csv(plays: list[Play], header: list[str]) -> list[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for p in plays:
        values = {"user_id": p.user.text, "track_id": p.track.text, "ts": p.ts.text, "ms_played": p.ms.text,
                  "event_id": p.event_id, "note": p.extra.get("note")}
        writer.writerow(["" if values.get(c) is None else values[c] for c in header])
    return out.getvalue().splitlines()


def _tsv(plays: list[Play], fmt: str) -> list[str]:
    lines = {"yoochoose": ["SessionId\tItemId\tTime"], "diginetica": ["session_id;user_id;item_id;timeframe;eventdate"]}.get(fmt, [])
    for p in plays:
        u, t, ts = (v.text or "" for v in (p.user, p.track, p.ts))
        fields = {"lastfm": [u, ts, "artist-id", "An Artist", t, "A Track"], "lfm1b": [u, "1", "2", t, ts],
                  "yoochoose": [u, t, ts]}.get(fmt)
        sep = ";" if fmt == "diginetica" else "\t"
        if fmt == "diginetica":  # the session stands in for the user; time = date + milliseconds
            fields = ["1", u, t, ts, "2021-06-01"]
        lines.append(sep.join(fields[:-1] if p.broken else fields))
    return lines


def _prepare(plays: list[Play], fmt: str) -> list[Play]:
    """Adjust verdicts where a format changes what a field means, so the oracle stays exact."""
    for p in plays:
        if fmt == "lastfm" and (p.track.text or "").strip(" ") == "":
            p.track = Value(p.track.text, True)  # an empty track id falls back to "artist - name"
        if fmt == "diginetica":
            if p.user.text is None or p.user.text.strip(" ") in ("", "NA"):
                p.user = Value(p.user.text, True)  # anonymous: the session id is the user
            minutes = int(p.key[2]) if isinstance(p.key, tuple) else 0
            p.ts = Value(str(minutes * 60_000), True) if p.ts.ok else Value("soon", False)
            p.key = (p.key[0] if p.user.ok and p.user.text and p.user.text.strip(" ") not in ("", "NA") else "s1",
                     p.key[1], p.key[2])
    return plays


def _write(plays: list[Play], fmt: str, folder: Path, header: list[str]) -> Path:
    folder.mkdir(parents=True)
    if fmt == "parquet":
        cols = {"user_id": [p.user.text for p in plays], "track_id": [p.track.text for p in plays],
                "ts": [p.ts.text for p in plays], "ms_played": [p.ms.text for p in plays],
                "event_id": [p.event_id for p in plays], "note": [p.extra.get("note") for p in plays]}
        pd.DataFrame({c: cols[c] for c in header}).astype("string").to_parquet(folder / "plays.parquet")
        return folder
    lines = _json(plays) if fmt == "json" else _csv(plays, header) if fmt == "csv" else _tsv(plays, fmt)
    name = {"json": "plays.json", "csv": "plays.csv"}.get(fmt, "plays.txt")
    (folder / name).write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return folder


FORMATS = ["json", "csv", "parquet", "lastfm", "lfm1b", "yoochoose", "diginetica"]
COLUMNS = ["user_id", "track_id", "ts", "ms_played", "event_id", "note"]


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_batches_are_fully_accounted_for(spark, cfg, tmp_path, fmt, data):
    plays = data.draw(batches(fmt))
    header = COLUMNS
    if fmt in ("csv", "parquet"):  # columns in any order; optional ones may be absent
        header = data.draw(st.permutations(COLUMNS))
        header = [c for c in header if c in ("user_id", "track_id", "ts") or data.draw(st.booleans())]
        for p in plays:
            if "ms_played" not in header:
                p.ms = Value(None, True)
            if "event_id" not in header and p.event_id:
                p.event_id, p.key = None, (p.user.text and p.user.text.strip(" "), p.track.text and p.track.text.strip(" "), p.ts.text)
    plays = _prepare(plays, fmt)
    example = tmp_path / uuid.uuid4().hex  # a lake per example: replays while shrinking must not meet earlier rows
    folder = _write(plays, fmt, example / "input", header)

    cfg.lake.root, cfg.ingest.input, cfg.ingest.format = str(example / "lake"), str(folder), fmt
    counts = ingest(spark, cfg)

    good = [p for p in plays if p.good]
    expected = (len(plays), len(plays) - len(good), len({p.key for p in good}))
    assert (counts["rows_in"], counts["rows_quarantined"], counts["rows_silver"]) == expected, plays
    assert counts["rows_in"] == counts["rows_silver"] + counts["rows_quarantined"] + counts["duplicates_removed"]
