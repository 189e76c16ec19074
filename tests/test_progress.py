"""Progress in a log file is a few plain lines, never a storm of carriage-return redraws."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from nextplay.progress import LineProgress, console_progress, progress

ROOT = Path(__file__).resolve().parents[1]


def test_off_a_terminal_progress_is_logged_lines_at_a_bounded_interval(caplog):
    caplog.set_level(logging.INFO, logger="nextplay.progress")
    bar = progress(range(1000), 1000, "epoch 0", unit="step")  # pytest's stderr is not a terminal
    assert isinstance(bar, LineProgress)
    assert sum(1 for _ in bar) == 1000
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("epoch 0: 1000/1000 (100%)") and "done in" in lines[0]
    assert console_progress() == "false"


def test_each_interval_gives_one_line_with_rate_eta_and_postfix(caplog):
    caplog.set_level(logging.INFO, logger="nextplay.progress")
    bar = LineProgress(range(4), 8, "epoch 1", unit="step", interval=0.0)
    bar.set_postfix(loss="1.2345")
    list(bar)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[1].startswith("epoch 1: 2/8 (25%)")
    assert "step/s" in lines[1] and "ETA" in lines[1] and "loss=1.2345" in lines[1]


def test_disabled_progress_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="nextplay.progress")
    bar = progress(range(3), 3, "x", enabled=False)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert not caplog.records


@pytest.mark.slow
def test_a_stage_logged_to_a_file_has_no_carriage_returns(tmp_path):
    log = tmp_path / "stage.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"))
    with open(log, "w") as err:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "nextplay"), "generate", "--set", f"generate.output={tmp_path / 'raw'}",
                               "--set", "generate.events=20000", "--set", "generate.users=100", "--set", "spark.master=local[2]"],
                              stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "[Stage " not in text
