"""MLflow helpers: where artifacts go, how a model URI is pinned, what a run comparison shows."""
from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from nextplay import tracking
from nextplay.config import TrackingConfig, load_config

from .conftest import SESSIONS_VERSION, TinyModel


def test_artifact_root_is_absolute_for_local_stores_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = TrackingConfig(uri="sqlite:///mlruns.db", artifact_location="mlartifacts")
    assert tracking.artifact_root(local) == (tmp_path / "mlartifacts").as_uri()
    assert tracking.artifact_root(TrackingConfig(uri="http://mlflow:5000", artifact_location="mlartifacts")) is None
    assert tracking.artifact_root(TrackingConfig(uri="databricks", artifact_location="s3://b/x")) == "s3://b/x"


def test_configure_creates_the_experiment_once(tmp_path: Path) -> None:
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="exp", artifact_location=str(tmp_path / "a"))
    first = tracking.configure(cfg)
    assert tracking.configure(cfg) == first
    assert MlflowClient().get_experiment(first).artifact_location == (tmp_path / "a").as_uri()
    assert MlflowClient().get_experiment(first).tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_untagged_experiment_is_marked_as_model_training(tmp_path: Path) -> None:
    """Without the kind, the MLflow UI opens the experiment on its GenAI overview, not on the runs."""
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="exp", artifact_location=str(tmp_path / "a"))
    created = MlflowClient(cfg.uri).create_experiment("exp")
    assert "mlflow.experimentKind" not in MlflowClient(cfg.uri).get_experiment(created).tags
    assert tracking.configure(cfg) == created
    assert MlflowClient().get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"


def test_resolve_model_pins_a_version(tiny: TinyModel) -> None:
    cfg = copy.deepcopy(tiny.cfg.tracking)
    tracking.configure(cfg)
    client = MlflowClient()
    # A second name with two versions of the same artifacts, so the shared model stays at version 1.
    source = client.get_model_version(cfg.model_name, tiny.version)
    cfg.model_name = "nextplay-resolve-test"
    client.create_registered_model(cfg.model_name)
    for _ in range(2):
        client.create_model_version(cfg.model_name, source.source, run_id=source.run_id)
    with pytest.raises(FileNotFoundError, match="no version of registered model 'nextplay-resolve-test' holds the "
                       "alias 'champion': run `nextplay evaluate`"):
        tracking.resolve_model(cfg, None)
    client.set_registered_model_alias(cfg.model_name, "champion", "1")

    champion = tracking.resolve_model(cfg, None)  # the default: the champion, not the newest version
    assert (champion.uri, champion.name, champion.version) == ("models:/nextplay-resolve-test/1", cfg.model_name, "1")
    assert (champion.run_id, champion.sessions_version) == (source.run_id, SESSIONS_VERSION)
    assert tracking.resolve_model(cfg, "models:/nextplay-resolve-test/latest").version == "2"
    assert tracking.resolve_model(cfg, "models:/nextplay-resolve-test@champion").version == "1"
    assert tracking.resolve_model(cfg, "models:/nextplay-resolve-test/1").uri == "models:/nextplay-resolve-test/1"
    run_uri = f"runs:/{source.run_id}/model"
    assert tracking.resolve_model(cfg, run_uri) == tracking.ResolvedModel(run_uri, run_uri, source.run_id, source.run_id,
                                                                          SESSIONS_VERSION)
    with pytest.raises(ValueError, match="stages are deprecated"):
        tracking.resolve_model(cfg, "models:/nextplay-resolve-test/Production")
    with pytest.raises(FileNotFoundError, match="no version"):
        tracking.resolve_model(cfg, "models:/never-registered/latest")
    with pytest.raises(FileNotFoundError, match="holds the alias 'champion'"):
        tracking.resolve_model(cfg, "models:/never-registered@champion")


def test_registry_helpers_find_a_run_s_version_and_move_aliases(tiny: TinyModel) -> None:
    cfg = copy.deepcopy(tiny.cfg.tracking)
    tracking.configure(cfg)
    client = MlflowClient()
    source = client.get_model_version(cfg.model_name, tiny.version)
    name = "nextplay-alias-test"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source.source, run_id=source.run_id)
    assert tracking.version_of_run(name, source.run_id) == "3"  # the highest of the run's versions
    assert tracking.version_of_run(name, "0" * 32) is None
    assert tracking.alias_version(name, tracking.CHALLENGER) is None
    tracking.set_alias(name, tracking.CHALLENGER, "2")
    tracking.set_alias(name, tracking.CHALLENGER, "3")  # an alias moves: one version at a time
    assert tracking.alias_version(name, tracking.CHALLENGER) == "3"
    assert client.get_model_version(name, "2").aliases == []
    assert tracking.alias_version("never-registered", tracking.CHAMPION) is None


