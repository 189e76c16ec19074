"""Configuration: defaults, YAML, --set overrides, and one clear line (exit 2) for every mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from nextplay.cli import main
from nextplay.config import ConfigError, ModelConfig, TrainConfig, load_config


def test_layers_defaults_then_yaml_then_overrides(tmp_path):
    conf = tmp_path / "c.yml"
    conf.write_text("train:\n  epochs: 7\n  lr: 0.01\nmodel:\n  encoder: lstm\n  hybrid:\n    knn_weight: 0.2\n")
    cfg = load_config(conf, ["train.epochs=3", "evaluate.ks=[5, 10]", "promote.metric=mrr_at_10", "spark.master=null",
                            "sessionize.collapse_repeats=no"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.encoder, cfg.model.hybrid.knn_weight) == (3, 0.01, "lstm", 0.2)
    assert cfg.evaluate.ks == [5, 10] and cfg.spark.master is None and cfg.sessionize.collapse_repeats is False
    assert cfg.model.hidden_size == ModelConfig().hidden_size  # not in the file: the dataclass default


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("trian.epochs=3", "unknown config key 'trian'"),
    ("model.encoder=transformer", "model.encoder: 'transformer' is not allowed; choose one of rnn, gru, lstm, sasrec"),
    ("model.cell=gru", "unknown config key 'model.cell'"),
    ("model.knn_weight=0.1", "unknown config key 'model.knn_weight'"),
    ("model.hybrid.knn_weight=1", "model.hybrid.knn_weight: must be in [0, 1)"),
    ("model.hybrid.score_temperature=0", "model.hybrid.score_temperature: must be > 0"),
    ("model.sasrec.heads=3", "model.sasrec.heads: must divide model.hidden_size"),
    ("model.sasrec.blocks=0", "model.sasrec.blocks: must be a positive number"),
    ("model.recurrent.num_layers=0", "model.recurrent.num_layers: must be a positive number"),
    ("train.optimizer=adagrad_sgd", "train.optimizer: 'adagrad_sgd' is not allowed"),
    ("train.batch_unit=sessions", "unknown config key 'train.batch_unit'"),
    ("train.epochs=three", "train.epochs: expected an integer"),
    ("train.epochs=0", "train.epochs: must be a positive number"),
    ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
    ("train.resume=maybe", "train.resume: expected true or false"),
    ("train.bptt_steps=2", "train.bptt_steps: must be 0 (through the whole window) or 1 (one step)"),
    ("sessionize.min_session_length=1", "sessionize.min_session_length: must be at least 2"),
    ("lake.catalog=main", "lake.catalog and lake.schema"),
    ("train.hosts=node1", "train.hosts: expected host:slots entries"),
    ("lake.webhdfs_port=0", "lake.webhdfs_port: must be a positive number"),
    ("train", "expected key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_missing_or_broken_conf_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


@pytest.mark.parametrize("argv", [
    ["train", "--set", "train.launcher=mpi"],
    ["ingest", "--set", "ingest.format=xml"],
    ["score", "--set", "score.top_k=-1"],
])
def test_cli_prints_one_line_and_exits_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nextplay")


@pytest.mark.parametrize("argv", [
    ["benchmark", "--train", "x"],  # --test missing
    ["nosuchstage"],
])
def test_usage_errors_print_the_usage_then_one_error_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: nextplay") and err[-1].startswith("nextplay")
    assert sum(": error: " in line for line in err) == 1 and "nextplay: error: nextplay" not in err[-1]


def test_flat_keys_cover_every_section():
    flat = load_config(None, []).flat()
    assert {"train.epochs", "model.head", "lake.root", "score.top_k", "tracking.uri"} <= set(flat)
    assert {"model.hybrid.knn_weight", "model.sasrec.blocks", "model.recurrent.num_layers"} <= set(flat)
    assert flat["spark.conf"] == {}  # a mapping value stays one value


def test_attention_encoder_refuses_lanes_and_windows_longer_than_its_positions():
    """Lanes carry a recurrent state across a session's steps; an attention encoder has none."""
    with pytest.raises(ConfigError, match="train.batching: lanes carry a recurrent state"):
        load_config(None, ["model.encoder=sasrec", "train.batching=lanes"])
    with pytest.raises(ConfigError, match=r"train.max_len: 60 is longer than model.sasrec.max_positions \(50\)"):
        load_config(None, ["model.encoder=sasrec", "train.max_len=60"])
    assert load_config(None, ["model.encoder=gru", "train.batching=lanes"]).train.batching == "lanes"


