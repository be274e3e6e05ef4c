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
    (["run-stream", "nope"], "unknown stream 'nope'. Valid streams: ant, ant-mt, ant-short"),
    (["run-stream", "quick", "--method", "dremer"], "unknown method 'dremer'. Did you mean 'dreamer'? Valid methods: "),
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


def test_killed_process_resumes_without_redoing_finished_tasks(mlflow_uri, tmp_path):
    """SIGKILL a real run after its first task, then --resume it: same MLflow run, task 0 not redone."""
    import signal
    import time

    from harness import checkpoint

    f = tmp_path / "k.toml"
    f.write_text('name = "killme"\n[eval]\nevery_frames = 4000\nepisodes = 1\n'
                 '[[tasks]]\nname = "cartpole-balance"\nframes = 1000\n'
                 '[[tasks]]\nname = "cartpole-swingup"\nframes = 8000\n')
    import os
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run-stream", "--stream-file", str(f),
                             "--obs", "proprio", "--video-frames", "0", "--checkpoint-every", "1000000"],
                            cwd=tmp_path, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    ckpts = list((tmp_path / "runs").glob("*/checkpoint.pt")) if (tmp_path / "runs").exists() else []
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = list((tmp_path / "runs").glob("*/checkpoint.pt")) if (tmp_path / "runs").exists() else []
        if ckpts:
            try:
                if checkpoint.load(ckpts[0])["progress"]["task_index"] >= 1:
                    break
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = ckpts[0].parent.name
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL: nobody could mark it

    r = cli("run-stream", "--resume", run_id, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming run {run_id} at task 1" in r.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "eval/0-cartpole-balance/score")]
    assert steps == [1000, 5000, 9000]  # task 0's row once, then task 1's evaluations
    exp = client.get_experiment_by_name("stream/killme")
    assert len([x for x in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in x.data.tags]) == 1
