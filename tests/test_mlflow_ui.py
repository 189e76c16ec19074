"""The MLflow UI on a pipeline's runs, opened the way a person opens it: `mlflow server` on the
pipeline's tracking store, pages rendered by Debian's Chromium (headless, driven by Selenium through
the system ChromeDriver; `make browser` installs both).

What must be on each page: the experiment opens on its training runs (not on the GenAI overview);
the run's metrics are grouped in the product's sections with the training loss by step; the
registered model shows its champion alias, and its version the gate's decision and test figures.
Screenshots of every page are written under the test's temp folder (`NEXTPLAY_UI_SHOTS` names
another folder to keep them).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from nextplay.config import Config
from tests.conftest import temp_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TIMEOUT = 60  # seconds a page may take to render its part under load


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict]:
    """A small pipeline end to end (generate .. score) into its own tracking store."""
    from nextplay.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("ui")
    cfg = temp_config(
        root, "generate.events=20000", "generate.users=200", "generate.tracks=400", "generate.artists=40", "generate.days=6", "generate.files=2",
        "sessionize.min_item_count=2", "model.hidden_size=16", "model.n_negatives=64", "train.epochs=3",
        "train.report_every_steps=5", "evaluate.knn_sample=100", "evaluate.knn_neighbors=50")
    return cfg, run_pipeline(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(pipeline_store: tuple[Config, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg, _ = pipeline_store
    port = _free_port()
    log = tmp_path_factory.mktemp("ui-server") / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                                 "--port", str(port), "--backend-store-uri", cfg.tracking.uri,
                                 "--default-artifact-root", str(cfg.tracking.artifact_location), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian's chromium and chromium-driver): run `make browser`")
    from selenium import webdriver  # deferred: only this test drives a browser
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1600,1200"):
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("NEXTPLAY_UI_SHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page_text(driver, url: str, *wanted: str, shot: Path) -> str:
    """The rendered text of `url` once every string of `wanted` shows (or the timeout, then what showed)."""
    driver.get(url)
    deadline = time.monotonic() + TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(w in text for w in wanted):
            break
        time.sleep(0.5)
    time.sleep(1.0)  # charts draw after their titles
    driver.save_screenshot(str(shot))
    return driver.find_element("tag name", "body").text


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_pipeline(pipeline_store, server: str, browser, shots: Path) -> None:
    from mlflow.tracking import MlflowClient

    from nextplay import tracking

    cfg, result = pipeline_store
    client = MlflowClient(cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    run_id = result["train"]["run_id"]
    run = client.get_run(run_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING

    # The experiment's link as nextplay prints it: its training runs, with the model they registered.
    text = page_text(browser, f"{server}/{tracking.ui_path(experiment.experiment_id)}", run.info.run_name,
                     shot=shots / "experiment.png")
    assert run.info.run_name in text and "1 matching run" in text, "the experiment opens on its runs"
    assert cfg.tracking.model_name in text and "sessions (v" in text, "the run's model and input dataset"
    assert "Token Usage" not in text and "Detect Issues" not in text, "not the GenAI overview"

    # The run's charts, a section each, the training loss by step among them.
    text = page_text(browser, f"{server}/#/experiments/{experiment.experiment_id}/runs/{run_id}/model-metrics",
                     "valid/model", shot=shots / "run-metrics.png")
    sections = {"train": 2, "epoch": 4, "valid/model": 4, "valid/hybrid": 4, "run": 4,
                "test/model": 4, "test/session_knn": 4, "test/most_popular": 4}
    for section, charts in sections.items():
        assert f"{section}\n({charts})" in text, f"section {section} with {charts} charts"
    assert "(epoch/loss)" in text, "the first section drawn as charts"
    steps = client.get_metric_history(run_id, "train/loss")
    assert len(steps) >= 3 and len({m.step for m in steps}) == len(steps), "a loss curve by step, not one bar"

    # The registry: the champion, and on its version the gate's decision and what it measured.
    version = client.get_model_version_by_alias(cfg.tracking.model_name, "champion")
    text = page_text(browser, f"{server}/#/models/{cfg.tracking.model_name}", "@ champion", shot=shots / "model.png")
    assert f"Version {version.version}" in text and "@ champion" in text and "nextplay.gate" in text
    text = page_text(browser, f"{server}/#/models/{cfg.tracking.model_name}/versions/{version.version}",
                     "Gate on", shot=shots / "model-version.png")
    assert "Gate on recall_at_20: promoted" in text and "vs session_knn" in text
    for scorer in ("model", "session_knn", "most_popular"):
        assert f"test/{scorer}/recall_at_20" in text, f"the {scorer} figures as the version's tags"
    assert all((shots / f"{name}.png").stat().st_size > 20_000 for name in
               ("experiment", "run-metrics", "model", "model-version")), "screenshots of rendered pages"