def test_log_params_logs_every_config_key(tmp_path: Path) -> None:
    cfg = load_config(None, [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_location={tmp_path / 'a'}"])
    with tracking.start_run(cfg, run_name="params") as run:
        tracking.log_params(cfg, extra={"n_items": 7})
        tracking.log_loss_curve([{"epoch": 0, "loss": 2.0, "valid_recall_at_20": 0.1},
                                 {"epoch": 1, "loss": 1.5, "valid_recall_at_20": 0.2}])
    logged = MlflowClient().get_run(run.info.run_id).data.params
    assert set(logged) == set(cfg.flat()) | {"n_items"}
    assert logged["train.epochs"] == str(cfg.train.epochs)
    assert [f.path for f in MlflowClient().list_artifacts(run.info.run_id)] == ["loss_curve.png"]


def test_log_params_never_stores_credentials(tmp_path: Path) -> None:
    """Secrets in URIs, in credential-like keys and inside spark.conf are redacted; the rest stays readable."""
    conf = tmp_path / "secret.yml"
    conf.write_text(
        "lake:\n  root: s3a://AKIAEXAMPLE:lake-pass-123@bucket/lake\n"
        "spark:\n  conf:\n"
        "    spark.hadoop.fs.s3a.secret.key: s3-secret-456\n"
        "    spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net: azure-key-789\n"
        "    spark.hadoop.fs.s3a.endpoint: https://s3.example.com\n"
        "    spark.sql.adaptive.enabled: 'true'\n"
        "ingest:\n  input: https://acct.blob.core.windows.net/plays/raw?sv=2022-11-02&sig=sas-sig-000&sp=r\n"
        "score:\n  model_uri: models:/nextplay-rnn/3\n"
        f"tracking:\n  uri: sqlite:///{tmp_path / 'm.db'}\n  artifact_location: {tmp_path / 'a'}\n")
    cfg = load_config(conf, ["model.hybrid.knn_weight=0.25"])
    with tracking.start_run(cfg, run_name="secrets") as run:
        logged_cfg = copy.deepcopy(cfg)
        # A tracking server behind basic auth: the URI the run was configured with carries a password.
        logged_cfg.tracking.uri = "https://alice:tracking-pass-321@mlflow.example.com/"
        tracking.log_params(logged_cfg, extra={"api_token": "extra-token-654", "n_items": 7})
    params = MlflowClient().get_run(run.info.run_id).data.params
    everything = "\n".join(f"{k}={v}" for k, v in params.items())
    for secret in ("lake-pass-123", "s3-secret-456", "azure-key-789", "sas-sig-000", "tracking-pass-321",
                   "extra-token-654"):
        assert secret not in everything
    assert set(params) == set(cfg.flat()) | {"api_token", "n_items"}
    assert params["lake.root"] == "s3a://AKIAEXAMPLE:***@bucket/lake"
    assert params["tracking.uri"] == "https://alice:***@mlflow.example.com/"
    assert params["ingest.input"] == "https://acct.blob.core.windows.net/plays/raw?sv=2022-11-02&sig=***&sp=r"
    assert "spark.hadoop.fs.s3a.endpoint': 'https://s3.example.com'" in params["spark.conf"]
    assert "spark.hadoop.fs.s3a.secret.key': '***'" in params["spark.conf"]
    assert "spark.sql.adaptive.enabled': 'true'" in params["spark.conf"]
    assert params["model.hybrid.knn_weight"] == "0.25" and params["score.model_uri"] == "models:/nextplay-rnn/3"
    assert params["n_items"] == "7" and params["api_token"] == "***"


def test_redact_keeps_what_is_not_a_secret() -> None:
    assert tracking.redact("model.hybrid.knn_sample", 500) == 500
    assert tracking.redact("model.hybrid.knn_position_decay", 0.5) == 0.5
    assert tracking.redact("tracking.uri", "databricks") == "databricks"
    assert tracking.redact("x", "jdbc:postgresql://db/x?user=bob&password=pw1") == "jdbc:postgresql://db/x?user=bob&password=***"
    assert tracking.redact("spark.conf", {"spark.hadoop.fs.s3a.aws.credentials.provider": "p.Provider",
                                          "spark.hadoop.fs.s3a.session.token": "t"}) == {
        "spark.hadoop.fs.s3a.aws.credentials.provider": "p.Provider", "spark.hadoop.fs.s3a.session.token": "***"}
    assert tracking.redact("db_password", "pw") == "***" and tracking.redact("github_token", "t") == "***"


def test_compare_runs_puts_baselines_beside_the_model(tmp_path: Path) -> None:
    cfg = load_config(None, [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", f"tracking.artifact_location={tmp_path / 'a'}"])
    assert tracking.compare_runs(cfg).empty
    with tracking.start_run(cfg, run_name="evaluated") as run:
        mlflow.log_params({"model.encoder": "gru"})
        mlflow.log_metrics({"test/model/recall_at_20": 0.3, "test/model/mrr_at_20": 0.1,
                            "test/most_popular/recall_at_20": 0.05, "test/session_knn/recall_at_20": 0.25,
                            "valid/model/recall_at_20": 0.31, "test/model/recall_at_10": 0.2})
    with tracking.start_run(cfg, run_name="not evaluated"):
        mlflow.log_metric("loss", 1.0)
    table = tracking.compare_runs(cfg, k=20)
    assert table["run_id"].tolist() == [run.info.run_id]
    assert set(table.columns) == {"run_id", "start_time", "recall_at_20", "mrr_at_20", "most_popular_recall_at_20",
                                  "session_knn_recall_at_20", "model.encoder"}
