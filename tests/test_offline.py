"""Offline datasets on real collected episodes: storage, streaming reads, the ncrl layout, damaged data."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from offline_data import TASKS, collected, copy_dataset, flip_bytes, ncrl_files, truncate, write_ncrl

from harness.collect import CollectConfig, OUPolicy, plan
from harness.errors import HarnessError
from harness.offline import FLAG_KEYS, DamagedEpisodeWarning, DatasetWriter, Prefetcher, open_dataset
from harness.replay import EpisodeReplay, MixedSampler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return collected(tmp_path_factory)


def _episode(rng, t, adim, pad=6, size=8):
    a = np.zeros((t, pad), np.float32)
    a[:-1, :adim] = rng.uniform(-1, 1, (t - 1, adim))
    flags = {k: np.zeros(t, bool) for k in FLAG_KEYS}
    flags["is_first"][0] = flags["is_last"][-1] = True
    return {"pixels": rng.integers(0, 255, (t, 3, size, size), dtype=np.uint8),
            "proprio": rng.standard_normal((t, 5)).astype(np.float32), "action": a, **flags}


def _write(path, episodes, compression="zlib", shard_steps=50, chunk_steps=7):
    spec = {"pixels": ((3, 8, 8), np.uint8), "proprio": ((5,), np.float32)}
    with DatasetWriter(path, spec, 6, shard_steps=shard_steps, compression=compression, chunk_steps=chunk_steps) as w:
        for i, e in enumerate(episodes):
            w.add_episode(e, embodiment="walker" if i % 2 else "sawyer", task="t", policy="random", noise=None,
                          action_dim=6 if i % 2 else 4, seed=i)
    return path


# ----------------------------------------------------------------------------- collection

def test_collect_plan_follows_the_paper_noise_levels():
    cfg = CollectConfig(tasks=("reach-v3", "walker-walk"))
    labels = [(s.task, s.label) for s in plan(cfg)]
    assert labels[:5] == [("reach-v3", f"expert-{s}") for s in ("0.1", "0.3", "0.5", "1", "2")]
    assert ("walker-walk", "random") in labels and ("walker-walk", "ou-0.3") in labels
    with pytest.raises(HarnessError, match="expert' exists for Meta-World tasks only"):
        plan(CollectConfig(tasks=("walker-walk",), policies=("expert",)))
    with pytest.raises(HarnessError, match="unknown task 'walker-fly'"):
        CollectConfig(tasks=("walker-fly",)).validate()


def test_ou_noise_is_temporally_correlated_with_the_asked_std():
    pol = OUPolicy(3, sigma=0.3, theta=0.15, rng=np.random.default_rng(0))
    pol.reset()
    a = np.array([pol.act({}) for _ in range(20000)])
    assert abs(a.std() - 0.3) < 0.03
    lag1 = np.corrcoef(a[:-1, 0], a[1:, 0])[0, 1]
    assert 0.8 < lag1 < 0.9   # 1 - theta = 0.85


def test_collected_dataset_is_reward_free_with_metadata_and_flags(dataset_dir):
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert "reward" not in manifest["schema"] and set(manifest["schema"]) == {
        "pixels", "proprio", "action", "is_first", "is_last", "is_terminal"}
    assert len(manifest["shards"]) >= 3
    files = {p.name for p in dataset_dir.rglob("*") if p.is_file()}
    assert not any("reward" in f for f in files)
    ds = open_dataset(dataset_dir, ["pixels", "proprio"])
    assert ds.num_episodes == 10 and ds.damaged == []
    assert ds.action_pad_dim == 6 and ds.obs_spec["proprio"][0] == (39,)   # Meta-World's 39-d state is the largest
    by = {(e.embodiment, e.policy, e.noise) for e in ds.episodes}
    assert by == {("walker", "random", None), ("walker", "ou", 0.5), ("cheetah", "random", None),
                  ("cheetah", "ou", 0.5), ("sawyer", "expert", 0.5)}
    for ep in ds.episode_ids:
        meta, e = ds.meta(int(ep)), ds.episode(int(ep))
        assert meta.length == 21 and e["pixels"].shape == (21, 3, 64, 64) and e["pixels"].std() > 5
        assert e["is_first"].tolist() == [True] + [False] * 20 and e["is_last"].tolist() == [False] * 20 + [True]
        assert not np.any(e["action"][:, meta.action_dim:]) and not np.any(e["action"][-1])   # padding, last step
        assert np.abs(e["action"]).max() <= 1.0
        assert np.array_equal(e["action_mask"][0], (np.arange(6) < meta.action_dim).astype(np.float32))
        assert (meta.embodiment == "sawyer") == (meta.action_dim == 4)
    s = ds.summary()
    assert s["embodiments"]["sawyer"]["tasks"] == {"reach-v3": 2}
    assert s["bytes_per_million_steps"] > 0 and s["compressed_columns"] == ["pixels:zlib"]
    # The MLflow run describing the dataset.
    client = MlflowClient(f"sqlite:///{dataset_dir.parent / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["dataset_path"] == str(dataset_dir.resolve())
    assert run.data.params["collect.tasks"] == str(TASKS)
    assert run.data.metrics["dataset/episodes"] == 10 and run.data.metrics["collect/reach-v3/expert-0.5/success_rate"] >= 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "dataset_summary.json", "collect_settings.json", "first_frames.png"}


def test_append_keeps_the_schema_and_adds_new_seeds(dataset_dir, tmp_path, monkeypatch):
    from harness.collect import collect
    monkeypatch.chdir(tmp_path)
    ds_dir = copy_dataset(dataset_dir, tmp_path / "ds")
    cfg = CollectConfig(tasks=("walker-walk",), policies=("random",), episodes=1, obs_type="both", episode_frames=10,
                        render_quality="fast", seed=1, append=True)
    res = collect(ds_dir, cfg, echo=lambda *_: None, log_mlflow=False)
    assert res.summary["episodes"] == 11
    with pytest.raises(HarnessError, match="already holds a dataset"):
        collect(ds_dir, CollectConfig(tasks=("walker-walk",), obs_type="both"), log_mlflow=False)
    with pytest.raises(HarnessError, match="schema differs"):
        collect(ds_dir, CollectConfig(tasks=("walker-walk",), obs_type="pixels", append=True), log_mlflow=False)


# ----------------------------------------------------------------------------- storage and sampling

@pytest.mark.parametrize("compression", ["zlib", "none"])
def test_roundtrip_and_windows_are_exact(tmp_path, compression):
    rng = np.random.default_rng(0)
    eps = [_episode(rng, 12 + i, 6 if i % 2 else 4) for i in range(9)]
    ds = open_dataset(_write(tmp_path / "d", eps, compression), ["pixels", "proprio"])
    assert ds.num_episodes == 9 and len(ds) == sum(len(e["is_first"]) for e in eps)
    for i, e in enumerate(eps):
        got = ds.episode(i)
        for k in e:
            assert np.array_equal(got[k], e[k]), k
    b = ds.sample(64, 10, np.random.default_rng(1), extras=("episode_id", "action_mask"))
    for r in range(64):
        e = eps[b["episode_id"][r]]
        starts = [s for s in range(len(e["pixels"]) - 9) if np.array_equal(e["pixels"][s:s + 10], b["pixels"][r])]
        assert starts, "a sampled window is not a window of its episode"
        s = starts[0]
        prev = np.concatenate([np.zeros((1, 6), np.float32), e["action"][:-1]])
        assert np.array_equal(b["action"][r], e["action"][s:s + 10])
        assert np.array_equal(b["prev_action"][r], prev[s:s + 10])
        assert np.array_equal(b["is_first"][r], e["is_first"][s:s + 10])
        assert b["action_mask"][r, 0].sum() == (6 if b["episode_id"][r] % 2 else 4)


def test_sampling_is_uniform_over_windows(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [10, 20, 40]
    ds = open_dataset(_write(tmp_path / "d", [_episode(rng, t, 4) for t in lengths]), ["pixels"])
    ids = ds.sample(6000, 5, np.random.default_rng(2), extras=("episode_id",))["episode_id"]
    expected = np.array([t - 4 for t in lengths], float)
    assert np.allclose(np.bincount(ids, minlength=3) / 6000, expected / expected.sum(), atol=0.03)
    with pytest.raises(HarnessError, match="has 41 steps or more .longest: 40"):
        ds.sample(2, 41, np.random.default_rng(0))
    bal = ds.sample(4000, 5, np.random.default_rng(3), balance="embodiment", extras=("episode_id",))
    assert len(set(bal["episode_id"].tolist())) == 3


def test_samples_have_the_replay_keys_and_mix_with_online_data(dataset_dir):
    ds = open_dataset(dataset_dir, ["pixels"])
    online = EpisodeReplay()
    e = ds.episode(0)
    online.add_episode({"pixels": e["pixels"], "action": e["action"], "prev_action": e["prev_action"],
                        "reward": np.ones(len(e["pixels"]), np.float32), "is_first": e["is_first"],
                        "is_last": e["is_last"], "is_terminal": e["is_terminal"]})
    rng = np.random.default_rng(0)
    off, on = ds.sample(4, 8, rng), online.sample(4, 8, rng)
    assert set(on) - set(off) == {"reward"} and set(off) <= set(on)
    for k in off:
        assert off[k].dtype == on[k].dtype and off[k].shape == on[k].shape, k
    mixed = MixedSampler([(online, 0.75), (ds, 0.25)]).sample(8, 8, rng)
    assert mixed["source"].tolist() == [0] * 6 + [1] * 2
    assert np.all(mixed["reward"][6:] == 0) and np.all(mixed["reward"][:6] == 1)


def test_prefetcher_is_deterministic_and_resumable(dataset_dir):
    ds = open_dataset(dataset_dir)
    fn = lambda rng: ds.sample(2, 5, rng, extras=("episode_id",))   # noqa: E731
    with Prefetcher(fn, seed=3) as pf:
        first = [pf.next()[0] for _ in range(4)]
    with Prefetcher(fn, seed=3, start=2, workers=3) as pf:   # several workers: same batches, same order
        again = [pf.next()[0] for _ in range(2)]
    for a, b in zip(first[2:], again):
        assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["episode_id"], b["episode_id"])

    def boom(rng):
        raise HarnessError("data went away")
    with Prefetcher(boom, seed=0) as pf, pytest.raises(HarnessError, match="data went away"):
        pf.next()


# ----------------------------------------------------------------------------- crashes and damage

def test_a_crashed_writer_leaves_the_completed_shards(tmp_path):
    rng = np.random.default_rng(0)
    spec = {"pixels": ((3, 8, 8), np.uint8), "proprio": ((5,), np.float32)}
    w = DatasetWriter(tmp_path / "d", spec, 6, shard_steps=30)
    for _ in range(7):   # 7 x 12 steps: two shards of 3 episodes committed, one open
        w.add_episode(_episode(rng, 12, 4), embodiment="sawyer", task="t", policy="random", noise=None, action_dim=4)
    # The process dies here: the open shard is never committed (and the OS closes its files).
    for col in w._cols.values():
        col.abort()
    assert list((tmp_path / "d" / "shards").glob("*.tmp"))
    ds = open_dataset(tmp_path / "d")
    assert ds.num_episodes == 6 and ds.damaged == []
    with pytest.warns(DamagedEpisodeWarning, match="unfinished shard"):
        DatasetWriter(tmp_path / "d", spec, 6, append=True).close()
    assert not list((tmp_path / "d" / "shards").glob("*.tmp"))
    # A shard renamed into place just before a crash, but not yet in the manifest, is still read.
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    m["shards"] = m["shards"][:1]
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(DamagedEpisodeWarning, match="not in the manifest"):
        assert open_dataset(tmp_path / "d").num_episodes == 6


def test_damaged_episodes_are_skipped_with_a_warning_and_counted(dataset_dir, tmp_path):
    d = copy_dataset(dataset_dir, tmp_path / "ds")
    shards = sorted((d / "shards").iterdir())
    # 1. a truncated pixel file: its last episodes are lost, its first ones still load
    truncate(shards[0] / "pixels.zlib", 0.6)
    # 2. an unreadable shard table: the whole shard is skipped
    (shards[1] / "shard.json").write_text("{not json")
    # 3. a corrupt chunk in the middle of a pixel file: found when read
    idx = np.load(shards[2] / "pixels.zindex.npy")
    flip_bytes(shards[2] / "pixels.zlib", int(idx[1]) + 10)
    with pytest.warns(DamagedEpisodeWarning) as caught:
        ds = open_dataset(d)
        for _ in range(30):
            ds.sample(4, 5, np.random.default_rng(_))
    messages = " ".join(str(w.message) for w in caught)
    assert "truncated" in messages and "shard.json unreadable" in messages and "chunk 1 is corrupt" in messages
    n_damaged_at_open = 2
    assert len(ds.damaged) >= n_damaged_at_open + 1
    assert 0 < ds.num_episodes < 10
    assert ds.summary()["damaged"] == len(ds.damaged)
    # What is left is all readable.
    assert ds.verify() == 0


def test_empty_missing_and_inconsistent_datasets_are_clear_errors(dataset_dir, tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="not an offline dataset: it has no manifest.json"):
        open_dataset(tmp_path / "empty")
    DatasetWriter(tmp_path / "none", {"pixels": ((3, 8, 8), np.uint8)}, 4).close()
    with pytest.raises(HarnessError, match="holds no usable episode"):
        open_dataset(tmp_path / "none")
    d = copy_dataset(dataset_dir, tmp_path / "ds")
    with pytest.raises(HarnessError, match="stores pixels, proprio; cannot read rgbd"):
        open_dataset(d, ["rgbd"])
    shard = sorted((d / "shards").iterdir())[1] / "shard.json"
    info = json.loads(shard.read_text())
    info["schema"]["action"]["shape"] = [21]
    shard.write_text(json.dumps(info))
    with pytest.raises(HarnessError, match=r"inconsistent dataset .*shard.json contradicts .*"
                                         r"schema\.action\.shape is \[21\] in shard.json, \[6\] in manifest.json"):
        open_dataset(d)
    (d / "manifest.json").write_text("{")
    with pytest.raises(HarnessError, match="manifest.json is unreadable"):
        open_dataset(d)


# ----------------------------------------------------------------------------- the paper code's layout

def test_ncrl_layout_reads_the_same_episodes_and_tells_walker_from_cheetah(dataset_dir, tmp_path):
    root = write_ncrl(dataset_dir, tmp_path / "ncrl")
    names = [p.relative_to(root).as_posix() for p in ncrl_files(root)]
    assert any(n.startswith("dmcontrol/walker/") for n in names) and any(n.startswith("metaworld/reach-v3/") for n in names)
    ours = open_dataset(dataset_dir, ["pixels"])
    theirs = open_dataset(root, action_pad_dim=21)
    assert theirs.format == "ncrl" and theirs.num_episodes == 10 and theirs.action_pad_dim == 21
    assert theirs.embodiments() == ["cheetah", "sawyer", "walker"]
    by_uid = {theirs.meta(int(i)).uid: int(i) for i in theirs.episode_ids}
    for ep in ours.episode_ids:
        m = ours.meta(int(ep))
        a, b = ours.episode(int(ep)), theirs.episode(by_uid[m.uid])
        assert theirs.meta(by_uid[m.uid]).embodiment == m.embodiment
        assert np.array_equal(a["pixels"], b["pixels"])
        assert np.array_equal(a["action"][:, :m.action_dim], b["action"][:, :m.action_dim])   # conventions agree
        assert not b["action"][:, m.action_dim:].any() and b["action_mask"][0].sum() == m.action_dim
        assert a["is_first"].tolist() == b["is_first"].tolist() and a["is_last"].tolist() == b["is_last"].tolist()
    firsts, ok = theirs.first_observations(theirs.episode_ids)
    assert len(ok) == 10 and np.array_equal(firsts["pixels"][0], theirs.episode(int(ok[0]))["pixels"][0])
    batch = theirs.sample(6, 8, np.random.default_rng(0))
    assert batch["pixels"].shape == (6, 8, 3, 64, 64) and batch["action"].shape == (6, 8, 21)


def test_ncrl_damaged_files_are_skipped_and_counted(dataset_dir, tmp_path):
    root = write_ncrl(dataset_dir, tmp_path / "ncrl")
    files = [p for p in ncrl_files(root) if "walker" in p.parts]
    truncate(files[0], 0.5)                       # a truncated zip
    short = files[1].with_name(files[1].name.replace("-20.npz", "-25.npz"))
    files[1].rename(short)                        # the length in the name disagrees with the content
    with pytest.warns(DamagedEpisodeWarning):
        ds = open_dataset(root)
        ds.verify()
    assert ds.num_episodes == 8 and len(ds.damaged) == 2
    assert ds.sample(8, 5, np.random.default_rng(0))["pixels"].shape[0] == 8
    with pytest.raises(HarnessError, match="stores pixels; cannot read proprio"):
        open_dataset(root, ["proprio"])


# ----------------------------------------------------------------------------- the CLI

def _cli(*args, cwd):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_datasets_show_and_collect_errors(dataset_dir, tmp_path):
    r = _cli("datasets", "show", str(dataset_dir), "--verify", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10 episodes, 210 stored steps" in r.stdout and "walker" in r.stdout and "expert sigma=0.5" in r.stdout
    for args, message in [
        (["datasets", "show", str(tmp_path)], "is not an offline dataset"),
        (["collect", "x", "--tasks", "walker-fly"], "unknown task 'walker-fly'"),
        (["collect", "x", "--tasks", "walker-walk", "--policies", "expert"], "exists for Meta-World tasks only"),
        (["collect", "x", "--tasks", "walker-walk", "--noise", "a,b"], "--noise: expected a comma-separated list"),
        (["collect", str(dataset_dir), "--tasks", "walker-walk"], "already holds a dataset"),
    ]:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_disagreement_explorer_collects_while_it_learns(tmp_path, monkeypatch):
    import torch

    from harness.collect import collect
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = collect(tmp_path / "ds", CollectConfig(tasks=("cheetah-run",), policies=("disagreement",), episodes=2,
                                                     episode_frames=60, render_quality="fast",
                                                     explorer_preset="debug"), echo=lambda *_: None, log_mlflow=False)
    finally:
        torch.set_num_threads(threads)
    (row,) = res.settings
    assert row["policy"] == "disagreement" and row["explorer_updates"] > 5
    assert np.isfinite(row["explorer_intrinsic_reward"]) and row["explorer_intrinsic_reward"] >= 0
    ds = open_dataset(tmp_path / "ds")
    assert {(e.policy, e.noise, e.embodiment) for e in ds.episodes} == {("disagreement", None, "cheetah")}


def test_icm_explorer_collects_reward_free_with_provenance(tmp_path, monkeypatch):
    """URLB's ICM agent as a collection policy: pixels stored when asked (it acts on the state), every
    episode written with where its learner stood, seed frames first, then the actor; no reward stored."""
    import torch

    from harness.collect import collect
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = collect(tmp_path / "ds", CollectConfig(tasks=("walker-stand",), policies=("icm",), episodes=4,
                                                     episode_frames=60, render_quality="fast", obs_type="pixels",
                                                     explorer_preset="debug"), echo=lambda *_: None, log_mlflow=False)
    finally:
        torch.set_num_threads(threads)
    (row,) = res.settings
    assert row["policy"] == "icm" and row["explorer_updates"] > 5
    assert np.isfinite(row["explorer_intrinsic_reward"]) and row["explorer_intrinsic_reward"] >= 0
    ds = open_dataset(tmp_path / "ds")
    assert "reward" not in ds.obs_spec and "pixels" in ds.obs_spec and "reward" not in ds.episode(0)
    metas = sorted(ds.episodes, key=lambda m: m.provenance["train_agent_steps"][0])
    assert [(m.policy, m.noise) for m in metas] == [("icm", None)] * 4
    steps = [m.provenance["train_agent_steps"] for m in metas]
    assert steps == [[0, 30], [30, 60], [60, 90], [90, 120]], steps   # 60 frames at action repeat 2 each
    assert metas[0].provenance["acting"] == "uniform (seed frames)"   # debug: 100 seed frames = 50 agent steps
    assert metas[-1].provenance["acting"].startswith("actor")
    assert metas[-1].provenance["grad_updates"][1] > metas[-1].provenance["grad_updates"][0]
    assert metas[-1].provenance["algorithm"] == "ddpg+icm (URLB)"


def test_a_stopped_icm_collection_continues_the_same_explorer(tmp_path, monkeypatch, capsys):
    """Collecting URLB's ICM data takes hours: a collection stopped by Ctrl-C or SIGTERM keeps its committed
    episodes and the explorer's learning state, and collecting again continues that explorer's training (its
    agent steps and updates go on) instead of starting a new one. Another explorer's state is refused."""
    import torch

    import harness.collect as hc
    from harness.errors import HarnessError
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = dict(tasks=("walker-stand",), policies=("icm",), episode_frames=60, render_quality="fast",
                obs_type="proprio", explorer_preset="debug", shard_steps=1)   # a commit after every episode
    real, calls = hc._run_episode, []

    def stopped_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt   # what SIGTERM becomes (harness.lifecycle.Terminated)
        return real(*a, **k)
    try:
        monkeypatch.setattr(hc, "_run_episode", stopped_on_the_third)
        with pytest.raises(KeyboardInterrupt):
            hc.collect(tmp_path / "ds", CollectConfig(episodes=4, **base), echo=lambda *_: None, log_mlflow=False)
        monkeypatch.setattr(hc, "_run_episode", real)
        state = tmp_path / "ds" / "explorers" / "walker-stand-icm" / "explorer.pt"
        assert state.is_file() and len(open_dataset(tmp_path / "ds").episodes) == 2
        capsys.readouterr()
        hc.collect(tmp_path / "ds", CollectConfig(episodes=2, append=True, seed=2, threads=2, **base), echo=print,
                   log_mlflow=False)
        said = capsys.readouterr().out
        assert torch.get_num_threads() == 1, "collect must give the caller its thread count back"
        with pytest.raises(HarnessError, match="another explorer"):
            hc.collect(tmp_path / "ds", CollectConfig(episodes=1, append=True, **(base | {"explorer_preset": "tiny"})),
                       echo=lambda *_: None, log_mlflow=False)
    finally:
        torch.set_num_threads(threads)
    ds = open_dataset(tmp_path / "ds")
    steps = sorted(m.provenance["train_agent_steps"] for m in ds.episodes)
    assert steps == [[0, 30], [30, 60], [60, 90], [90, 120]], steps   # one explorer's training, no restart
    updates = sorted(m.provenance["grad_updates"] for m in ds.episodes)
    assert all(a[1] == b[0] for a, b in zip(updates, updates[1:])), updates
    assert "continuing the explorer saved in" in said and "60 agent steps" in said, said
    assert ds.summary()["episodes"] == 4


