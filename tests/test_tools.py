"""tools/: the scripts kept beside the product run on its public API."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_benchmark_trains_and_measures_on_benchmark_files(tmp_path):
    """Sessions walk a cycle of 20 items, so the next item is fully determined: one epoch of the RNN and
    the Markov baseline both rank most labels first, and every result line carries its metrics."""
    cycle = lambda start, n: [str(100 + (start + i) % 20) for i in range(n)]  # noqa: E731
    (tmp_path / "train_sessions.txt").write_text("".join(" ".join(cycle(n, n % 5 + 3)) + "\n" for n in range(400)))
    log = tmp_path / "results.jsonl"
    _load("tune_benchmark").main(["--data", str(tmp_path), "--baselines", "--log", str(log),
                                  "--set", "train.epochs=2", "--set", "model.hidden_size=16",
                                  "--set", "train.batch_size=32", "--set", "train.threads=1"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    by_model = {r["model"]: r for r in records}
    assert {"most_popular", "markov", "sknn"} <= set(by_model)
    rnn = [r for r in records if r["model"].startswith("model:")]
    assert len(rnn) == 2 and all(r["split"] == "valid" and r["lines"] > 0 for r in records)
    assert by_model["markov"]["recall_at_20"] == 1.0
    assert by_model["most_popular"]["recall_at_20"] == 1.0  # 20 items: every item is in the top 20
    assert rnn[-1]["mrr_at_20"] > by_model["most_popular"]["mrr_at_20"]
