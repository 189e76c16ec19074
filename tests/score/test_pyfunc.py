"""The logged pyfunc model: what a notebook or `mlflow models predict` gets."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nextplay import tracking
from nextplay.model import formats, pyfunc
from nextplay.model.io import load_model
from nextplay.runtime import release

from .conftest import TOP_K, TinyModel


@pytest.fixture(scope="module")
def loaded(tiny: TinyModel) -> mlflow.pyfunc.PyFuncModel:
    tracking.configure(tiny.cfg.tracking)  # tracking and registry: other tests point them elsewhere
    return mlflow.pyfunc.load_model(f"models:/{tiny.cfg.tracking.model_name}/{tiny.version}")


def reference_topk(tiny: TinyModel, items: list[int], k: int, exclude_seen: bool = False) -> tuple[list[str], np.ndarray]:
    """The saved network's own answer for one history, without MLflow or batching."""
    rnn = load_model(tiny.rnn_dir)
    s, i = rnn.topk(torch.tensor([items]), torch.tensor([len(items)]), k, exclude_seen=exclude_seen)
    by_idx = tiny.item_index.set_index("item_idx")["track_id"]
    return [by_idx[j] for j in i[0].tolist()], s[0].numpy()


def test_predict_on_track_ids_matches_the_network(tiny_each: TinyModel) -> None:
    """For every encoder: the registered pyfunc answers what the saved network answers."""
    tiny = tiny_each
    tracking.configure(tiny.cfg.tracking)
    loaded = mlflow.pyfunc.load_model(f"models:/{tiny.cfg.tracking.model_name}/{tiny.version}")
    out = loaded.predict(pd.DataFrame({"history": [["t03", "nope", "t07", "t07", "t02"], ["t05"]], "k": [3, 6]}))
    assert list(out.columns) == ["track_ids", "scores"]
    # "nope" is skipped, t07 t07 collapses (the model was logged with collapse_repeats=True).
    for row, (items, k) in enumerate([([3, 7, 2], 3), ([5], 6)]):
        ids, scores = reference_topk(tiny, items, k)
        assert list(out["track_ids"][row]) == ids
        np.testing.assert_allclose(out["scores"][row], scores, rtol=1e-5)


def test_default_k_exclusion_and_unknown_only_history(tiny: TinyModel, loaded: mlflow.pyfunc.PyFuncModel) -> None:
    out = loaded.predict(pd.DataFrame({"history": [["t01", "t02"], ["unknown", "also-unknown"]]}))
    assert len(out["track_ids"][0]) == TOP_K
    assert list(out["track_ids"][1]) == [] and list(out["scores"][1]) == []
    excluded = loaded.predict(pd.DataFrame({"history": [["t01", "t02"]], "k": [29]}), params={"exclude_played": True})
    ids = list(excluded["track_ids"][0])
    assert ids == reference_topk(tiny, [1, 2], 29, exclude_seen=True)[0][:28]  # 30 tracks, 2 played
    assert "t01" not in ids and "t02" not in ids