def test_an_icm_collection_stopped_mid_episode_and_continued_is_the_uninterrupted_one(tmp_path, monkeypatch):
    """The data do not depend on where a collection was stopped: stopped by SIGTERM in the middle of its third
    episode (the explorer learning by then) and continued as the benchmarks continue one (``--seed`` the
    episodes there), the four episodes equal those of one uninterrupted collection, state for state, action
    for action, provenance included. The explorer is kept as it was at the last complete episode's end, and
    the env goes on with the first collection's random stream."""
    import torch

    import harness.collect as hc
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = dict(tasks=("walker-stand",), policies=("icm",), episode_frames=60, render_quality="fast",
                obs_type="proprio", explorer_preset="debug")
    real, calls = hc._run_episode, []

    def stopped_mid_third(env, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            step, n = env.step, [0]

            def stopping(action):
                n[0] += 1
                if n[0] == 12:
                    raise KeyboardInterrupt   # what SIGTERM becomes (harness.lifecycle.Terminated)
                return step(action)
            env.step = stopping
        return real(env, *a, **k)
    try:
        hc.collect(tmp_path / "whole", CollectConfig(episodes=4, **base), echo=lambda *_: None, log_mlflow=False)
        monkeypatch.setattr(hc, "_run_episode", stopped_mid_third)
        with pytest.raises(KeyboardInterrupt):
            hc.collect(tmp_path / "cut", CollectConfig(episodes=4, **base), echo=lambda *_: None, log_mlflow=False)
        monkeypatch.setattr(hc, "_run_episode", real)
        assert len(open_dataset(tmp_path / "cut").episodes) == 2
        hc.collect(tmp_path / "cut", CollectConfig(episodes=2, append=True, seed=2, **base), echo=lambda *_: None,
                   log_mlflow=False)
    finally:
        torch.set_num_threads(threads)
    whole, cut = open_dataset(tmp_path / "whole"), open_dataset(tmp_path / "cut")
    assert len(whole.episodes) == len(cut.episodes) == 4
    assert whole.episodes[-1].provenance["grad_updates"][1] > 0, "the explorer must be learning by the end"
    for i in range(4):
        a, b = whole.episode(i), cut.episode(i)
        assert np.array_equal(a["proprio"], b["proprio"]) and np.array_equal(a["action"], b["action"]), i
        assert whole.episodes[i].provenance == cut.episodes[i].provenance, i


def test_icm_reward_is_urlbs_and_its_models_learn():
    """r = log(1 + scale * ||s' - f(s, a)||); training on a fixed batch lowers the forward and inverse errors."""
    import torch

    from methods.gsa.curiosity import DEBUG, ICMExplorer
    torch.manual_seed(0)
    ex = ICMExplorer(DEBUG, proprio_dim=6, action_dim=3, native_dim=2, rng=np.random.default_rng(0))
    s, a = torch.randn(64, 6), torch.rand(64, 3) * 2 - 1
    s2 = s + torch.cat([a, a], -1)          # deterministic dynamics: both models can learn them
    with torch.no_grad():
        expected = torch.log1p(DEBUG.icm_scale * (s2 - ex.icm.forward_net(torch.cat([s, a], -1))).norm(dim=-1))
    assert torch.allclose(ex.intrinsic_reward(s, a, s2), expected)
    with torch.no_grad():
        before = [float(e.mean()) for e in ex.icm(s, a, s2)]
    for _ in range(1500):   # URLB's lr 1e-4
        fe, be = ex.icm(s, a, s2)
        ex.icm_opt.step(fe.mean() + be.mean())
    with torch.no_grad():
        after = [float(e.mean()) for e in ex.icm(s, a, s2)]
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1], (before, after)


