"""Sweeps on real engines with tiny budgets: a local Ray, submitit's local executor, a real MLflow server;
a job killed mid-task is resumed, a sweep run again starts nothing, bad input is refused before anything."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import cli
from harness import checkpoint
from harness.errors import HarnessError
from harness.sweep import SweepSpec, expand, find_runs, load_sweep_file, make_backend, run_sweep, status, tracking_server

RUN = {"preset": "debug", "obs": "proprio", "render_quality": "fast", "frames_per_task": 400, "eval_every": 400,
       "eval_episodes": 1, "video_frames": 0, "checkpoint_every": 100}
QUIET = dict(echo=lambda *_: None)


def _parents(uri: str, sweep: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.sweep = '{sweep}'")
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _kill_when_mid_task(uri: str, sweep: str, task_index: int, stop: threading.Event, killed: list) -> None:
    """SIGKILL the run-stream process of the first job seen training inside task ``task_index``."""
    client = MlflowClient(uri)
    while not stop.is_set() and not killed:
        for r in _parents(uri, sweep):
            if r.info.status != "RUNNING" or "checkpoint_dir" not in r.data.tags:
                continue
            try:
                p = checkpoint.load(Path(r.data.tags["checkpoint_dir"]) / "checkpoint.pt")["progress"]
            except Exception:
                continue
            if p["task_index"] == task_index and p["task_env_frames"] > 0:
                pid = int(client.get_run(r.info.run_id).data.tags["heartbeat.pid"])
                os.kill(pid, signal.SIGKILL)
                killed.append(r.info.run_id)
                return
        time.sleep(0.05)


def test_ray_grid_survives_a_killed_job_and_reruns_start_nothing(mlflow_uri, tmp_path):
    import ray
    spec = SweepSpec(("quick",), ("random", "drqv2"), (0, 1), dict(RUN, frames_per_task=1200), name="ray-test")
    jobs = expand(spec)
    assert len(jobs) == 4 and len({j.key for j in jobs}) == 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_when_mid_task, args=(mlflow_uri, "ray-test", 1, stop, killed))
        killer.start()
        try:
            report = run_sweep(jobs, "ray-test", make_backend("ray", cpus_per_job=1), max_retries=2, **QUIET)
        finally:
            stop.set()
            killer.join()
        assert report.ok, report.results
        again = run_sweep(jobs, "ray-test", make_backend("ray"), **QUIET)
    finally:
        ray.shutdown()
    assert killed, "no job was caught mid-task"
    parents = _parents(mlflow_uri, "ray-test")
    assert len(parents) == 4 and all(r.info.status == "FINISHED" for r in parents)
    victim = MlflowClient(mlflow_uri).get_run(killed[0])
    assert any(k.startswith("resumed_at_env_frames.") for k in victim.data.tags)     # the same run, resumed
    kids = MlflowClient(mlflow_uri).search_runs([victim.info.experiment_id],
                                                 f"tags.mlflow.parentRunId = '{killed[0]}'")
    assert sorted(k.data.tags["task_index"] for k in kids) == ["0", "1", "2"]   # task 0 was not redone
    by_label = {r.label: r for r in report.results}
    assert sum(r.attempts for r in by_label.values()) == 5                     # one retry, for the killed job
    assert [r.status for r in again.results] == ["SKIPPED"] * 4
    logs = MlflowClient(mlflow_uri).list_artifacts(killed[0], "logs")
    assert len(logs) == 2                                                      # both attempts' stdout/stderr
    st = status("ray-test")
    assert st["states"] == {"FINISHED": 4} and st["methods"]["drqv2"] == {"FINISHED": 2}
    assert st["running"] == [] and st["failed"] == []


def test_submitit_local_executor_runs_the_grid(mlflow_uri, tmp_path):
    spec = SweepSpec(("quick",), ("random",), (0, 1), RUN, name="slurm-test")
    backend = make_backend("slurm", concurrency=2, slurm_cluster="local", slurm_folder=str(tmp_path / "submitit"))
    report = run_sweep(expand(spec), "slurm-test", backend, **QUIET)
    assert report.ok and [r.status for r in report.results] == ["FINISHED"] * 2
    assert len(_parents(mlflow_uri, "slurm-test")) == 2


def test_a_real_server_takes_four_jobs_starting_at_once(mlflow_uri, tmp_path):
    spec = SweepSpec(("quick",), ("random",), (0, 1, 2, 3), RUN, name="server-test")
    report = run_sweep(expand(spec), "server-test", make_backend("local", concurrency=4, cpus_per_job=1),
                       max_retries=0, log_dir=str(tmp_path / "logs"), **QUIET)
    assert report.ok, report.results
    parents = _parents(mlflow_uri, "server-test")
    assert len(parents) == 4 and len({r.info.run_id for r in parents}) == 4
    assert sorted(r.data.tags["seed"] for r in parents) == ["0", "1", "2", "3"]
    text = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "database is locked" not in text and "Traceback" not in text
    # the jobs reported through the sweep's server, gone now: their logs name the store behind it
    assert text.count(f"look at the results with: mlflow ui --backend-store-uri {mlflow_uri}") == 4, text[-2000:]
    assert "http://127.0.0.1" not in text.split("look at the results with:")[-1]
    exps = [e.name for e in MlflowClient(mlflow_uri).search_experiments()]
    assert exps.count("stream/quick") == 1


def test_tracking_server_serves_the_embedded_store(mlflow_uri, tmp_path):
    with tracking_server(mlflow_uri, needed=True, **QUIET) as url:
        assert url.startswith("http://127.0.0.1:")
        client = MlflowClient(url)
        exp = client.create_experiment("via-server")
        client.create_run(exp)
    assert MlflowClient(mlflow_uri).get_experiment_by_name("via-server") is not None


def test_dry_run_prints_the_commands_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = CliRunner().invoke(cli.main, ["sweep", "quick", "--methods", "random,drqv2", "--seeds", "0,1", "--preset",
                                        "debug", "--obs", "proprio", "--backend", "ray", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert out.output.count("cli.py run-stream quick") == 4 and "--tag sweep=" in out.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["quick", "--methods", "random", "--backend", "kubernetes"], "unknown backend 'kubernetes'; valid: local, ray, slurm"),
    (["nowhere", "--methods", "random"], "nowhere"),
    (["quick", "--methods", "random,nosuch"], "nosuch"),
    (["quick", "--methods", "random", "--set", "batch_size=-1", "--preset", "debug"], "batch_size"),
    (["quick", "--methods", "random", "--seeds", "a,b"], "--seeds expects comma-separated integers"),
    (["quick", "--methods", "random", "--name", "it's"], "sweep id \"it's\": use letters, digits"),
    (["status", "it's"], "sweep id \"it's\": use letters, digits"),
])
def test_bad_input_is_refused_before_anything_exists(mlflow_uri, tmp_path, args, message):
    out = CliRunner().invoke(cli.main, ["sweep", *args])
    assert out.exit_code != 0 and message in out.output and "Traceback" not in out.output, out.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()


def test_a_ray_address_that_does_not_answer_is_a_clear_error_within_seconds(mlflow_uri, tmp_path):
    t0 = time.monotonic()
    out = CliRunner().invoke(cli.main, ["sweep", "quick", "--methods", "random", "--backend", "ray",
                                        "--ray-address", f"127.0.0.1:{_free_port()}"])
    assert out.exit_code != 0 and "does not answer" in out.output and "Traceback" not in out.output, out.output
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "runs").exists()


def test_sweep_files_are_data_with_errors_on_their_lines(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "g"\nstreams = ["quick"]\nmethods = ["random", "drqv2"]\nseeds = [0, 1]\n'
                    '[run]\npreset = "debug"\nobs = "proprio"\nframes-per-task = 400\n'
                    '[method.drqv2]\nset = ["batch_size=8"]\n[launch]\nbackend = "local"\nconcurrency = 2\n')
    spec, launch = load_sweep_file(good)
    assert spec.name == "g" and spec.seeds == (0, 1) and launch == {"backend": "local", "concurrency": 2}
    jobs = expand(spec)
    drq = [j for j in jobs if j.options.method == "drqv2"][0]
    assert drq.options.overrides == ("batch_size=8",) and drq.options.frames_per_task == 400
    bad = tmp_path / "bad.toml"
    bad.write_text('streams = ["quick"]\nmethods = ["random"]\nseeds = [0]\nbackend = "ray"\n')
    with pytest.raises(HarnessError, match=r"bad.toml:4: unknown field 'backend'"):
        load_sweep_file(bad)
    bad.write_text('streams = ["quick"]\nmethods = ["random"]\nseeds = [0]\n[run]\nframes = 3\n')
    with pytest.raises(HarnessError, match=r"bad.toml:5: .*unknown run-stream option 'frames'"):
        load_sweep_file(bad)
    bad.write_text('streams = ["quick"]\nmethods = ["random"]\nseeds = ["zero"]\n')
    with pytest.raises(HarnessError, match=r"bad.toml:3: 'seeds' must be a non-empty list of ints"):
        load_sweep_file(bad)


def test_find_runs_ignores_other_sweeps(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    assert find_runs(client, "none-yet") == {}


def test_tracking_server_command_serves_runs(mlflow_uri, tmp_path):
    import subprocess
    import sys
    import urllib.request
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "cli.py"), "tracking-server", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.5)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        client.create_run(client.create_experiment("served"))
    finally:
        proc.terminate()
        proc.wait(30)
    assert len(MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("served").experiment_id])) == 1


def test_sigterm_to_the_driver_stops_its_jobs_and_a_rerun_continues_them(mlflow_uri, tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C) to `sweep` stops it: no job is retried or started, the running jobs
    end KILLED (not RUNNING forever, not resumed behind the user's back), the driver exits non-zero, and the
    same command run again continues them."""
    import subprocess
    import sys
    argv = [sys.executable, cli.__file__, "sweep", "run", "quick", "--methods", "random", "--seeds", "0,1",
            "--name", "stop-test", "--obs", "proprio", "--render-quality", "fast", "--frames-per-task", "100000",
            "--eval-every", "100000", "--eval-episodes", "1", "--video-frames", "0", "--runs-dir", str(tmp_path / "runs"),
            "--concurrency", "2", "--cpus-per-job", "1"]
    from harness.reporting import MlflowReporter
    client = MlflowReporter(mlflow_uri).client  # the store exists before the driver opens it
    driver = subprocess.Popen(argv, env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_uri}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    pids: list[int] = []
    deadline = time.monotonic() + 240
    while len(pids) < 2 and time.monotonic() < deadline and driver.poll() is None:
        pids = [int(client.get_run(r.info.run_id).data.tags["heartbeat.pid"]) for r in _parents(mlflow_uri, "stop-test")
                if r.info.status == "RUNNING" and "heartbeat.pid" in client.get_run(r.info.run_id).data.tags]
        time.sleep(0.5)
    assert len(pids) == 2, driver.communicate()[0] if driver.poll() is not None else "jobs did not start"
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode != 0, out
    assert "Traceback" not in out, out
    for pid in pids:   # the job processes are gone, not left behind nor restarted
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    parents = _parents(mlflow_uri, "stop-test")
    assert len(parents) == 2 and {r.info.status for r in parents} == {"KILLED"}, [r.info.status for r in parents]
    # `sweep status` lists them with where each will continue: its checkpoint's global env frames, of the budget
    shown = CliRunner().invoke(cli.main, ["sweep", "status", "stop-test"])
    assert shown.exit_code == 0, shown.output
    for r in parents:
        at = int(client.get_run(r.info.run_id).data.tags["checkpoint.env_frames"])
        assert f"KILLED: {r.info.run_id} (quick, random, seed " in shown.output, shown.output
        assert f"checkpointed at {at:,}/300,000 env frames" in shown.output, shown.output
    # The same command again continues both runs (its --dry-run says what it would do).
    again = subprocess.run(argv + ["--dry-run"], env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_uri}, text=True,
                           capture_output=True, cwd=tmp_path, check=True).stdout
    assert sorted(line.split("' resume ")[1].strip() for line in again.splitlines() if "' resume " in line) == \
        sorted(r.info.run_id for r in parents), again


