"""`compare` on real runs in a real MLflow store (random method, tiny budgets)."""

import pytest
from mlflow.tracking import MlflowClient

from harness.compare import compare
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from tasks.base import EnvConfig

STREAM = StreamSpec("cmp", (TaskSpec("cartpole-balance", 200), TaskSpec("walker-stand", 200)), EvalSpec(100, 1))


def _run(tmp_path, seed, stream=STREAM, action_repeat=2):
    cfg = RunConfig(stream=stream, method="random", seed=seed, video_frames=0, runs_dir=str(tmp_path / "runs"),
                    env=EnvConfig(obs_type="proprio", action_repeat=action_repeat))
    return run_stream(cfg, echo=lambda *_: None)


def test_compare_writes_table_plots_and_mlflow_run(mlflow_uri, tmp_path):
    for seed in (0, 1):
        _run(tmp_path, seed)
    odd = _run(tmp_path, 2, action_repeat=4)  # different settings: reported, not mixed
    comp = compare("cmp", out_dir=tmp_path / "out")
    (row,) = comp.rows
    assert row["method"] == "random" and row["runs"] == 2 and row["seeds"] == "0,1"
    assert 0 <= row["iqm_ci_low"] <= row["iqm"] <= row["iqm_ci_high"] <= 1
    assert 0 <= row["avg_performance"] <= 1 and "final 1-walker-stand" in row
    assert any(odd.run_id in e and "run.env.action_repeat" in e for e in comp.excluded)
    for name in ("comparison.csv", "comparison.md", "learning_curves.png", "R_matrices.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    client = MlflowClient(mlflow_uri)
    run = client.get_run(comp.run_id)
    assert run.data.tags["run_type"] == "comparison"
    assert {a.path for a in client.list_artifacts(comp.run_id)} >= {"comparison.md", "R_matrices.png"}
    # The comparison run itself is never taken for a method run.
    again = compare("cmp", out_dir=tmp_path / "out2")
    assert again.rows[0]["runs"] == 2
    # Seed 1 once more: the newer run replaces the older one instead of counting twice.
    assert not any("superseded" in e for e in again.excluded)
    newer = _run(tmp_path, 1)
    third = compare("cmp", out_dir=tmp_path / "out3")
    assert third.rows[0]["runs"] == 2 and third.rows[0]["seeds"] == "0,1"
    assert any(f"superseded by the newer run {newer.run_id}" in e for e in third.excluded), third.excluded


def test_compare_names_methods_without_runs(mlflow_uri, tmp_path):
    _run(tmp_path, 0)
    with pytest.raises(HarnessError, match="no finished runs of method.s. dreamer on stream 'cmp'; "
                                           "methods with finished runs: random"):
        compare("cmp", methods=["random", "dreamer"], out_dir=tmp_path / "o")
    with pytest.raises(HarnessError, match="no runs of stream 'nothing'"):
        compare("nothing")
