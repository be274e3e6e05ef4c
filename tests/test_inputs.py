"""Every input checked, every failure clear (issue 13, section 3): config ranges, command-line options,
non-finite losses, and bad paths or plugins give one clear line and a non-zero exit, never a traceback, and
nothing is created (no MLflow store, no runs/ folder) before the error."""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from harness.collect import CollectConfig, check_output_dir
from harness.config import RunConfig
from harness.errors import HarnessError, NonFiniteLossError
from harness.streams import EvalSpec, StreamSpec, TaskSpec, add_stream_file, load_plugins, load_stream_file
from methods import METHODS
from methods.base import MethodContext, Step, TaskContext, check_config, resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STREAM = "name = \"mine\"\n[[tasks]]\nname = \"cartpole-balance\"\nframes = 1000\n"


def fails_cleanly(args: list[str], *expected: str, root=None) -> str:
    """Run the CLI; it must exit non-zero through the error handler (not an uncaught exception), print one
    error line holding every ``expected`` string, and (with ``root``) create no MLflow store and no runs/."""
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exc_info!r}\n{res.output}"
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, res.output
    for e in expected:
        assert e in errors[0], (e, errors[0])
    if root is not None:
        assert not (root / "mlflow.db").exists() and not (root / "runs").exists(), os.listdir(root)
    return errors[0]


# ============================================================================ method config ranges

@pytest.mark.parametrize("method, key, value, valid", [
    ("dreamer", "batch_size", "-4", "[1, 65536]"),       # used to finish with zero gradient updates
    ("dreamer", "train_ratio", "-8", "(0, 1000000]"),    # same
    ("dreamer", "batch_size", "0", "[1, 65536]"),
    ("dreamer", "seq_len", "0", "[1, 65536]"),
    ("dreamer", "train_ratio", "inf", "not finite"),
    ("dreamer", "model.lr", "-1", "(0, inf)"),
    ("dreamer", "model.lr", "nan", "not finite"),
    ("dreamer", "model.deter", "0", "[1, 65536]"),
    ("dreamer", "model.deter", "1e12", "[1, 65536]"),
    ("dreamer", "ac.gamma", "1.5", "[0, 1]"),
    ("dreamer", "ac.actor_grad", "sideways", "one of dynamics, reinforce"),
    ("drqv2", "batch_size", "-8", "[1, 65536]"),
    ("drqv2", "discount", "nan", "not finite"),
    ("packnet", "base_config.lr", "0", "(0, inf)"),
    ("packnet", "retrain_fraction", "2", "[0, 1]"),
    ("random", "high", "inf", "not finite"),
    ("gsa", "agent.past_fraction", "1", "[0, 1)"),
    ("gsa", "bc.batch_size", "0", "[1, 65536]"),
    ("gsa", "retrieval_filter", "nearest", "one of embodiment, action-mask"),
])
def test_a_config_value_out_of_range_names_the_field_value_and_range(method, key, value, valid):
    with pytest.raises(HarnessError) as err:
        resolve_config(METHODS.load(method), method, "debug", {key: value})
    msg = str(err.value)
    assert f"{key}=" in msg and valid in msg, msg


@pytest.mark.parametrize("method, over, words", [
    ("random", {"low": "0.5", "high": "0.5"}, "low=0.5 must be < high=0.5"),
    ("dreamer", {"model.blocks": "5"}, "deter=32 must be a multiple of blocks=5"),
    ("dreamer", {"model.deter": "65536", "model.hidden": "65536", "model.blocks": "1"}, "parameters, more than"),
    ("dreamer", {"ac.min_std": "2"}, "min_std=2.0 must be <= max_std=1.0"),
    ("dreamer", {"batch_size": "65536", "seq_len": "65536"}, "steps per batch fit in memory"),
    ("drqv2", {"encoder_kernel": "3"}, "encoder_kernel=3 must be even"),
    ("gsa", {"offline_fraction": "0.5", "agent.past_fraction": "0.5"}, "must be < 1"),
])
def test_rules_between_fields_are_checked(method, over, words):
    with pytest.raises(HarnessError, match=f"^{method} config: .*{_re(words)}"):
        resolve_config(METHODS.load(method), method, "debug", over)


def _re(s: str) -> str:
    import re
    return re.escape(s)