def test_sigterm_to_a_benchmark_driving_a_sweep_stops_its_jobs_too(mlflow_uri, tmp_path):
    """The benchmarks drive sweeps from Python (``benchmarks/jobs.run_jobs``), without the CLI's entry: a
    SIGTERM to such a script must stop its jobs as `sweep`'s does. It used to kill the script alone and leave
    the job processes (and the sweep's tracking server) running."""
    import subprocess
    import sys
    script = (
        "import sys; sys.path.insert(0, {root!r})\n"
        "from pathlib import Path\n"
        "from benchmarks.jobs import run_jobs, run_main, run_stream_options\n"
        "jobs = [(f'random-{{s}}', run_stream_options('quick', 'random', s, preset='tiny', sets=[], pretrained=None,\n"
        "         runs_dir=Path({runs!r}), frames_per_task=100000, eval_every=100000, eval_episodes=1))\n"
        "        for s in (0, 1)]\n"
        "run_main(lambda: run_jobs(jobs, 'bench-stop-test', 2, Path({logs!r})))\n"
    ).format(root=str(Path(cli.__file__).parent), runs=str(tmp_path / "runs"), logs=str(tmp_path / "logs"))
    from harness.reporting import MlflowReporter
    client = MlflowReporter(mlflow_uri).client
    driver = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_uri},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    pids: list[int] = []
    deadline = time.monotonic() + 240
    while len(pids) < 2 and time.monotonic() < deadline and driver.poll() is None:
        pids = [int(client.get_run(r.info.run_id).data.tags["heartbeat.pid"])
                for r in _parents(mlflow_uri, "bench-stop-test")
                if r.info.status == "RUNNING" and "heartbeat.pid" in client.get_run(r.info.run_id).data.tags]
        time.sleep(0.5)
    assert len(pids) == 2, driver.communicate()[0] if driver.poll() is not None else "jobs did not start"
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=120)
    # the benchmark's entry (jobs.run_main) ends it as the CLI does: one line, exit 143, no traceback
    assert driver.returncode == 143 and "Traceback" not in out and "run the same command again" in out, out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    parents = _parents(mlflow_uri, "bench-stop-test")
    assert {r.info.status for r in parents} == {"KILLED"}, [r.info.status for r in parents]