@pytest.mark.parametrize("name", ["local.yml", "benchmark.yml", "benchmark-diginetica.yml"])
def test_every_shipped_conf_file_is_valid(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "conf" / name, [])
    assert cfg.model.encoder in ("rnn", "gru", "lstm", "sasrec")


def test_diginetica_conf_is_the_benchmark_conf_with_the_documented_overrides():
    """docs/model-settings.md reproduces the file's validation rows with these --set flags on the
    benchmark conf; the file must not drift from them (nor from benchmark.yml's other keys)."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    digi = load_config(conf / "benchmark-diginetica.yml", []).flat()
    flags = ["train.bptt_steps=1", "train.optimizer=adagrad", "train.lr=0.05", "train.momentum=0.15",
             "train.lr_schedule=constant", "model.loss=bpr_max", "model.hybrid.knn_position_decay=0",
             "model.hybrid.score_temperature=0.5", "model.hybrid.knn_weight=0.02", "model.hybrid.knn_explore_weight=0",
             "train.batching=lanes", "model.repeat_detached=true"]
    bench = load_config(conf / "benchmark.yml", flags).flat()
    assert {k for k in digi if digi[k] != bench[k]} == {"tracking.model_name"}


def test_benchmark_conf_keeps_the_tuned_model_and_training_defaults():
    bench = load_config(Path(__file__).resolve().parents[1] / "conf" / "benchmark.yml", [])
    assert bench.model == ModelConfig() and bench.train.epochs == TrainConfig().epochs
    assert bench.train.lr == TrainConfig().lr and bench.train.batch_size == TrainConfig().batch_size


def test_conf_naming_a_folder_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path)
    assert main(["train", "--conf", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a file" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("how", ["set", "yaml"])
def test_empty_lake_root_is_refused(how, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were it accepted, the lake would silently be this folder
    if how == "set":
        argv = ["sessionize", "--set", "lake.root="]
    else:
        conf = tmp_path / "c.yml"
        conf.write_text('lake:\n  root: ""\n')
        argv = ["sessionize", "--conf", str(conf)]
        with pytest.raises(ConfigError, match="lake.root"):
            load_config(conf)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lake.root" in err[0]
    assert list(tmp_path.iterdir()) == ([] if how == "set" else [tmp_path / "c.yml"])


def test_ranks_on_a_cluster_need_a_shared_checkpoint_dir():
    """Rank 0 on an executor leaves its checkpoints and model in train.checkpoint_dir for the driver:
    a relative folder is a different folder on every machine, so a cluster run refuses it up front."""
    cluster = ["spark.master=spark://master:7077", "train.launcher=torch_distributor", "train.num_proc=2"]
    with pytest.raises(ConfigError, match="train.checkpoint_dir: 'checkpoints' is a folder on each machine"):
        load_config(None, [*cluster, "train.checkpoint_dir=checkpoints"])
    with pytest.raises(ConfigError, match="train.checkpoint_dir"):
        load_config(None, ["spark.master=null", "train.launcher=spark", "train.num_proc=2"])
    for shared in ("hdfs://nn:8020/ckpt", "/mnt/shared/ckpt", "file:///mnt/shared/ckpt"):  # URIs and mounts
        assert load_config(None, [*cluster, f"train.checkpoint_dir={shared}"]).train.checkpoint_dir == shared
    load_config(None, ["spark.master=local[2]", "train.launcher=torch_distributor", "train.num_proc=2"])
