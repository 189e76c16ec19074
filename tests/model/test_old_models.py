"""Models outlive releases: a model logged by an earlier release loads and scores with this one, and
a model of a layout this release does not know is refused in one line naming the release that wrote it.

The fixture `tests/fixtures/models/format1-2026-12-01` was logged by the release of 2026-12-01 (its
network was SessionRNN, its models-from-code file imports `nextplay.score.pyfunc`, its config is
flat); `.expected.json` beside it holds what that release answered for five histories.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nextplay.model import formats
from nextplay.model.io import MODEL_FILE, load_model, read_model_config, save_model
from nextplay.model.pyfunc import ENTRY_POINT, load_trusted

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
OLD = FIXTURES / "format1-2026-12-01"


def expected() -> list[dict]:
    return json.loads((FIXTURES / f"{OLD.name}.expected.json").read_text())


def assert_answers_as_logged(out: pd.DataFrame) -> None:
    for row, want in enumerate(expected()):
        assert list(out["track_ids"][row]) == want["track_ids"]
        np.testing.assert_allclose(np.asarray(out["scores"][row], dtype=np.float64), want["scores"], rtol=1e-4, atol=1e-5)


def test_the_fixture_is_of_the_old_layout() -> None:
    """The control: the fixture really is what the old release wrote (flat config, old weight names, old entry point)."""
    payload = torch.load(OLD / "artifacts" / "rnn" / MODEL_FILE, weights_only=True)
    assert "format" not in payload and "cell" in payload["config"] and "knn_weight" in payload["config"]
    assert any(name.startswith("rnn.") for name in payload["state_dict"])
    assert formats.file_format(payload) == 1
    assert "from nextplay.score.pyfunc import NextTrackModel" in (OLD / "model_code.py").read_text()


def test_an_old_model_scores_as_its_release_scored_it() -> None:
    """nextplay's own loading (evaluate, the scoring executors) of the old model gives its release's answers."""
    model = load_trusted(OLD, device="cpu")
    assert_answers_as_logged(model.predict(None, pd.DataFrame({"history": [r["history"] for r in expected()]})))
    cfg = read_model_config(OLD / "artifacts" / "rnn")
    assert cfg.encoder == "gru" and cfg.hybrid.knn_sessions == 100  # moved into their sections


def test_an_old_model_loads_through_mlflow_in_a_fresh_process() -> None:
    """MLflow's own loader (notebooks, `mlflow models serve`, spark_udf) runs the old models-from-code file."""
    script = ("import mlflow, pandas as pd, json, sys\n"
              f"m = mlflow.pyfunc.load_model({str(OLD)!r})\n"
              f"h = [r['history'] for r in json.load(open({str(FIXTURES / (OLD.name + '.expected.json'))!r}))]\n"
              "out = m.predict(pd.DataFrame({'history': h}))\n"
              "print(json.dumps({'track_ids': [list(x) for x in out['track_ids']], "
              "'scores': [[float(s) for s in x] for x in out['scores']]}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_answers_as_logged(pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1])))


def test_new_models_name_the_stable_entry_point() -> None:
    text = Path(ENTRY_POINT).read_text()
    assert "from nextplay.serving import NextTrackModel" in text
    assert [line for line in text.splitlines() if line.startswith(("import ", "from "))] == [
        "from mlflow.models import set_model", "from nextplay.serving import NextTrackModel"]


def _copy_with(tmp_path: Path, change) -> Path:
    rnn = tmp_path / "rnn"
    shutil.copytree(OLD / "artifacts" / "rnn", rnn)
    payload = torch.load(rnn / MODEL_FILE, weights_only=True)
    change(payload)
    torch.save(payload, rnn / MODEL_FILE)
    return rnn


def test_a_newer_layout_is_refused_naming_its_release(tmp_path: Path) -> None:
    def newer(payload: dict) -> None:
        payload.update(format=formats.FORMAT + 1, nextplay_version="9.4.0")

    rnn = _copy_with(tmp_path, newer)
    with pytest.raises(formats.ModelFormatError) as refused:
        load_model(rnn)
    message = str(refused.value)
    assert "\n" not in message and "nextplay 9.4.0" in message and f"format {formats.FORMAT + 1}" in message


def test_an_old_setting_this_release_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    rnn = _copy_with(tmp_path, lambda payload: payload["config"].update(cosine_scale=10.0))
    with pytest.raises(formats.ModelFormatError, match="cosine_scale=10.0"):
        load_model(rnn)


def test_a_saved_model_records_its_format_and_release(tmp_path: Path) -> None:
    """An old model saved again (warm start from an old champion) is written in the current layout."""
    model = load_model(OLD / "artifacts" / "rnn")
    save_model(model, tmp_path / "again")
    payload = torch.load(tmp_path / "again" / MODEL_FILE, weights_only=True)
    assert payload["format"] == formats.FORMAT and payload["nextplay_version"]
    assert not any(name.startswith(("rnn.", "memory.")) for name in payload["state_dict"])
    again = load_model(tmp_path / "again")
    items, lengths = torch.tensor([[3, 7, 2]]), torch.tensor([3])
    torch.testing.assert_close(again.topk(items, lengths, 5), model.topk(items, lengths, 5))