def test_ft_reference_is_a_run_option_with_its_flag_and_checked():
    """`--ft-reference METHOD` travels from the sweep to the run-stream command and into the run's config."""
    from harness.launch import RunOptions
    o = RunOptions(stream="cl3-short", method="ewc", preset="debug", obs="proprio", ft_reference="drqv2")
    argv = o.argv()
    assert argv[argv.index("--ft-reference") + 1] == "drqv2"
    assert o.to_config().ft_reference_method == "drqv2"
    with pytest.raises(HarnessError, match="unknown method 'nope'"):
        RunOptions(stream="cl3-short", method="ewc", ft_reference="nope").to_config()
    spec = SweepSpec(("cl3-short",), ("ewc",), (0,), {"ft_reference": "drqv2", "preset": "debug"})
    (job,) = expand(spec)
    assert job.options.ft_reference == "drqv2"


def test_sigterm_to_a_benchmark_preparing_its_data_stops_the_collection_too(mlflow_uri, tmp_path):
    """A benchmark's preparation runs `collect` and `pretrain` as children (``benchmarks/jobs.run_child``): a
    SIGTERM to the benchmark must stop the child the way the CLI stops (complete episodes kept, the dataset
    readable) and wait for it. It used to kill the script alone and leave the collection running to its end."""
    import subprocess
    import sys
    data = tmp_path / "data"
    script = (
        "import sys; sys.path.insert(0, {root!r})\n"
        "from benchmarks.jobs import run_child\n"
        "run_child([sys.executable, {cli!r}, 'collect', {data!r}, '--tasks', 'cartpole-balance', '--episodes', '500',\n"
        "           '--obs', 'proprio', '--render-quality', 'fast'])\n"
    ).format(root=str(Path(cli.__file__).parent), cli=str(Path(cli.__file__)), data=str(data))
    log = tmp_path / "driver.log"
    with log.open("w") as f:
        driver = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_uri},
                                  stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None and "writing" not in log.read_text():
        time.sleep(0.5)   # the child has started its collection
    proc_children = Path(f"/proc/{driver.pid}/task/{driver.pid}/children")
    children = [int(p) for p in proc_children.read_text().split()] if proc_children.exists() else []
    assert children and driver.poll() is None, log.read_text()
    time.sleep(5)   # episodes collected
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=120)
    out = log.read_text()
    assert driver.returncode != 0 and "ended KILLED" in out, out
    for pid in children:   # the driver waited for its child: it is gone, not collecting on alone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    from harness.offline import open_dataset
    with open_dataset(data, ["proprio"]) as ds:   # what was collected is complete and readable
        assert 0 < len(ds.episodes) < 500, out
