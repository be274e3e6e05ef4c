"""Reward-free world-model pre-training (Eq. 1) on real collected data: MLflow, checkpoints, resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from offline_data import collected, write_ncrl

from harness.errors import HarnessError
from harness.offline import open_dataset
from harness.pretraining import pretrain, resume_pretrain
from methods.gsa.pretrain import load_pretrained, make_config

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return collected(tmp_path_factory)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_pretrain_logs_to_mlflow_and_resumes(dataset_dir, mlflow_uri, tmp_path):
    cfg = make_config("debug", {"grad_updates": "6", "log_every": "3", "openloop_every": "6", "checkpoint_every": "3"})
    res = pretrain(dataset_dir, cfg, preset="debug", runs_dir=tmp_path / "runs", **QUIET)
    out = res.out
    assert out == (tmp_path / "runs" / res.run_id).resolve() and res.grad_updates == 6
    assert {p.name for p in out.iterdir()} >= {"pretrain.json", "checkpoint.pt", "world_model.pt", "openloop"}
    client = MlflowClient(mlflow_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "pretrain"
    # what it was trained on, by content, and where: the same data collected again give the same digest
    with open_dataset(dataset_dir) as ds:
        assert run.data.tags["dataset_sha256"] == json.loads((out / "pretrain.json").read_text())["dataset_sha256"] \
            == ds.content_digest()
    assert run.data.tags["host.cpu"] and "version.torch" in run.data.tags
    assert run.data.params["pretrain.batch_size"] == "4" and run.data.params["data.embodiments"] == "cheetah,sawyer,walker"
    loss = client.get_metric_history(res.run_id, "pretrain/loss")
    assert [m.step for m in loss] == [3, 6] and all(np.isfinite(m.value) for m in loss)
    assert "pretrain/reward_loss" not in run.data.metrics and "pretrain/cont_loss" not in run.data.metrics  # Eq. 1 only
    for emb in ("walker", "cheetah", "sawyer"):
        assert 0 < run.data.metrics[f"openloop/{emb}/pixels_mse"] < 1
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"dataset_summary.json", "pretrain.json", "openloop", "model"} <= arts
    assert {a.path for a in client.list_artifacts(res.run_id, "openloop")} == {
        f"openloop/{e}-0000006.png" for e in ("cheetah", "sawyer", "walker")}
    assert [a.path for a in client.list_artifacts(res.run_id, "model")] == ["model/world_model.pt"]
    summary = json.loads(Path(client.download_artifacts(res.run_id, "dataset_summary.json", str(tmp_path))).read_text())
    assert summary["episodes"] == 10

    wm, payload = load_pretrained(out)
    assert wm.action_dim == 6 and set(wm.obs_shapes) == {"pixels"} and payload["grad_updates"] == 6
    # Continue the same run to 9 updates, from its directory or from its MLflow run id.
    res2 = resume_pretrain(str(res.run_id), grad_updates=9, **QUIET)
    assert res2.run_id == res.run_id and res2.grad_updates == 9
    assert [m.step for m in client.get_metric_history(res.run_id, "pretrain/loss")] == [3, 6, 9]
    assert client.get_run(res.run_id).info.status == "FINISHED"
    with pytest.raises(HarnessError, match="already finished 9 of 9"):
        resume_pretrain(str(out), **QUIET)
    with pytest.raises(HarnessError, match="already holds a pre-training run"):
        pretrain(dataset_dir, cfg, out=out, **QUIET)


def test_resumed_training_matches_uninterrupted_training(dataset_dir, mlflow_uri, tmp_path):
    cfg = make_config("debug", {"grad_updates": "6", "openloop_every": "100"})
    straight = pretrain(dataset_dir, cfg, out=tmp_path / "a", seed=5, **QUIET)
    half = pretrain(dataset_dir, make_config("debug", {"grad_updates": "3", "openloop_every": "100"}),
                    out=tmp_path / "b", seed=5, **QUIET)
    resumed = resume_pretrain(str(half.out), grad_updates=6, **QUIET)
    a, b = load_pretrained(straight.out)[0].state_dict(), load_pretrained(resumed.out)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_pretraining_started_on_a_gpu_continues_on_a_cpu_node_with_device(dataset_dir, mlflow_uri, tmp_path):
    from click.testing import CliRunner

    import cli
    from methods.gsa.pretrain import PRETRAIN_FILE
    res = pretrain(dataset_dir, make_config("debug", {"grad_updates": "3", "openloop_every": "100"}),
                   out=tmp_path / "pt", seed=5, **QUIET)
    info = json.loads((res.out / PRETRAIN_FILE).read_text())
    (res.out / PRETRAIN_FILE).write_text(json.dumps(info | {"device": "cuda"}))   # as a GPU node wrote it
    out = CliRunner().invoke(cli.main, ["pretrain", "--resume", str(res.out), "--steps", "5"])
    assert out.exit_code != 0 and isinstance(out.exception, SystemExit), out.output
    assert "CUDA is not available here; use --device cpu" in out.output and "Traceback" not in out.output
    assert json.loads((res.out / PRETRAIN_FILE).read_text())["device"] == "cuda"   # nothing changed
    out = CliRunner().invoke(cli.main, ["pretrain", "--resume", str(res.out), "--steps", "5", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "continuing on --device cpu (it was started on cuda)" in out.output
    assert json.loads((res.out / PRETRAIN_FILE).read_text())["device"] == "cpu"
    assert load_pretrained(res.out)[1]["grad_updates"] == 5
    assert any(k.startswith("resumed_on_device.") for k in MlflowClient().get_run(res.run_id).data.tags)


def test_pretrain_on_proprio_and_on_the_ncrl_layout(dataset_dir, mlflow_uri, tmp_path):
    cfg = make_config("debug", {"grad_updates": "2", "openloop_every": "2"})
    res = pretrain(dataset_dir, cfg, obs_keys=["proprio"], out=tmp_path / "p", **QUIET)
    assert "openloop/walker/proprio_mse" in res.metrics
    assert load_pretrained(res.out)[0].obs_shapes == {"proprio": (39,)}
    ncrl = write_ncrl(dataset_dir, tmp_path / "ncrl")
    res = pretrain(ncrl, cfg, action_pad_dim=21, out=tmp_path / "n", **QUIET)
    wm = load_pretrained(res.out)[0]
    assert wm.action_dim == 21 and np.isfinite(res.metrics["pretrain/loss"])


def test_config_presets_and_errors(dataset_dir, mlflow_uri, tmp_path):
    paper = make_config()
    assert (paper.grad_updates, paper.batch_size, paper.seq_len, paper.model.deter) == (200_000, 16, 64, 12288)
    assert make_config("tiny", {"model.deter": "128", "balance": "embodiment"}).model.deter == 128
    with pytest.raises(HarnessError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(HarnessError, match="unknown config field 'batch'"):
        make_config("debug", {"batch": "3"})
    with pytest.raises(HarnessError, match="does not exist"):
        pretrain(tmp_path / "missing", make_config("debug"), **QUIET)
    with pytest.raises(HarnessError, match="missing pre-trained world model"):
        load_pretrained(tmp_path)
    with pytest.raises(HarnessError, match="neither a pre-training directory"):
        resume_pretrain("0123abcd", **QUIET)


def test_cli_pretrain_with_index_then_retrieve(dataset_dir, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}

    def cli(*args):
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    r = cli("pretrain", "--data", str(dataset_dir), "--preset", "debug", "--steps", "4", "--threads", "1",
            "--out", "pt", "--build-index")
    assert r.returncode == 0, r.stderr
    assert "indexed 10 trajectories" in r.stdout and "mlflow ui" in r.stdout
    r = cli("retrieve", "pt", "--task", "cheetah-run", "-k", "3", "--render-quality", "fast", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line[:1].isdigit() and len(line.split()) == 5]
    assert len(rows) == 3 and {row[2] for row in rows} == {"cheetah"}
    for args, message in [
        (["pretrain", "--data", "nope", "--preset", "debug"], "dataset directory nope does not exist"),
        (["pretrain", "--preset", "debug"], "give --data DIR"),
        (["pretrain", "--data", str(dataset_dir), "--preset", "huge"], "unknown preset 'huge'"),
        (["pretrain", "--resume", "pt", "--data", "x"], "--resume continues a run with its own data"),
        (["build-index", "nope"], "pre-training directory nope does not exist"),
        (["retrieve", str(tmp_path), "--task", "walker-walk"], "no retrieval index in"),
    ]:
        r = cli(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
