"""Python's own access to the lake's storage: the files Spark reads, from any process on any node.

Spark reaches the lake through Hadoop's FileSystem. Python code that reads or writes files there
itself (Petastorm's readers and the Parquet footers in training, rank 0's model, result and
checkpoints) goes through fsspec instead, so that a rank on an executor and the driver see the
same files. A plain path or a file: URI is the local disk, which on a cluster is shared only when it
is a mount that every node has (NFS, /dbfs); an hdfs:// URI goes over WebHDFS, the NameNode's HTTP
port (`lake.webhdfs_port`), because pyarrow's native HDFS client needs libhdfs and a JVM on every
Python process, which pip installs do not ship; any other scheme (s3://, gs://, abfs://) uses the
fsspec implementation of that name.
"""
from __future__ import annotations

import getpass
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

from nextplay.config import ConfigError, LakeConfig


def is_local(url: str) -> bool:
    """True for a path on this machine's disk (plain, or file:)."""
    return urlparse(url).scheme in ("", "file")


def local_path(url: str) -> str:
    """A plain path for a local `url` (file:/x, file:///x or /x)."""
    if url.startswith("file:"):
        parsed = urlparse(url)
        return parsed.path if parsed.netloc in ("", "localhost") else url[len("file:"):]
    return url


def join(base: str, *parts: str) -> str:
    """`base`/`parts`, for a local folder or a URI alike."""
    if is_local(base):
        return str(Path(local_path(base)).joinpath(*parts))
    return posixpath.join(base.rstrip("/"), *parts)


@dataclass(frozen=True)
class Storage:
    """How Python opens lake-side URIs; picklable, so the driver hands it to every rank."""

    webhdfs_port: int | None = None
    user: str | None = None  # HDFS user for WebHDFS; default: HADOOP_USER_NAME or the login name

    @classmethod
    def of(cls, lake: LakeConfig) -> Storage:
        return cls(webhdfs_port=lake.webhdfs_port)

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The file system holding `url` and the path to give it."""
        if is_local(url):
            return LocalFileSystem(), os.path.abspath(local_path(url))
        parsed = urlparse(url)
        if parsed.scheme == "hdfs":
            if self.webhdfs_port is None:
                raise ConfigError(f"lake.webhdfs_port: needed to read or write {url} from Python "
                                  "(the NameNode's HTTP port, e.g. 9870)")
            user = self.user or os.environ.get("HADOOP_USER_NAME") or getpass.getuser()
            fs = fsspec.filesystem("webhdfs", host=parsed.hostname, port=self.webhdfs_port, user=user)
            return fs, parsed.path or "/"
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path

    def exists(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.exists(path)

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.fs(url)
        with fs.open(path, "rb") as f:
            return f.read()

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write `data` to `url` whole: a temporary name first, then renamed over the final one, so a
        reader never sees half a file (rename is atomic on local disks and HDFS alike)."""
        fs, path = self.fs(url)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
            if isinstance(fs, LocalFileSystem):
                f.flush()
                os.fsync(f.fileno())
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, path)
        else:
            if fs.exists(path):
                fs.rm(path)
            fs.mv(tmp, path)

    def listdir(self, url: str) -> list[str]:
        """Names (not paths) in the folder `url`; empty when it does not exist."""
        fs, path = self.fs(url)
        if not fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))

    def remove(self, url: str, recursive: bool = False) -> None:
        fs, path = self.fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    def upload(self, local_dir: str | os.PathLike, url: str) -> None:
        """Copy the local folder `local_dir` (recursively) to the folder `url`."""
        fs, path = self.fs(url)
        fs.makedirs(path, exist_ok=True)
        root = Path(local_dir)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            self.write_bytes(join(url, *file.relative_to(root).parts), file.read_bytes())

    def download(self, url: str, local_dir: str | os.PathLike) -> None:
        """Copy the folder `url` (recursively) into the local folder `local_dir`."""
        fs, path = self.fs(url)
        for remote in fs.find(path):
            target = Path(local_dir) / posixpath.relpath(remote, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open(remote, "rb") as f:
                target.write_bytes(f.read())

    def arrow_filesystem(self, url: str) -> Any | None:
        """A file system for Petastorm's readers over `url`'s storage, or None for a local one
        (Petastorm opens file: URIs itself). Petastorm 0.12 drives pyarrow's legacy dataset API,
        which only accepts pyarrow's legacy file system classes: wrap fsspec in one."""
        if is_local(url):
            return None
        fs, _ = self.fs(url)
        return _LegacyArrowFS(fs)


def _legacy_base():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyarrow.filesystem import DaskFileSystem  # deferred: under catch_warnings, it warns when loaded
    return DaskFileSystem


class _LegacyArrowFS(_legacy_base()):
    """pyarrow's legacy wrapper for fsspec file systems, with the two calls it leaves out."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs  # the base class's __init__ only warns that it is deprecated

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(path)
