"""Registered world models (harness/registry_models.py) against the embedded MLflow store: `pretrain --register`
makes a version with the world model, index and provenance; models:/NAME/VERSION and models:/NAME@ALIAS work
where a pre-training folder does (run-stream, pipeline)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from offline_data import collected

from harness.errors import HarnessError
from harness.registry_models import register_pretrained, resolve_pretrained

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning")]

STREAM = """name = "registry-test"
[eval]
every_frames = 200
episodes = 1
[[tasks]]
name = "walker-stand"
frames = 200
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("GSA_MODELS_DIR", str(tmp_path / "models-cache"))
    return mlflow_uri


@pytest.fixture
def registered(store, tmp_path, tmp_path_factory):
    """`pretrain --register wm --alias champion` on the shared tiny dataset (proprio, debug model)."""
    from cli import main
    data = collected(tmp_path_factory)
    out = CliRunner().invoke(main, ["pretrain", "--data", str(data), "--preset", "debug", "--steps", "3", "--obs",
                                    "proprio", "--threads", "1", "--out", str(tmp_path / "pt"), "--register", "wm",
                                    "--alias", "champion"])
    assert out.exit_code == 0, out.output
    assert "registered models:/wm/1 (alias models:/wm@champion)" in out.output
    return tmp_path / "pt", data


def test_a_version_holds_the_model_its_index_and_provenance(registered, store):
    from mlflow import MlflowClient
    pt, data = registered
    client = MlflowClient(store)
    mv = client.get_model_version("wm", "1")
    assert str(client.get_model_version_by_alias("wm", "champion").version) == "1"
    info = json.loads((pt / "pretrain.json").read_text())
    assert mv.run_id == info["run_id"]
    assert mv.tags["world_model_sha256"] == sha256(pt / "world_model.pt")
    assert mv.tags["dataset"] == str(data.resolve()) and mv.tags["dataset_fingerprint"] == info["dataset_fingerprint"]
    assert mv.tags["obs_keys"] == "proprio" and mv.tags["preset"] == "debug" and mv.tags["grad_updates"] == "3"
    folder = Path(resolve_pretrained("models:/wm/1", echo=lambda *_: None))
    assert {p.name for p in folder.iterdir()} >= {"world_model.pt", "pretrain.json", "index", "provenance.json"}
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["pretrain_run_id"] == info["run_id"] and prov["config"] == info["config"]
    assert prov["trained_at_commit"] == client.get_run(info["run_id"]).data.tags["git_commit"]
    assert prov["dataset"]["format"] == "gsa-offline" and prov["dataset"]["fingerprint"] == info["dataset_fingerprint"]
    assert prov["dataset"]["manifest"] == json.loads((data / "manifest.json").read_text())
    sums = prov["dataset"]["checksums"]
    assert sums["manifest.json"] == sha256(data / "manifest.json")
    shard_files = sorted(p.relative_to(data).as_posix() for p in data.glob("shards/*/shard.json"))
    assert sorted(k for k in sums if k != "manifest.json") == shard_files
    for rel, digest in prov["files"].items():          # every registered file, as downloaded
        assert sha256(folder / rel) == digest, rel
    assert sha256(folder / "index" / "index.faiss") == sha256(pt / "index" / "index.faiss")


def test_an_alias_resolves_to_its_version_and_is_downloaded_once(registered, store, tmp_path):
    said: list[str] = []
    a = resolve_pretrained("models:/wm@champion", echo=said.append)
    b = resolve_pretrained("models:/wm/1", echo=said.append)
    assert a == b == str(tmp_path / "models-cache" / "wm" / "1") and len(said) == 1
    assert resolve_pretrained(str(tmp_path), echo=said.append) == str(tmp_path)   # a folder stays a folder
    pt, _ = registered
    assert register_pretrained(pt, "wm", echo=lambda *_: None) == "models:/wm/2"


def test_run_stream_and_pipeline_take_a_registered_model(registered, store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from cli import main
    from harness.pipeline import PipelineConfig, run_pipeline
    (tmp_path / "stream.toml").write_text(STREAM)
    out = CliRunner().invoke(main, ["run-stream", "--stream-file", str(tmp_path / "stream.toml"), "--method", "gsa",
                                    "--preset", "debug", "--obs", "proprio", "--render-quality", "fast",
                                    "--threads", "1", "--video-frames", "0", "--pretrained", "models:/wm@champion",
                                    "--set", "agent.warmup_min_episodes=0"])
    assert out.exit_code == 0, out.output
    client = MlflowClient(store)
    (exp,) = [e for e in client.search_experiments() if e.name == "stream/registry-test"]
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert run.info.status == "FINISHED" and run.data.tags["pretrained_model"] == "models:/wm@champion"
    folder = str(tmp_path / "models-cache" / "wm" / "1")
    assert folder in json.dumps(run.data.params)
    # the pipeline skips collect, pretrain and build-index
    (tmp_path / "user-streams").mkdir(exist_ok=True)
    (tmp_path / "user-streams" / "registry-test.toml").write_text(STREAM)
    lines: list[str] = []
    res = run_pipeline(PipelineConfig(stream="registry-test", preset="debug", pretrained="models:/wm/1", threads=1,
                                      overrides=(("agent.warmup_min_episodes", "0"),), workdir=str(tmp_path / "pl")),
                       echo=lines.append)
    assert any("[1-3/4]" in line and "skipped" in line for line in lines)
    assert not (tmp_path / "pl" / "data").exists()
    assert client.get_run(res["run_id"]).data.tags["pretrained_model"] == "models:/wm/1"


def test_bad_names_and_uris_are_clear_errors(registered, store, tmp_path):
    from cli import main
    with pytest.raises(HarnessError, match="no version 7 of a registered model 'wm'.*registered models there: wm"):
        resolve_pretrained("models:/wm/7")
    with pytest.raises(HarnessError, match="no alias 'nope'"):
        resolve_pretrained("models:/wm@nope")
    with pytest.raises(HarnessError, match="not a model URI"):
        resolve_pretrained("models:/wm")
    pt, _ = registered
    with pytest.raises(HarnessError, match="registered model name"):
        register_pretrained(pt, "bad name")
    (tmp_path / "noindex").mkdir()
    for f in ("pretrain.json", "world_model.pt"):
        (tmp_path / "noindex" / f).write_bytes((pt / f).read_bytes())
    with pytest.raises(HarnessError, match="missing index.json.*build-index"):
        register_pretrained(tmp_path / "noindex", "wm")
    out = CliRunner().invoke(main, ["pretrain", "--data", "x", "--register", "a b"])
    assert out.exit_code == 2 and "registered model name" in out.output