@pytest.mark.parametrize("value", ["1e400", "1.5e0", "nan"])
def test_an_integer_override_that_is_not_an_integer_is_a_clear_error(value):
    with pytest.raises(HarnessError, match=f"override seq_len={value!r}: expected int"):
        resolve_config(METHODS.load("dreamer"), "dreamer", "debug", {"seq_len": value})


def _all_configs() -> list[tuple[str, typing.Any]]:
    from methods.gsa.bc import BCConfig
    from methods.gsa.explorer import DEBUG, ExplorerConfig
    from methods.gsa.guidance import GuidanceSchedule
    from methods.gsa.pretrain import PretrainConfig
    from methods.gsa.retrieval import RetrievalConfig
    out = [(e.name, resolve_config(METHODS.load(e.name), e.name, p)) for e in METHODS
           for p in ("debug", "tiny", "small", "paper")]
    out += [("pretrain", PretrainConfig()), ("explorer", ExplorerConfig()), ("explorer", DEBUG),
            ("retrieval", RetrievalConfig()), ("guidance", GuidanceSchedule()), ("bc", BCConfig())]
    return out


def _leaves(cfg: typing.Any, prefix: str = ""):
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield cfg, f, hints[f.name], prefix + f.name


def test_every_numeric_config_field_declares_its_range_and_every_preset_is_in_range():
    missing = set()
    for name, cfg in _all_configs():
        check_config(cfg, name)   # the defaults and presets themselves are valid
        for _, f, hint, path in _leaves(cfg):
            numeric = hint in (int, float) or typing.get_origin(hint) is tuple
            if numeric and "range" not in f.metadata:
                missing.add(f"{name}: {path}")
    assert not missing, f"fields without a declared range (methods.base.ranged): {sorted(missing)}"


def test_every_float_field_rejects_nan_and_inf():
    for name, cfg in _all_configs():
        for _owner, _f, hint, path in _leaves(cfg):
            if hint is not float:
                continue
            for bad in (math.nan, math.inf):
                broken = _replace_path(cfg, path, bad)
                with pytest.raises(HarnessError, match=_re(f"{path}={bad} is not finite")):
                    check_config(broken, name)


def _replace_path(cfg: typing.Any, path: str, value: typing.Any) -> typing.Any:
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: _replace_path(getattr(cfg, head), rest, value)})
    obj = object.__new__(type(cfg))   # bypass __post_init__ checks: check_config is under test
    for f in dataclasses.fields(cfg):
        object.__setattr__(obj, f.name, getattr(cfg, f.name))
    object.__setattr__(obj, head, value)
    return obj


def test_pretrain_config_is_checked_like_a_method_config():
    from methods.gsa.pretrain import make_config
    with pytest.raises(HarnessError, match=r"pretrain config: model\.lr=nan is not finite"):
        make_config("debug", {"model.lr": "nan"})
    with pytest.raises(HarnessError, match=r"pretrain config: balance='tasks' is out of range; "
                                           r"valid: one of uniform, embodiment"):
        make_config("debug", {"balance": "tasks"})
    with pytest.raises(HarnessError, match="openloop_context"):
        make_config("debug", {"openloop_context": "8"})


def test_run_stream_set_out_of_range_is_one_line_before_anything_is_created(mlflow_uri, tmp_path):
    base = ["run-stream", "quick", "--method", "dreamer", "--preset", "debug", "--obs", "proprio",
            "--frames-per-task", "100", "--video-frames", "0", "--runs-dir", str(tmp_path / "runs")]
    fails_cleanly(base + ["--set", "model.lr=-1"], "model.lr=-1.0", "(0, inf)", root=tmp_path)
    fails_cleanly(base + ["--set", "batch_size=-4"], "batch_size=-4", "[1, 65536]", root=tmp_path)
    fails_cleanly(base + ["--set", "model.deter=1e12"], "model.deter=1000000000000", root=tmp_path)
    fails_cleanly(["run-stream", "quick", "--method", "drqv2", "--preset", "debug", "--set", "batch_size=-8",
                   "--runs-dir", str(tmp_path / "runs")], "batch_size=-8", root=tmp_path)
    fails_cleanly(["run-stream", "quick", "--set", "low=1", "--runs-dir", str(tmp_path / "runs")],
                  "low=1.0 must be < high=1.0", root=tmp_path)


# ============================================================================ command-line options