def test_logged_model_metadata(tiny: TinyModel, loaded: mlflow.pyfunc.PyFuncModel) -> None:
    meta = loaded.metadata
    assert meta.signature is not None and meta.signature.inputs.input_names() == ["history", "k"]
    assert meta.flavors["python_function"]["config"] == {"top_k": TOP_K, "collapse_repeats": True}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{tiny.cfg.tracking.model_name}/{tiny.version}"))
    requirements = (local / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    torch_req = next(r for r in requirements if r.startswith("torch"))
    assert "+" not in torch_req  # matches the CPU build, never pins the CUDA one
    assert pyfunc.index_file(local).suffix == ".parquet"
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["history", "k"]
    assert not (local / "python_model.pkl").exists()  # models-from-code: nothing unpickled on load
    assert not (local / "code").exists()  # no code travels with the model: the installed package is the code
    assert meta.metadata["nextplay_version"] == release()
    assert meta.metadata["model_format"] == formats.FORMAT


def test_item_index_must_be_dense(tmp_path: Path) -> None:
    gap = pd.DataFrame({"track_id": ["a", "b"], "item_idx": [1, 3]})
    with pytest.raises(ValueError, match="1..V"):
        pyfunc.write_item_index(gap, tmp_path / "i.parquet")
    dup = pd.DataFrame({"track_id": ["a", "a"], "item_idx": [1, 2]})
    with pytest.raises(ValueError, match="unique"):
        pyfunc.write_item_index(dup, tmp_path / "i.parquet")


def test_collapse_and_pad() -> None:
    np.testing.assert_array_equal(pyfunc.collapse_repeats(np.array([4, 4, 2, 4, 4, 4])), [4, 2, 4])
    padded, lengths = pyfunc.pad([np.array([1, 2, 3]), np.array([9])])
    np.testing.assert_array_equal(padded, [[1, 2, 3], [9, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])


def test_topk_items_is_independent_of_batching(tiny: TinyModel, loaded: mlflow.pyfunc.PyFuncModel) -> None:
    model = loaded.unwrap_python_model()
    histories = [np.array(h) for h in ([1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [3])]
    one_batch = model.topk_items(histories, TOP_K, batch_size=100)
    small = model.topk_items(histories, TOP_K, batch_size=2, chunk_size=4)
    np.testing.assert_array_equal(one_batch[1], small[1])
    # float32: another batch shape sums in another order, a few 1e-6 apart near zero
    np.testing.assert_allclose(one_batch[0], small[0], rtol=1e-5, atol=1e-5)


# -- loading trusts only the installed package --------------------------------------------------

def planted_copy(tiny: TinyModel, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the really logged model with code planted where MLflow runs it on load: a
    `code/nextplay` package named as the flavor's code path, and a python_model file that writes a
    marker first. Returns (model folder, marker file)."""
    tracking.configure(tiny.cfg.tracking)  # tracking and registry: other tests point them elsewhere
    source = mlflow.artifacts.download_artifacts(f"models:/{tiny.cfg.tracking.model_name}/{tiny.version}",
                                                 dst_path=str(tmp_path / "download"))
    model = tmp_path / f"planted-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, model)
    marker = tmp_path / "planted-code-ran"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    package = model / "code" / "nextplay"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(payload)
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor["code"] = "code"
    code_file = model / Path(flavor["model_code_path"]).name
    code_file.write_text(payload + code_file.read_text())
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return model, marker


def test_the_planted_code_runs_under_a_generic_mlflow_load(tiny: TinyModel, tmp_path: Path) -> None:
    """The control for the tests below: MLflow's own loader does run the planted code."""
    model, marker = planted_copy(tiny, tmp_path)
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model({str(model)!r})"],
                   capture_output=True, timeout=300)
    assert marker.read_text() == "ran"


def test_trusted_loader_never_runs_code_from_the_artifact(tiny: TinyModel, tmp_path: Path) -> None:
    model, marker = planted_copy(tiny, tmp_path)
    loaded = pyfunc.load_trusted(model)
    assert isinstance(loaded, pyfunc.NextTrackModel)
    assert (loaded.top_k, loaded.collapse) == (TOP_K, True)
    out = loaded.predict(None, pd.DataFrame({"history": [["t03", "t07", "t07", "t02"]], "k": [3]}))
    ids, scores = reference_topk(tiny, [3, 7, 2], 3)
    assert list(out["track_ids"][0]) == ids
    np.testing.assert_allclose(out["scores"][0], scores, rtol=1e-5)
    # The same through a run's artifact URI, as evaluate loads a training run's model.
    with mlflow.start_run(run_name="planted") as run:
        mlflow.log_artifacts(str(model), "model")
    by_uri = pyfunc.load_logged(f"runs:/{run.info.run_id}/model")
    np.testing.assert_allclose(by_uri.topk_items([np.array([3, 7, 2])], 3)[0][0], scores, rtol=1e-5)
    assert not marker.exists()


def test_spark_executors_never_run_code_from_the_artifact(spark, tiny: TinyModel, tmp_path: Path) -> None:
    from nextplay.score.batch import SCORED_SCHEMA, make_scorer

    model, marker = planted_copy(tiny, tmp_path)
    spark.sparkContext.addFile(str(model), recursive=True)
    histories = spark.createDataFrame([("u1", [3, 7, 2]), ("u2", [5])], "user_id string, items array<int>")
    scorer = make_scorer(model.name, k=3, exclude_played=False, batch_size=2, chunk_size=7)
    rows = histories.repartition(2).mapInPandas(scorer, SCORED_SCHEMA).collect()
    assert not marker.exists()
    got = {u: [r["item_idx"] for r in sorted((r for r in rows if r["user_id"] == u), key=lambda r: r["rank"])]
           for u in ("u1", "u2")}
    by_track = tiny.item_index.set_index("track_id")["item_idx"]
    for user, items in (("u1", [3, 7, 2]), ("u2", [5])):
        assert got[user] == [by_track[t] for t in reference_topk(tiny, items, 3)[0]]
