"""One log format for the CLI and for the training processes that launchers start.

Some libraries report normal events at INFO in words that read as failures: py4j logs each closed
socket as "Connection reset by peer", petastorm logs "Failed loading Unischema" for every Parquet
dataset it did not write itself, faiss logs "Could not load library" for each CPU build it probes
before the one it loads. They are held to WARNING so a user reading the log sees ours.
"""
from __future__ import annotations

import logging
import sys

_NOISY = ("py4j", "petastorm.etl.dataset_metadata", "faiss.loader")


def configure_logging(level: int = logging.INFO, rank: int | None = None) -> None:
    """Log to stderr with time, level and logger name; `rank` tags every line of a training process."""
    tag = "" if rank is None else f" [rank {rank}]"
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
