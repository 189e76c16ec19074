"""What every stage shares in one invocation: the mode, a scratch folder, the config and one Spark
session, plus the inputs built so far (so each is built once and reused)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextplay.config import Config, load_config

from bench.modes import Mode


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


BENCHMARK_CONF = Path(__file__).resolve().parents[1] / "conf" / "benchmark.yml"


def bench_config(workdir: Path, mode: Mode) -> Config:
    """The benchmark configuration (conf/benchmark.yml: config.py's tuned model and training
    defaults, not the demo's smaller model) with every output in `workdir`.

    Only paths, the progress display and the tiny mode's model size are changed: the figures are
    about the configuration the accuracy figures come from.
    """
    overrides = [
        f"lake.root={workdir / 'lake'}", f"generate.output={workdir / 'raw'}",
        f"tracking.uri=sqlite:///{workdir / 'mlruns.db'}", f"tracking.artifact_location={workdir / 'mlartifacts'}",
        f"train.checkpoint_dir={workdir / 'checkpoints'}", "train.progress=false", "train.epochs=1",
    ]
    if mode.hidden_size is not None:
        overrides.append(f"model.hidden_size={mode.hidden_size}")
    cfg = load_config(BENCHMARK_CONF, overrides)
    cfg.spark.conf["spark.ui.showConsoleProgress"] = "false"
    return cfg


@dataclass
class Bench:
    mode: Mode
    workdir: Path
    cfg: Config
    details: dict[str, Any] = field(default_factory=dict)  # per stage: raw timings and settings
    inputs: dict[str, Any] = field(default_factory=dict)  # inputs built once and shared by stages
    _spark: Any = None

    @property
    def spark(self):
        """One SparkSession for the whole invocation, started on first use (it takes seconds)."""
        if self._spark is None:
            from nextplay.spark import get_spark

            started = time.perf_counter()
            self._spark = get_spark(self.cfg)
            log(f"Spark session up in {time.perf_counter() - started:.1f}s ({self._spark.sparkContext.master})")
        return self._spark
