"""A real cluster on loopback: HDFS, a Spark standalone master and two workers that share no disk.

HDFS is Hadoop's own test cluster (one NameNode, one DataNode in a JVM, `MiniHdfs.java`), so the
lake is `hdfs://127.0.0.1:PORT/lake`, reached over the network by the driver, the executors and
Python on the executors (WebHDFS). Each worker runs in its own mount namespace with a private
/tmp holding its work and scratch folders: a file that one process writes to a local path is
invisible to every other, as on separate machines. The driver is a third process (`nextplay`
subprocesses started by the tests).

Every process the fixture starts is stopped at teardown, whatever the tests did: each runs in its
own process group, which is killed as a whole (Spark's executors and Python workers included).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HDFS_JARS = ROOT / ".cache" / "hdfs-jars"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass
class Cluster:
    """What a test needs to drive the cluster: its master URL, the lake on HDFS, a scratch folder."""

    master: str
    hdfs: str  # hdfs://127.0.0.1:RPC
    webhdfs_port: int
    work: Path  # the driver's own scratch folder (never visible to the workers' /tmp)
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def lake(self) -> str:
        return f"{self.hdfs}/lake"

    def env(self) -> dict[str, str]:
        """The environment of a driver process: this checkout's code first, loopback only."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "lib"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
        env["PYSPARK_PYTHON"] = str(VENV_PYTHON)
        env["PYTHONUNBUFFERED"] = "1"
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        return env


def _start(cmd: list[str], log: Path, env: dict[str, str], stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start a process in its own process group (so teardown can kill it with all its children)."""
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=stdin, env=env,
                            start_new_session=True)


def _wait_for(pattern: str, log: Path, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before '{pattern}'; log:\n{text[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"no '{pattern}' in {log} after {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (newest first), then SIGKILL whatever is left."""
    for proc in reversed(procs):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 20
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:  # the group may hold children (executors, Python workers) after its leader exited
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait(timeout=10)


def _compile_minihdfs(out: Path) -> str:
    if not (HDFS_JARS / ".done").exists():
        pytest.fail(f"Hadoop's test cluster JARs are missing from {HDFS_JARS}: run `make hdfs-jars` first")
    if shutil.which("javac") is None or shutil.which("unshare") is None:
        pytest.fail("the cluster tests need a JDK (javac) and util-linux's unshare")
    classpath = f"{HDFS_JARS}/*"
    subprocess.run(["javac", "-d", str(out), "-cp", classpath, str(Path(__file__).with_name("MiniHdfs.java"))],
                   check=True, timeout=120)
    return f"{classpath}{os.pathsep}{out}"


def _start_hdfs(cluster_dir: Path, logs: Path, env: dict[str, str], procs: list) -> tuple[str, int]:
    classpath = _compile_minihdfs(cluster_dir / "classes")
    log = logs / "hdfs.log"
    proc = _start(["java", "-Xmx512m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath, "MiniHdfs",
                   str(cluster_dir / "hdfs"), str(_free_port()), str(_free_port())], log, env, stdin=subprocess.PIPE)
    procs.append(proc)
    m = _wait_for(r"READY (hdfs://\S+) http://127\.0\.0\.1:(\d+)", log, proc, timeout=120)
    return m.group(1), int(m.group(2))


def _start_spark(logs: Path, env: dict[str, str], procs: list, workers: int, worker_memory: str) -> str:
    spark_class = str(_spark_home() / "bin" / "spark-class")
    port = _free_port()
    daemon_env = dict(env, SPARK_DAEMON_MEMORY="512m", SPARK_NO_DAEMONIZE="1")
    master = _start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                     "--port", str(port), "--webui-port", str(_free_port())], logs / "master.log", daemon_env)
    procs.append(master)
    _wait_for(r"I have been elected leader", logs / "master.log", master, timeout=120)
    url = f"spark://127.0.0.1:{port}"
    for i in range(workers):
        # A private /tmp per worker: its work dir, shuffle files and every executor's temp files
        # live there, unseen by the driver and the other worker, as on separate machines. Each worker
        # has its own loopback address too: Spark reads the shuffle files of executors on the same
        # host straight from their disk, which separate machines never do.
        host = f"127.0.0.{2 + i}"
        worker = (f"mount -t tmpfs -o size=4g tmpfs /tmp && mkdir -p /tmp/work /tmp/local && exec {spark_class} "
                  f"org.apache.spark.deploy.worker.Worker {url} --host {host} --cores 1 --memory {worker_memory} "
                  f"--webui-port {_free_port()} --work-dir /tmp/work")
        proc = _start(["unshare", "--mount", "--propagation", "private", "sh", "-c", worker],
                      logs / f"worker-{i}.log", dict(daemon_env, SPARK_LOCAL_DIRS="/tmp/local", SPARK_LOCAL_IP=host))
        procs.append(proc)
        _wait_for(r"Successfully registered with master", logs / f"worker-{i}.log", proc, timeout=120)
    return url


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """HDFS + a Spark master + two one-core workers, each worker with a private /tmp."""
    base = tmp_path_factory.mktemp("cluster")
    logs = base / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    env = Cluster("", "", 0, base, logs).env()
    try:
        hdfs, webhdfs_port = _start_hdfs(base, logs, env, procs)
        master = _start_spark(logs, env, procs, workers=2,
                              worker_memory=os.environ.get("NEXTPLAY_CLUSTER_WORKER_MEMORY", "2g"))
        work = base / "driver"
        work.mkdir()
        yield Cluster(master, hdfs, webhdfs_port, work, logs, procs)
    finally:
        _stop(procs)
        print(f"cluster logs: {logs}", file=sys.stderr)
