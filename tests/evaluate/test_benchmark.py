"""`nextplay benchmark` end to end on small benchmark-format files: text -> Delta -> Petastorm ->
the trainer -> ranking against all items, under the local and the Horovod launcher."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from nextplay.cli import main

N_ITEMS = 30


def _cycle(start: int, length: int) -> list[str]:
    """Raw ids 1000.. on a cycle: the next item is fully determined by the current one."""
    return [str(1000 + (start + i) % N_ITEMS) for i in range(length)]


def _write_files(folder: Path) -> tuple[Path, Path]:
    train = folder / "train_sessions.txt"
    train.write_text("".join(" ".join(_cycle(n % N_ITEMS, n % 7 + 3)) + "\n" for n in range(600)))
    lines = []
    for n in range(60):
        session = _cycle((7 * n) % N_ITEMS, n % 5 + 2)
        lines.append(f"{' '.join(session[:-1])}\t{session[-1]}")
    lines.append("1003\t99999")  # a label training never saw: a miss that stays in the denominator
    test = folder / "test_prefix_label.tsv"
    test.write_text("\n".join(lines) + "\n")
    return train, test


def _run(cfg, tmp_path: Path, *overrides: str) -> dict:
    train, test = _write_files(tmp_path)
    out = tmp_path / "out" / "metrics.json"
    args = ["benchmark", "--train", str(train), "--test", str(test), "--out", str(out)]
    for kv in [f"tracking.uri={cfg.tracking.uri}", f"tracking.artifact_location={cfg.tracking.artifact_location}",
               f"train.checkpoint_dir={cfg.train.checkpoint_dir}", "train.progress=false", "spark.master=local[2]",
               "train.epochs=4", "train.batch_size=32", "model.hidden_size=32", "model.n_negatives=16",
               "train.lr=0.01", "evaluate.knn_sample=100", "evaluate.knn_neighbors=50", *overrides]:
        args += ["--set", kv]
    assert main(args) == 0
    return json.loads(out.read_text())


def _params(cfg, run_id: str) -> dict[str, str]:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.get_run(run_id).data.params


@pytest.mark.slow
def test_benchmark_writes_every_figure_and_learns(spark, cfg, tmp_path):
    m = _run(cfg, tmp_path)
    assert {"recall_at_10", "mrr_at_10", "recall_at_20", "mrr_at_20", "lines", "train_seconds",
            "events_per_second"} <= set(m)
    assert set(m["baselines"]) == {"most_popular", "session_knn"}
    assert {"recall_at_20", "mrr_at_20"} <= set(m["baselines"]["most_popular"])
    assert m["lines"] == 61
    # 60 of the 61 labels follow deterministically from the prefix; the unseen one is a miss.
    assert 0.9 < m["recall_at_20"] <= 60 / 61
    assert m["recall_at_20"] > m["baselines"]["most_popular"]["recall_at_20"]
    assert m["events_per_second"] > 0 and m["world_size"] == 1
    assert _params(cfg, m["run_id"])["world_size"] == "1"


@pytest.mark.slow
def test_benchmark_with_bpr_max_learns(spark, cfg, tmp_path):
    m = _run(cfg, tmp_path, "model.loss=bpr_max")
    assert 0.9 < m["recall_at_20"] <= 60 / 61


@pytest.mark.slow
@pytest.mark.horovod
def test_benchmark_under_two_horovod_processes(spark, cfg, tmp_path):
    m = _run(cfg, tmp_path, "train.launcher=horovod", "train.num_proc=2")
    assert m["world_size"] == 2
    assert _params(cfg, m["run_id"])["world_size"] == "2"
    assert 0.9 < m["recall_at_20"] <= 60 / 61


def test_benchmark_refuses_a_malformed_test_file(cfg, tmp_path, capsys):
    train, test = _write_files(tmp_path)
    test.write_text("1001 1002 1003\n")  # no tab, no label
    args = ["benchmark", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "m.json"),
            "--set", f"tracking.uri={cfg.tracking.uri}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "expected 'prefix<TAB>label'" in err and not (tmp_path / "m.json").exists()