@pytest.mark.parametrize("option, value, words", [
    ("--threads", "-1", "--threads (torch_threads) must be >= 0, got -1"),
    ("--video-frames", "-1", "--video-frames (video_frames) must be >= 0"),
    ("--checkpoint-every", "0", "--checkpoint-every (checkpoint_every_frames) must be >= 1"),
    ("--action-repeat", "0", "--action-repeat (action_repeat) must be >= 1"),
    ("--seed", "-3", "--seed (seed) must be >= 0"),
    ("--frames-per-task", "0", "--frames-per-task must be a positive integer"),
    ("--frames-per-task", "1000000000000000000", "--frames-per-task must be <="),
    ("--eval-every", "0", "--eval-every must be a positive integer"),
    ("--eval-episodes", "0", "--eval-episodes must be a positive integer"),
])
def test_run_stream_options_out_of_range(mlflow_uri, tmp_path, option, value, words):
    fails_cleanly(["run-stream", "quick", "--obs", "proprio", "--runs-dir", str(tmp_path / "runs"), option, value],
                  words, root=tmp_path)


def test_run_config_and_stream_validate_every_field():
    stream = StreamSpec("s", (TaskSpec("cartpole-balance", 100),), EvalSpec(100, 1))
    for field, value, words in (("torch_threads", -1, "--threads"), ("video_frames", -2, "--video-frames"),
                                ("log_every_frames", 0, "--log-every"), ("runs_dir", " ", "--runs-dir")):
        with pytest.raises(HarnessError, match=_re(words)):
            RunConfig(stream=stream, method="random", **{field: value}).validate()
    bad = StreamSpec("s", (TaskSpec("cartpole-balance", 0),), EvalSpec(100, 1))
    with pytest.raises(HarnessError, match=r"tasks\[0\]\.frames must be a positive integer"):
        RunConfig(stream=bad, method="random").validate()   # e.g. a stream read back for --resume


def test_pipeline_options_and_set_are_checked_before_the_first_stage(mlflow_uri, tmp_path):
    work = ["--workdir", str(tmp_path / "pipe")]
    fails_cleanly(["pipeline", "quick", "--threads", "-1", *work], "--threads must be >= 0", root=tmp_path)
    fails_cleanly(["pipeline", "quick", "--seed", "-1", *work], "--seed must be >= 0", root=tmp_path)
    fails_cleanly(["pipeline", "quick", "--frames-per-task", "0", *work], "--frames-per-task must be >= 1",
                  root=tmp_path)
    fails_cleanly(["pipeline", "quick", "--set", "agent.batch_size=0", *work], "agent.batch_size=0", "[1, 65536]",
                  root=tmp_path)
    fails_cleanly(["pipeline", "quick", "--preset", "huge", *work], "unknown preset 'huge'", root=tmp_path)
    assert not (tmp_path / "pipe").exists()   # nothing collected


def test_pretrain_options_are_checked(mlflow_uri, tmp_path):
    fails_cleanly(["pretrain", "--data", "missing", "--threads", "-2"], "--threads must be >= 0", root=tmp_path)
    fails_cleanly(["pretrain", "--data", "missing", "--steps", "0"], "--steps must be >= 1", root=tmp_path)
    fails_cleanly(["pretrain", "--data", "missing", "--preset", "debug", "--set", "model.lr=nan"],
                  "model.lr=nan is not finite", root=tmp_path)


@pytest.mark.parametrize("field, value, words", [
    ("action_repeat", 0, "--action-repeat must be >= 1"), ("seed", -1, "--seed must be >= 0"),
    ("shard_steps", 0, "--shard-steps must be >= 1"), ("episode_frames", 0, "--episode-frames must be >= 1"),
    ("action_pad_dim", -1, "--action-pad-dim must be >= 1"), ("episodes", 0, "--episodes must be >= 1"),
])
def test_collect_config_checks_every_option(field, value, words):
    with pytest.raises(HarnessError, match=_re(words)):
        CollectConfig(tasks=("cartpole-balance",), **{field: value}).validate()


def test_collect_device_is_checked_for_the_learning_explorers(mlflow_uri, tmp_path):
    with pytest.raises(HarnessError, match=_re("unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N")):
        CollectConfig(tasks=("walker-stand",), policies=("icm",), device="tpu").validate()
    CollectConfig(tasks=("walker-stand",), policies=("random",), device="tpu").validate()   # nothing learns there
    args = ["--tasks", "walker-stand", "--policies", "icm", "--obs", "proprio", "--episodes", "1"]
    fails_cleanly(["collect", "data", *args, "--device", "tpu"], "unknown device 'tpu'", root=tmp_path)
    if not torch.cuda.is_available():
        fails_cleanly(["collect", "data", *args, "--device", "cuda"], "CUDA is not available here", root=tmp_path)
    assert not (tmp_path / "data").exists()   # checked before anything is written


