"""The run lifecycle with real processes: SIGKILL leaves a RUNNING run that `runs list`, `compare` and
`runs gc` recognise as dead; SIGTERM ends a run KILLED with its resume hint; `--resume` continues both, and the
result is the uninterrupted run's, bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import cli
from harness import checkpoint
from harness.errors import HarnessError
from harness.lifecycle import check_writable_dir, liveness

ROOT = Path(__file__).resolve().parents[1]
STREAM = """name = "life"
[eval]
every_frames = 6000
episodes = 1
[[tasks]]
name = "cartpole-balance"
frames = 12000
[[tasks]]
name = "reach-v3"
frames = 6000
"""


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "run-stream", *extra]


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run-stream", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _new_args(tmp_path: Path) -> list[str]:
    (tmp_path / "life.toml").write_text(STREAM)
    return ["--stream-file", "life.toml", "--method", "random", "--obs", "proprio", "--render-quality", "fast",
            "--checkpoint-every", "500", "--video-frames", "0", "--threads", "1", "--seed", "7"]


def _wait_for_checkpoint(tmp_path: Path, proc: subprocess.Popen, task_index: int, timeout: float = 120) -> str:
    """The run id once its checkpoint shows training inside task ``task_index``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, f"the run ended before it could be stopped:\n{proc.stdout.read()}"
        for d in (tmp_path / "runs").glob("*"):
            try:
                p = checkpoint.load(d / "checkpoint.pt")["progress"]
            except Exception:
                continue
            if p["task_index"] == task_index and p["task_env_frames"] > 0:
                return d.name
        time.sleep(0.05)
    raise AssertionError("no mid-task checkpoint in time")


def _R(client: MlflowClient, run_id: str, tmp_path: Path) -> list:
    path = client.download_artifacts(run_id, "R_matrix.json", str(tmp_path))
    return json.loads(Path(path).read_text())["R"]


