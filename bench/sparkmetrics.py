"""Bytes a Spark run read and shuffled, from Spark's own monitoring REST API.

The scaling projection (docs/scaling.md) needs bytes shuffled per event, which no wall-clock timing
shows. Runs are tagged with a job group; afterwards the group's stages are summed. Spark's UI
records jobs asynchronously, so the sums are read only once every job of the group has finished.
"""
from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any, Callable

from bench.measure import seconds


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
        return json.load(response)


def measured(spark, fn: Callable[[], object]) -> dict[str, float]:
    """Run `fn` and return its seconds plus the input and shuffle-write bytes of the jobs it ran
    (zeros when the Spark UI is disabled)."""
    sc = spark.sparkContext
    group = f"bench-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, group)
    try:
        took = seconds(fn)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    out = {"seconds": took, "input_bytes": 0.0, "shuffle_write_bytes": 0.0}
    if not sc.uiWebUrl:
        return out
    base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    for _ in range(50):
        jobs = [j for j in _get(base, "/jobs") if j.get("jobGroup") == group]
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs):
            break
        time.sleep(0.2)
    for stage_id in {s for j in jobs for s in j["stageIds"]}:
        try:
            attempts = _get(base, f"/stages/{stage_id}")
        except OSError:  # skipped stages (reused shuffle output) have no record
            continue
        for attempt in attempts:
            out["input_bytes"] += attempt.get("inputBytes", 0)
            out["shuffle_write_bytes"] += attempt.get("shuffleWriteBytes", 0)
    return out