def test_collect_into_a_file_or_an_unwritable_place_is_one_line(mlflow_uri, tmp_path):
    (tmp_path / "afile").write_text("x")
    args = ["--tasks", "cartpole-balance", "--obs", "proprio", "--episodes", "1"]
    fails_cleanly(["collect", "afile", *args], "afile", root=tmp_path)                # click: 'is a file'
    fails_cleanly(["collect", "afile/data", *args], "cannot create the dataset directory afile/data",
                  root=tmp_path)
    fails_cleanly(["collect", "/proc/gsa-harness-test/data", *args], "cannot create the dataset directory",
                  root=tmp_path)
    with pytest.raises(HarnessError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "afile")


# ============================================================================ files, directories, plugins

def test_a_fifo_or_a_directory_as_stream_file_says_it_is_not_a_regular_file(mlflow_uri, tmp_path):
    os.mkfifo(tmp_path / "pipe.toml")
    (tmp_path / "dir.toml").mkdir()
    fails_cleanly(["run-stream", "--stream-file", "pipe.toml"], "is not a regular file but a named pipe",
                  root=tmp_path)
    fails_cleanly(["streams", "add", "pipe.toml"], "is not a regular file but a named pipe", root=tmp_path)
    with pytest.raises(HarnessError, match="is not a regular file but a directory"):
        load_stream_file(tmp_path / "dir.toml")
    with pytest.raises(HarnessError, match="does not exist"):
        load_stream_file(tmp_path / "nothing.toml")


def test_streams_add_when_the_streams_dir_is_a_file(mlflow_uri, tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(STREAM)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path / "not-a-dir"))
    fails_cleanly(["streams", "add", "mine.toml"], "GSA_STREAMS_DIR", "not-a-dir", "is not a directory")
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path / "not-a-dir" / "sub"))
    with pytest.raises(HarnessError, match="cannot store the stream in GSA_STREAMS_DIR"):
        add_stream_file(tmp_path / "mine.toml")


@pytest.mark.parametrize("code, words", [
    ("raise RuntimeError('boom')\n", "RuntimeError: boom (at "),
    ("def broken(:\n", "SyntaxError: "),
    ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
    ("x = 1 / 0\n", "ZeroDivisionError"),
])
def test_a_plugin_that_raises_anything_is_one_line(mlflow_uri, tmp_path, monkeypatch, code, words):
    name = f"gsa_test_plugin_{abs(hash(code))}"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    fails_cleanly(["--plugin", name, "streams", "list"], f"plugin module {name!r}", words, root=tmp_path)
    with pytest.raises(HarnessError):
        load_plugins([name])


def test_a_bug_of_ours_still_shows_its_traceback(monkeypatch):
    """Only user-input errors are turned into one line; anything else is a bug and keeps its traceback."""
    import harness.streams
    monkeypatch.setattr(harness.streams, "all_stream_names", lambda: 1 / 0)
    res = CliRunner().invoke(cli.main, ["streams", "list"])
    assert res.exit_code != 0 and isinstance(res.exception, ZeroDivisionError)


# ============================================================================ non-finite values in updates

def test_two_hot_log_prob_of_a_nan_target_is_nan_not_an_index_error():
    from methods.backbone.nets import TwoHot
    lp = TwoHot(torch.zeros(3, 15), 20.0).log_prob(torch.tensor([0.0, math.nan, math.inf]))
    assert torch.isfinite(lp[0]) and torch.isnan(lp[1]) and torch.isfinite(lp[2])


def test_optimizer_raises_naming_the_loss_and_its_non_finite_terms():
    from methods.backbone.nets import Optimizer
    w = torch.nn.Parameter(torch.ones(2))
    opt = Optimizer([w], 1e-3, 1e-5, 0.0, 100.0, name="wm/loss")
    loss = (w * math.nan).sum()
    with pytest.raises(NonFiniteLossError, match=r"^non-finite wm/loss=nan \(also non-finite: wm/kl=inf\)$"):
        opt.step(loss, {"wm/loss": loss.detach(), "wm/kl": torch.tensor(math.inf), "wm/ok": torch.tensor(1.0)})
    assert torch.equal(w.detach(), torch.ones(2))   # the weights were not touched