def test_sigkill_sigterm_and_resume_with_real_processes(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    whole = subprocess.run(_cmd(*_new_args(tmp_path)), cwd=tmp_path,
                           env=dict(os.environ, MUJOCO_GL="egl"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    whole_id = next(iter(Path(tmp_path / "runs").iterdir())).name
    (tmp_path / "runs").rename(tmp_path / "runs-whole")

    # SIGKILL mid-task: nothing in the process can react; the run stays RUNNING
    proc = _start(tmp_path, *_new_args(tmp_path))
    run_id = _wait_for_checkpoint(tmp_path, proc, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and liveness(run).state == "dead"
    runner = CliRunner()
    out = runner.invoke(cli.main, ["runs", "list"])
    assert out.exit_code == 0 and run_id in out.output and "RUNNING (dead)" in out.output, out.output
    # where a resume continues: the last checkpoint's global env frames (the tag may trail a checkpoint written
    # just before the kill), of the budget
    at = int(run.data.tags["checkpoint.env_frames"])
    assert 0 <= at <= checkpoint.load(tmp_path / "runs" / run_id / "checkpoint.pt")["progress"]["global_env_frames"]
    assert f"{at:,}/18,000" in out.output, out.output
    out = runner.invoke(cli.main, ["compare", "life", "--out", str(tmp_path / "cmp")])
    assert out.exit_code == 0, out.output
    assert f"excluded: {run_id} (random, seed 7): dead: RUNNING in MLflow but process" in out.output, out.output
    out = runner.invoke(cli.main, ["runs", "gc"])
    assert out.exit_code == 0 and f"marking {run_id}" in out.output and "1 dead run(s) marked KILLED" in out.output
    assert client.get_run(run_id).info.status == "KILLED"
    kids = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert kids and all(k.info.status == "KILLED" for k in kids)

    # SIGTERM in the second task: a checkpoint is saved where the run was (not only the last periodic one), then
    # the run ends KILLED with the hint, exit code 143
    proc = _start(tmp_path, "--resume", run_id)
    _wait_for_checkpoint(tmp_path, proc, 1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, text
    assert f"Continue it with: python cli.py run-stream --resume {run_id}" in text, text
    assert "a checkpoint was saved at global env frame" in text, text
    assert "Traceback" not in text, text
    assert client.get_run(run_id).info.status == "KILLED"
    saved = checkpoint.load(tmp_path / "runs" / run_id / "checkpoint.pt")["progress"]
    assert f"a checkpoint was saved at global env frame {saved['global_env_frames']}" in text, text

    done = subprocess.run(_cmd("--resume", run_id), cwd=tmp_path, env=dict(os.environ, MUJOCO_GL="egl"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _R(client, run_id, tmp_path / "a") == _R(client, whole_id, tmp_path / "b")
    # finished means finished
    again = runner.invoke(cli.main, ["run-stream", "--resume", run_id])
    assert again.exit_code != 0 and "FINISHED already" in again.output and "Traceback" not in again.output


@pytest.mark.parametrize("bad", ["a-file", "/proc/gsa-runs"])
def test_unwritable_runs_dir_is_refused_before_anything_exists(mlflow_uri, tmp_path, bad):
    (tmp_path / "a-file").write_text("not a folder")
    out = CliRunner().invoke(cli.main, ["run-stream", "quick", "--method", "random", "--obs", "proprio",
                                        "--runs-dir", bad])
    assert out.exit_code != 0 and "--runs-dir" in out.output and "Traceback" not in out.output, out.output
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_uri).search_experiments()])


def test_check_writable_dir_creates_nothing(tmp_path):
    target = tmp_path / "not" / "yet"
    assert check_writable_dir(target, "--runs-dir") == target
    assert list(tmp_path.iterdir()) == []   # the probe folder is gone again
    (tmp_path / "f").write_text("x")
    with pytest.raises(HarnessError, match="is not a folder"):
        check_writable_dir(tmp_path / "f" / "sub", "--out")


def test_cuda_on_a_machine_without_it_is_refused_before_anything_exists(mlflow_uri, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = CliRunner().invoke(cli.main, ["run-stream", "quick", "--method", "random", "--obs", "proprio",
                                        "--device", "cuda"])
    assert out.exit_code != 0 and "CUDA is not available" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "runs").exists()


def test_sigterm_inside_a_training_loop_asks_for_a_checkpoint_first():
    """Inside sigterm_checkpoints the first SIGTERM only sets stop_requested(); one left unanswered raises
    when the block ends; a second SIGTERM raises at once; outside, SIGTERM raises at once."""
    from harness.lifecycle import Terminated, handle_sigterm, sigterm_checkpoints
    old = signal.getsignal(signal.SIGTERM)
    handle_sigterm()
    try:
        with pytest.raises(Terminated):
            with sigterm_checkpoints() as stop_requested:
                assert not stop_requested()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                assert stop_requested()          # the loop would save its checkpoint here
        with sigterm_checkpoints() as stop_requested:
            assert not stop_requested()          # the request was consumed
        with pytest.raises(Terminated):
            with sigterm_checkpoints():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGTERM)   # insisting: at once
                time.sleep(0.01)
                raise AssertionError("not reached")
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_processes_opening_a_fresh_store_at_once_all_get_it(tmp_path):
    """Jobs of a sweep (or a driver and a user's query) often open a fresh embedded store at the same moment;
    without the creation lock MLflow's migrations race and one process dies with "table ... already exists"."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys, time; t = float(sys.argv[1])\n"
            "from harness.reporting import MlflowReporter\n"
            "time.sleep(max(0.0, t - time.time()))\n"   # every process opens the store at the same instant
            "print(len(MlflowReporter(sys.argv[2]).client.search_experiments()))")
    start = time.time() + 15
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start), uri], cwd=Path(cli.__file__).parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    assert [o.strip().splitlines()[-1] for o in outs] == ["1"] * 4, outs   # the Default experiment, once


def test_a_tracking_server_lost_mid_run_gives_a_clear_error_and_the_run_resumes(mlflow_uri, tmp_path):
    """The server dies under a training run: one line naming it (no traceback), exit 75 (a sweep retries it),
    the checkpoint kept; once a store is back the same run continues to the end."""
    from harness.sweep import tracking_server
    args = _new_args(tmp_path)
    with tracking_server(mlflow_uri, needed=True, echo=lambda s: None) as url:
        env = dict(os.environ, MUJOCO_GL="egl", PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=url,
                   MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
        proc = subprocess.Popen(_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        run_id = _wait_for_checkpoint(tmp_path, proc, 0)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, text
    assert f"the MLflow tracking server {url} cannot be reached" in text and "Traceback" not in text, text
    assert f"run-stream --resume {run_id}" in text and "MLflow could not be told" in text, text
    assert checkpoint.load(tmp_path / "runs" / run_id / "checkpoint.pt")["progress"]["global_env_frames"] > 0
    # the store itself is intact: the run is there, RUNNING (nobody could tell it otherwise), and resumes
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    gc = CliRunner().invoke(cli.main, ["runs", "gc"])
    assert gc.exit_code == 0 and f"marking {run_id}" in gc.output, gc.output
    done = subprocess.run(_cmd("--resume", run_id), cwd=tmp_path, env=dict(os.environ, MUJOCO_GL="egl"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_tracking_server_that_is_not_there_is_named_without_a_traceback(mlflow_uri, tmp_path):
    from harness.sweep import _free_port
    port = _free_port()   # closed again: nothing listens there
    env = dict(os.environ, MUJOCO_GL="egl", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    out = subprocess.run(_cmd(*_new_args(tmp_path)), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 75, out.stdout + out.stderr
    assert f"http://127.0.0.1:{port} cannot be reached" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_only_mlflow_connection_errors_are_called_an_unreachable_tracking_server():
    from mlflow.exceptions import MlflowException

    from harness.errors import unreachable_store
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise MlflowException("API request to http://127.0.0.1:1/api failed") from inner
    except MlflowException as exc:
        assert isinstance(unreachable_store(exc), ConnectionRefusedError)
    assert unreachable_store(ConnectionError("Could not find any running Ray instance")) is None
    assert unreachable_store(MlflowException("RESOURCE_DOES_NOT_EXIST")) is None
