"""Minari round trip (harness/offline/minari.py): collect, export, import, and the same steps come back;
then a Minari dataset used where datasets are used (pre-training and its retrieval index)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from harness.collect import CollectConfig, collect
from harness.errors import HarnessError
from harness.offline import open_dataset
from harness.offline.minari import export_minari

pytestmark = [pytest.mark.filterwarnings("ignore:`in1d` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """walker-walk alone (pixels and proprio), and cartpole + reach-v3 (proprio): real collection, tiny."""
    root = tmp_path_factory.mktemp("minari-src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        quiet = dict(echo=lambda *_: None)
        collect(root / "walker", CollectConfig(tasks=("walker-walk",), episodes=1, policies=("random", "ou"),
                                               noise=(0.5,), obs_type="both", episode_frames=16, render_quality="fast",
                                               seed=1), **quiet)
        collect(root / "mixed", CollectConfig(tasks=("cartpole-balance", "reach-v3"), episodes=2, noise=(0.3,),
                                              obs_type="proprio", episode_frames=12, seed=2), **quiet)
    return root


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def assert_same_steps(a, b):
    assert a.num_episodes == b.num_episodes and a.fingerprint() == b.fingerprint()
    assert a.obs_spec == b.obs_spec and a.action_pad_dim == b.action_pad_dim
    for i, j in zip(a.episode_ids, b.episode_ids):
        ea, eb = a.episode(int(i)), b.episode(int(j))
        assert ea.keys() == eb.keys()
        for k in ea:
            assert ea[k].dtype == eb[k].dtype and np.array_equal(ea[k], eb[k]), k
        ma, mb = a.meta(int(i)), b.meta(int(j))
        assert (ma.uid, ma.embodiment, ma.task, ma.policy, ma.noise, ma.action_dim, ma.length, ma.seed) == \
               (mb.uid, mb.embodiment, mb.task, mb.policy, mb.noise, mb.action_dim, mb.length, mb.seed)


def test_round_trip_one_task_with_its_env_spec(datasets, minari_root):
    import minari
    path = export_minari(datasets / "walker", "gsa/walker-both-v0", author="tester", echo=lambda *_: None)
    assert path == minari_root / "gsa/walker-both-v0"
    with open_dataset(datasets / "walker", "all") as a, open_dataset("minari:gsa/walker-both-v0", "all") as b:
        assert b.format == "minari"
        assert_same_steps(a, b)
        batch = b.sample(2, 4, np.random.default_rng(0))
        assert batch["pixels"].shape == (2, 4, 3, 64, 64) and batch["action"].shape == (2, 4, 6)
    ds = minari.load_dataset("gsa/walker-both-v0")
    assert ds.env_spec.id == "gsa/walker-walk-v0"
    assert ds.env_spec.kwargs == {"task": "walker-walk", "obs_type": "both", "action_pad_dim": 6, "image_size": 64,
                                  "proprio_pad_dim": 24}
    episode = ds[0]
    assert np.isnan(episode.rewards).all()                                   # absent, as in ours
    assert episode.truncations[-1] and not episode.terminations.any()
    meta = next(iter(ds.storage.get_episode_metadata([0])))
    assert {"uid", "embodiment", "task", "policy", "noise", "action_dim", "env_seed"} <= set(meta)
    env = ds.recover_environment()                                           # our Gymnasium env, same spaces
    assert env.observation_space == ds.observation_space and env.action_space == ds.action_space
    env.close()


def test_round_trip_several_tasks_has_no_env_spec(datasets, minari_root):
    import minari
    export_minari(datasets / "mixed", "mixed-v1", echo=lambda *_: None)
    with open_dataset(datasets / "mixed") as a, open_dataset("minari:mixed-v1") as b:
        assert_same_steps(a, b)
        assert b.embodiments() == ["cartpole", "sawyer"]
    assert minari.load_dataset("mixed-v1").env_spec is None


def test_cli_export_then_pretrain_and_index_from_minari(datasets, minari_root, mlflow_uri, tmp_path):
    from cli import main
    runner = CliRunner()
    out = runner.invoke(main, ["datasets", "export", str(datasets / "mixed"), "--minari", "gsa/mixed-v0"])
    assert out.exit_code == 0, out.output
    assert "use it with: --data minari:gsa/mixed-v0" in out.output
    out = runner.invoke(main, ["pretrain", "--data", "minari:gsa/mixed-v0", "--preset", "debug", "--steps", "2",
                               "--set", "seq_len=4", "--set", "openloop_context=2", "--out", str(tmp_path / "pt"),
                               "--build-index"])
    assert out.exit_code == 0, out.output
    info = json.loads((tmp_path / "pt" / "pretrain.json").read_text())
    assert info["data"] == "minari:gsa/mixed-v0"
    index = json.loads((tmp_path / "pt" / "index" / "index.json").read_text())
    with open_dataset(datasets / "mixed") as src:
        assert index["dataset_fingerprint"] == src.fingerprint()   # the same trajectories, by uid
    out = runner.invoke(main, ["datasets", "show", "minari:gsa/mixed-v0"])
    assert out.exit_code == 0 and "(minari)" in out.output


def test_bad_ids_and_missing_datasets_are_clear(datasets, minari_root):
    with pytest.raises(HarnessError, match="not a Minari dataset id"):
        export_minari(datasets / "mixed", "no-version", echo=lambda *_: None)
    export_minari(datasets / "mixed", "dup-v0", echo=lambda *_: None)
    with pytest.raises(HarnessError, match="already exists"):
        export_minari(datasets / "mixed", "dup-v0", echo=lambda *_: None)
    with pytest.raises(HarnessError, match="no Minari dataset 'gone-v0'.*there: dup-v0"):
        open_dataset("minari:gone-v0")
    with pytest.raises(HarnessError, match="cannot read pixels"):
        open_dataset("minari:dup-v0", ["pixels"])