def _feed(method, episodes: int, length: int, obs_dim: int, action_dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        for t in range(length + 1):
            last = t == length
            action = np.zeros(action_dim, np.float32) if last else rng.uniform(-1, 1, action_dim).astype(np.float32)
            method.observe(Step({"proprio": rng.standard_normal(obs_dim).astype(np.float32)}, action,
                                float(rng.random()) if t else 0.0, t == 0, last, False))


def _task(action_dim: int) -> TaskContext:
    return TaskContext(0, "cartpole-balance", "cartpole", "dmc", 1000, np.ones(action_dim, np.float32), 2)


def test_dreamer_with_a_huge_learning_rate_stops_with_non_finite_loss_error(tmp_path):
    """--set model.lr=1e30 used to crash in the two-hot log_prob with 'index -9223372036854775808 is out of
    bounds'; the update now raises NonFiniteLossError naming the loss."""
    from methods.dreamer import Dreamer
    cfg = resolve_config(METHODS.load("dreamer"), "dreamer", "debug", {"model.lr": "1e30"})
    ctx = MethodContext(("cartpole-balance",), {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    torch.manual_seed(0)
    d = Dreamer(cfg, ctx)
    d.on_task_start(_task(1))
    _feed(d, 2, 60, 5, 1)
    assert not d.warming_up
    with pytest.raises(NonFiniteLossError, match=r"^non-finite (wm|actor|critic)/loss="):
        for _ in range(5):
            d.train_step()


def test_actor_critic_with_a_diverged_world_model_raises_not_index_error():
    from methods.backbone.actor_critic import ActorCritic
    from methods.backbone.config import DEBUG_AC, DEBUG_MODEL
    from methods.backbone.world_model import WorldModel
    torch.manual_seed(0)
    wm = WorldModel(DEBUG_MODEL, {"proprio": ((5,), "float32")}, 1)
    ac = ActorCritic(DEBUG_AC, DEBUG_MODEL.feat_dim, 1)
    with torch.no_grad():
        wm.reward_head.out.weight.fill_(math.nan)   # imagined rewards, hence the critic's targets, are nan
    start = {k: v for k, v in wm.initial(4).items()}
    with pytest.raises(NonFiniteLossError, match=r"^non-finite actor/loss=nan"):
        ac.train_step(wm, start, torch.ones(4), torch.ones(1))


def test_drqv2_update_raises_on_a_non_finite_loss(tmp_path):
    from methods.drqv2 import DrQV2
    cfg = resolve_config(METHODS.load("drqv2"), "drqv2", "debug", {"seed_frames": "0"})
    ctx = MethodContext(("cartpole-balance",), {"proprio": ((5,), "float32")}, 1, 0, "cpu", tmp_path)
    m = DrQV2(cfg, ctx)
    m.on_task_start(_task(1))
    _feed(m, 2, 30, 5, 1)
    assert np.isfinite(m._update()["critic/loss"])
    with torch.no_grad():
        next(m.critic.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite critic/loss=nan"):
        m._update()


@pytest.mark.parametrize("script,args,words", [
    ("bench_gsa_evidence.py", ["--methods", "bar", "--summary-only"], "unknown method 'bar'. Valid methods:"),
    ("bench_gsa_evidence.py", ["--seeds", "0,x", "--summary-only"], "--seeds takes comma-separated integers"),
    ("bench_gsa_evidence.py", ["--tasks", "foo", "--prepare-only"], "unknown task 'foo'. Valid tasks:"),
    ("bench_gsa_evidence.py", ["--frames", "0", "--summary-only"], "--frames must be > 0"),
    ("bench_ant.py", ["--methods", "gsa,gsa"], "--methods names one twice"),
    ("bench_cl.py", ["--seeds", "-1", "--compare-only"], "distinct integers >= 0"),
    ("bench_gsa.py", ["--tasks", "walker-stand,", "--summary-only"], "--tasks takes comma-separated names"),
])
def test_a_benchmark_with_a_bad_grid_says_so_and_rewrites_nothing(script, args, words, tmp_path):
    """The benchmarks check their grid before anything runs or is rewritten: a typo in ``--methods`` once
    rewrote the shipped evidence report as an empty one."""
    import subprocess
    import sys
    root = Path(cli.__file__).parent
    results = root / "benchmarks" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args], capture_output=True, text=True,
                       cwd=tmp_path, env=os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}, timeout=120)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before
