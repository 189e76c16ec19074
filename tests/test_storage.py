"""Python's access to lake-side files (nextplay/storage.py): local disks and remote file systems alike.

Remote paths are exercised with fsspec's in-memory file system (a real implementation, reached by
URI like hdfs:// or s3://); real HDFS over WebHDFS is covered by tests/cluster.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from nextplay.config import ConfigError
from nextplay.storage import Storage, is_local, join, local_path
from nextplay.train.checkpoint import load_latest_checkpoint, save_checkpoint


@pytest.fixture
def remote() -> str:
    return f"memory://nextplay-{uuid.uuid4().hex[:8]}"


def test_local_and_remote_urls() -> None:
    assert is_local("lake") and is_local("/tmp/x") and is_local("file:/tmp/x") and is_local("file:///tmp/x")
    assert not is_local("hdfs://nn:8020/lake") and not is_local("s3://bucket/lake")
    assert local_path("file:/tmp/x") == local_path("file:///tmp/x") == "/tmp/x"
    assert join("hdfs://nn:8020/lake/", "a", "b") == "hdfs://nn:8020/lake/a/b"


@pytest.mark.parametrize("where", ["local", "remote"])
def test_files_and_folders_round_trip(where: str, tmp_path: Path, remote: str) -> None:
    storage = Storage()
    base = str(tmp_path / "shared") if where == "local" else remote
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"\x00\x01")
    (src / "sub" / "b.txt").write_text("b")
    storage.upload(src, join(base, "out"))
    storage.write_bytes(join(base, "out", "result.json"), b"{}")
    storage.write_bytes(join(base, "out", "result.json"), b'{"done": 1}')  # replaced whole
    assert storage.listdir(join(base, "out")) == ["a.bin", "result.json", "sub"]
    assert storage.read_bytes(join(base, "out", "result.json")) == b'{"done": 1}'
    back = tmp_path / "back"
    storage.download(join(base, "out"), back)
    assert (back / "a.bin").read_bytes() == b"\x00\x01" and (back / "sub" / "b.txt").read_text() == "b"
    storage.remove(join(base, "out"), recursive=True)
    assert not storage.exists(join(base, "out")) and storage.listdir(join(base, "out")) == []


def test_hdfs_without_webhdfs_port_names_the_key() -> None:
    with pytest.raises(ConfigError, match="lake.webhdfs_port"):
        Storage().read_bytes("hdfs://127.0.0.1:8020/lake/x")


def test_checkpoints_on_remote_storage_keep_the_newest(remote: str) -> None:
    """Rank 0 on an executor saves to shared storage; a resumed run elsewhere loads the newest."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(4):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        save_checkpoint(remote, epoch, model, opt, extra={"run_id": "r"}, keep=2)
    assert Storage().listdir(remote) == ["checkpoint-000002.pt", "checkpoint-000003.pt"]
    state = load_latest_checkpoint(remote)
    assert state["epoch"] == 3 and float(state["model"]["weight"][0, 0]) == 3.0
    assert load_latest_checkpoint(f"{remote}/nothing-here") is None
