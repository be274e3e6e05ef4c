"""Every registered method on CUDA: a short two-task run that trains, evaluates and checkpoints on the GPU
(state observations; pixels for the learners that read them), and GSA's pre-training and retrieval on the GPU.

Skipped where CUDA is missing, as on CI: run ``pytest tests/test_cuda.py`` on a GPU machine (``-n 8`` with
pytest-xdist; ``benchmarks/gpu_check.py`` does, first; on an H200 the first 20 passed in 79 s). The first GPU run
found that every backbone method stopped at its first gradient update (the CPU grad-norm scalars stacked
with the CUDA losses in ``metrics_to_floats``)."""
from __future__ import annotations

import math
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.collect import CollectConfig, collect
from harness.config import RunConfig
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from methods import METHODS
from tasks.base import EnvConfig

DEVICE = os.environ.get("GSA_TEST_DEVICE", "cuda")      # GSA_TEST_DEVICE=cpu: the same checks on the CPU (slow)
pytestmark = [pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs CUDA (run on a GPU machine)"),
              pytest.mark.usefixtures("one_torch_thread")]

GENERALIST = ("gsa", "gsa-p", "gsa-p-er", "gsa-p-g", "jsrl-bc")   # fine-tune or read a pre-trained model
PIXELS = ("dreamer", "drqv2", "packnet", "gsa")
FRAMES = 600                                                          # per task: past every debug warm-up
TASKS = ("cartpole-balance", "walker-stand")
QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def generalists(tmp_path_factory, one_torch_thread):
    """Reward-free random data of both embodiments, a debug world model pre-trained on it on CUDA per
    observation kind, and its retrieval index."""
    from harness.pretraining import pretrain
    from methods.gsa.pretrain import make_config
    from methods.gsa.retrieval import build_index
    root = tmp_path_factory.mktemp("cuda-generalist")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        collect(root / "ds", CollectConfig(tasks=("cartpole-balance", "walker-walk"), episodes=3, policies=("random",),
                                           obs_type="both", episode_frames=100, render_quality="fast", seed=1), **QUIET)
        for obs in ("proprio", "pixels"):
            res = pretrain(root / "ds", make_config("debug", {"grad_updates": "6", "openloop_every": "100"}),
                           out=root / f"pt-{obs}", runs_dir=root / "runs", obs_keys=[obs], device=DEVICE, **QUIET)
            build_index(res.out, **QUIET)
            out[obs] = res.out
    return out


def _run(method: str, obs: str, tmp_path, pretrained=None):
    over: tuple[tuple[str, str], ...] = ()
    if pretrained is not None:
        over = (("pretrained", str(pretrained)),)
        if method != "jsrl-bc":
            over += (("agent.warmup_min_episodes", "0"),)
    tasks = TASKS[:1] if obs == "pixels" else TASKS
    cfg = RunConfig(stream=StreamSpec("cuda", tuple(TaskSpec(t, FRAMES) for t in tasks), EvalSpec(FRAMES, 1)),
                    method=method, seed=0, preset="debug", overrides=over, device=DEVICE, torch_threads=1,
                    env=EnvConfig(obs_type=obs, render_quality="fast", episode_frames=100),
                    checkpoint_every_frames=FRAMES // 2, video_frames=0, runs_dir=str(tmp_path / "runs"))
    res = run_stream(cfg, **QUIET)
    client = MlflowClient()
    parent = client.get_run(res.run_id)
    metrics = dict(parent.data.metrics)      # the run's summary; its per-task child runs hold the training metrics
    for child in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res.run_id}'"):
        metrics |= {f"{child.info.run_name}/{k}": v for k, v in child.data.metrics.items()}
    return res, metrics


def _check(method: str, res, metrics: dict[str, float]) -> None:
    assert all(math.isfinite(float(x)) for x in res.R.ravel()), f"{method}: non-finite scores {res.R}"
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    assert not bad, f"{method}: non-finite metrics {bad}"
    if method != "random":
        trained = [k for k, v in metrics.items() if k.endswith("/loss") or (k.endswith("grad_updates") and v > 0)]
        assert trained, f"{method}: no gradient update on CUDA in {FRAMES} env frames per task ({sorted(metrics)})"


@pytest.mark.parametrize("method", [m for m in METHODS.names() if m not in GENERALIST])
def test_every_method_trains_on_cuda_from_state(method, mlflow_uri, tmp_path):
    res, metrics = _run(method, "proprio", tmp_path)
    _check(method, res, metrics)


@pytest.mark.parametrize("method", GENERALIST)
def test_the_gsa_family_fine_tunes_a_cuda_pretrained_model(method, generalists, mlflow_uri, tmp_path):
    res, metrics = _run(method, "proprio", tmp_path, generalists["proprio"])
    _check(method, res, metrics)


@pytest.mark.parametrize("method", PIXELS)
def test_pixel_learners_train_on_cuda(method, generalists, mlflow_uri, tmp_path):
    res, metrics = _run(method, "pixels", tmp_path, generalists["pixels"] if method in GENERALIST else None)
    _check(method, res, metrics)


@pytest.mark.parametrize("policy", ["icm", "disagreement"])
def test_the_learning_explorers_collect_on_cuda(policy, mlflow_uri, tmp_path):
    """``cli.py collect --device cuda``: the curiosity explorers train on the GPU while they collect."""
    res = collect(tmp_path / "ds", CollectConfig(tasks=("walker-stand",), policies=(policy,), episodes=3,
                                                 obs_type="proprio", episode_frames=100, render_quality="fast",
                                                 explorer_preset="debug", device=DEVICE), **QUIET)
    (row,) = res.settings
    assert row["explorer_updates"] > 5 and math.isfinite(row["explorer_intrinsic_reward"]), row
    assert MlflowClient().get_run(res.run_id).data.params["collect.device"] == DEVICE
