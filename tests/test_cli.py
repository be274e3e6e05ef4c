"""The CLI as a user runs it: a subprocess, real exit codes, no tracebacks on bad input."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd, env_extra=None, timeout=600):
    import os
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["run-stream", "nope"], "unknown stream 'nope'. Valid streams: ant, ant-short"),
    (["run-stream", "quick", "--method", "dremer"], "unknown method 'dremer'. Valid methods: "),
    (["run-stream", "quick", "--frames-per-task", "-3"], "--frames-per-task must be a positive integer"),
    (["run-stream", "--resume", "0123abcd"], "no MLflow run '0123abcd'"),
    (["run-stream", "quick", "--set", "lr"], "--set expects KEY=VALUE"),
    (["streams", "show", "cw11"], "unknown stream 'cw11'"),
    (["run-stream", "--stream-file", "missing.toml"], "stream file 'missing.toml' does not exist"),
])
def test_bad_input_exits_nonzero_without_traceback_or_mlflow_writes(mlflow_uri, tmp_path, args, message):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_uri).search_experiments()])


def test_malformed_stream_file_names_field_and_line(mlflow_uri, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('name = "s"\n[[tasks]]\nname = "walker-fly"\nframes = 100\n')
    for args in (["run-stream", "--stream-file", str(f)], ["streams", "add", str(f)]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and f"{f}:3: tasks[0].name: unknown task 'walker-fly'" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "user-streams").exists()


def test_listing_commands(tmp_path):
    out = cli("tasks", "list", cwd=tmp_path).stdout
    assert "quadruped-roll_fast" in out and "assembly-v3" in out and "walker-walk" in out
    assert "random" in cli("methods", "list", cwd=tmp_path).stdout
    shown = cli("streams", "show", "ant", cwd=tmp_path).stdout
    assert "quadruped-jump" in shown and "300,000" in shown


def test_user_stream_file_runs_end_to_end_with_pixels(mlflow_uri, tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\n[eval]\nevery_frames = 100\nepisodes = 1\n'
                 '[[tasks]]\nname = "walker-stand"\nframes = 100\n[[tasks]]\nname = "button-press-v3"\nframes = 100\n')
    r = cli("streams", "add", str(f), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mine" in cli("streams", "list", cwd=tmp_path).stdout
    r = cli("run-stream", "mine", "--method", "random", "--seed", "1", "--video-frames", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mlflow ui" in r.stdout
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("stream/mine")
    (parent,) = [x for x in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in x.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["obs_type"] == "pixels"
