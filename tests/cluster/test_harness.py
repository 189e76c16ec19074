"""The cluster itself: two workers that share no /tmp, and HDFS that every process reaches."""
from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PROBE = textwrap.dedent("""
    import json, os, socket, sys
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master(sys.argv[1]).config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.executor.memory", "512m").getOrCreate())
    marker = "/tmp/nextplay-cluster-probe"
    open(marker, "w").write("driver")
    def probe(i, _):
        import os
        seen = os.path.exists(marker)
        with open(marker + "-" + str(i), "w") as f:
            f.write("executor")
        yield (os.getpid(), seen, sorted(n for n in os.listdir("/tmp") if n.startswith("nextplay-cluster-probe")))
    rows = spark.sparkContext.parallelize(range(2), 2).mapPartitionsWithIndex(probe).collect()
    ids = spark.sparkContext._jsc.sc().getExecutorIds()
    spark.range(10).write.mode("overwrite").parquet(sys.argv[2] + "/probe")
    n = spark.read.parquet(sys.argv[2] + "/probe").count()
    print("RESULT " + json.dumps({"rows": rows, "executors": ids.size(), "hdfs_rows": n}))
    spark.stop()
""")


def test_workers_share_no_tmp_and_reach_hdfs(cluster, tmp_path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = subprocess.run([str(cluster.env()["PYSPARK_PYTHON"]), str(script), cluster.master, cluster.lake],
                         env=cluster.env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["executors"] == 2
    pids, seen, listings = zip(*result["rows"])
    assert not any(seen), "an executor saw the driver's /tmp"
    # Each executor sees only the file it wrote itself: the two /tmp folders are separate.
    assert sorted(len(names) for names in listings) == [1, 1]
    assert result["hdfs_rows"] == 10