def test_parallel_collection_writes_the_same_dataset(tmp_path, monkeypatch):
    """--workers N collects settings in N processes; the episodes, their order and metadata are those of one,
    and so is the data's content digest (recorded by pre-training and by the runs that fine-tune its model)."""
    from harness.collect import collect
    monkeypatch.chdir(tmp_path)
    cfg = CollectConfig(tasks=("reach-v3", "push-v3"), policies=("expert",), noise=(0.1, 1.0), episodes=2,
                        episode_frames=40, obs_type="proprio", render_quality="fast")
    for workers in (1, 2):   # and another shard layout
        collect(tmp_path / f"w{workers}", dataclasses.replace(cfg, workers=workers, shard_steps=40 * workers),
                echo=lambda *_: None, log_mlflow=False)
    one, two = open_dataset(tmp_path / "w1"), open_dataset(tmp_path / "w2")
    key = lambda m: (m.task, m.policy, m.noise, m.seed, m.length)  # noqa: E731
    assert [key(m) for m in one.episodes] == [key(m) for m in two.episodes] and len(one.episodes) == 8
    for i in range(len(one.episodes)):
        a, b = one.episode(i), two.episode(i)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # the content digest names the data, not the uids (new each time) nor the shard layout
    assert one.fingerprint() != two.fingerprint()
    assert one.content_digest() == two.content_digest()
    assert one.subset(one.episode_ids[:-1]).content_digest() != one.content_digest()


def test_collect_task_groups():
    from harness.collect import expand_tasks
    from harness.streams import CW10_TASKS
    assert expand_tasks(["stream:cw10"]) == tuple(f"{t}-v3" for t in CW10_TASKS)
    assert len(expand_tasks(["suite:metaworld"])) == 50
    assert expand_tasks(["reach-v3", "stream:quick"]) == ("reach-v3", "cartpole-balance", "walker-stand")
    with pytest.raises(HarnessError, match="unknown suite 'nope'"):
        expand_tasks(["suite:nope"])
    with pytest.raises(HarnessError, match="give a task name, stream:NAME or suite:NAME"):
        expand_tasks(["group:x"])
