"""Offline data you can trust: checksums on every read, manifests that must agree with their shards, the
damage pre-training met in its MLflow run, and files closed on every path."""
import gc
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from offline_data import flip_bit, ncrl_files, synthetic, truncate, write_ncrl

import cli
from harness.errors import HarnessError
from harness.offline import SHARD_FILE, SHARDS_DIR, DamagedEpisodeWarning, open_dataset

NPY_HEADER = 128   # our .npy columns have a fixed-size header


def _shard(root: Path) -> Path:
    (shard,) = sorted((root / SHARDS_DIR).iterdir())
    return shard


def _flip_in_episode(root: Path, key: str, index: int, row: int = 3) -> str:
    """Flip one bit of row ``row`` of episode ``index`` in column ``key``; returns the episode's uid."""
    shard = _shard(root)
    info = json.loads((shard / SHARD_FILE).read_text())
    ep = info["episodes"][index]
    col = info["columns"][key]
    r = ep["offset"] + row
    if col["storage"] == "npy":
        row_bytes = int(np.prod(col["shape"])) * np.dtype(col["dtype"]).itemsize
        flip_bit(shard / f"{key}.npy", NPY_HEADER + r * row_bytes + row_bytes // 2, bit=3)
    else:   # a bit in the middle of the zlib chunk holding that row
        offsets = np.load(shard / f"{key}.zindex.npy")
        c = r // col["chunk_steps"]
        flip_bit(shard / f"{key}.zlib", int(offsets[c] + (offsets[c + 1] - offsets[c]) // 2), bit=3)
    return ep["uid"]


def _show(*args: str):
    return CliRunner().invoke(cli.main, ["datasets", "show", *args])


def _is_window_of(window: np.ndarray, episode: np.ndarray) -> bool:
    n = len(window)
    return any(np.array_equal(episode[s:s + n], window) for s in range(len(episode) - n + 1))


# ----------------------------------------------------------------------------- checksums

@pytest.mark.parametrize("key,compression", [("proprio", "none"), ("pixels", "none"), ("pixels", "zlib")])
def test_a_flipped_bit_is_found_by_verify_and_by_sampling(tmp_path, key, compression):
    root, eps = synthetic(tmp_path / "d", compression=compression)
    victim = _flip_in_episode(root, key, index=2)
    # `datasets show --verify` finds it and names it, once.
    r = _show(str(root), "--verify")
    assert r.exit_code == 0, r.output
    assert "checksums: crc32" in r.output
    assert "damaged parts skipped: 1 (1 episode found damaged by --verify)" in r.output
    assert r.output.count(victim) == 1 and "is corrupt (crc32" in r.output
    # Sampling finds it too: the episode is skipped (never handed out), counted and warned about once.
    with pytest.warns(DamagedEpisodeWarning) as caught:
        with open_dataset(root, [key]) as ds:
            victim_id = ds._store.uid_to_id[victim]
            for i in range(40):
                b = ds.sample(8, 6, np.random.default_rng(i), extras=("episode_id",))
                assert victim_id not in b["episode_id"]
                for w, e in zip(b[key], b["episode_id"]):
                    assert _is_window_of(w, eps[int(e)][key])   # only the values that were written
            report = ds.damage_report()
    about = [str(w.message) for w in caught if victim in str(w.message)]
    assert len(about) == 1 and "\n" not in about[0] and "is corrupt (crc32" in about[0]
    assert about[0].startswith("skipping damaged data: shard-000000 episode ")
    assert report["episodes_skipped"] == 1 and report["damaged"] == report["damaged_while_reading"] == 1
    assert report["episodes_used"] == 5 and report["steps_used"] == sum(len(e["is_first"]) for e in eps) - 16
    assert report["episodes_read"] == 5 and report["steps_read"] > 0 and report["checksums"] == "crc32"
    assert victim in report["damaged_examples"][0]


def test_checksums_are_recorded_per_chunk_and_old_datasets_load_unverified(tmp_path):
    root, eps = synthetic(tmp_path / "d", compression="zlib", chunk_steps=8)
    info = json.loads((_shard(root) / SHARD_FILE).read_text())
    rows = sum(len(e["is_first"]) for e in eps)
    for key, col in info["columns"].items():
        assert col["checksum"]["algorithm"] == "crc32" and col["checksum"]["rows"] == 8
        assert len(col["checksum"]["values"]) == -(-rows // 8), key
    with open_dataset(root, ["pixels", "proprio"]) as ds:
        assert ds.summary()["checksums"] == "crc32" and ds.verify() == 0
    # A dataset written before checksums existed: no checksum entries. It loads, unverified, and says so.
    for col in info["columns"].values():
        del col["checksum"]
    (_shard(root) / SHARD_FILE).write_text(json.dumps(info))
    _flip_in_episode(root, "proprio", index=1)
    with open_dataset(root, ["pixels", "proprio"]) as ds:
        assert ds.num_episodes == 6 and ds.summary()["checksums"] == "none"
        assert ds.verify() == 0   # nothing to check a flipped bit against
        assert ds.damage_report()["checksums"] == "none"
    r = _show(str(root))
    assert r.exit_code == 0 and "checksums: none (written before checksums: reads are not verified)" in r.output


def test_a_corrupt_chunk_of_flags_costs_only_its_episodes(tmp_path):
    root, _ = synthetic(tmp_path / "d", compression="none")
    victim = _flip_in_episode(root, "is_terminal", index=4, row=9)
    shard = _shard(root)
    info = json.loads((shard / SHARD_FILE).read_text())
    ep = info["episodes"][0]
    flip_bit(shard / "is_first.npy", NPY_HEADER + ep["offset"] + 5, bit=1)   # read at opening
    with pytest.warns(DamagedEpisodeWarning) as caught:
        ds = open_dataset(root, ["proprio"])
        assert ds.num_episodes == 5 and ds.damage_report()["damaged_at_open"] == 1
        assert ds.verify() == 1 and ds.num_episodes == 4
    messages = [str(w.message) for w in caught]
    assert any(ep["uid"] in m and "is_first.npy: checksum chunk 0 (rows 0:8) is corrupt" in m for m in messages)
    assert any(victim in m and "is_terminal.npy" in m for m in messages)
    ds.close()


# ----------------------------------------------------------------------------- manifest vs shards

def test_a_manifest_that_contradicts_its_shards_is_a_clear_error(tmp_path, mlflow_uri):
    from harness.pretraining import pretrain
    from methods.gsa.pretrain import make_config
    root, _ = synthetic(tmp_path / "d")
    manifest_path = root / "manifest.json"
    good = json.loads(manifest_path.read_text())
    m = json.loads(json.dumps(good))
    m["action_pad_dim"] = 21   # the shards hold 6-d actions
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(HarnessError, match=r"manifest\.json contradicts itself: field 'action_pad_dim' is 21, but "
                                           r"'schema\.action\.shape' .* is \[6\]"):
        open_dataset(root)
    r = _show(str(root))
    assert r.exit_code == 2 and "Traceback" not in r.output and r.exception is not None
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: ") and "manifest.json" in line and "action_pad_dim" in line and "21" in line
    # Raised before training: no MLflow run is made.
    with pytest.raises(HarnessError, match="action_pad_dim"):
        pretrain(root, make_config("debug"), out=tmp_path / "pt", echo=lambda *_: None)
    client = MlflowClient(mlflow_uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    # The manifest made consistent with itself, but not with the shards: each contradiction is named.
    m["schema"]["action"]["shape"] = [21]
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(HarnessError, match=r"shard-000000/shard\.json contradicts .*manifest\.json: "
                                           r"schema\.action\.shape is \[6\] in shard\.json, \[21\] in manifest\.json"):
        open_dataset(root)
    m = json.loads(json.dumps(good))
    m["schema"]["pixels"]["shape"] = [3, 16, 16]
    m["schema"]["proprio"]["dtype"] = "<f8"
    manifest_path.write_text(json.dumps(m))
    with pytest.raises(HarnessError) as err:
        open_dataset(root)
    assert "schema.pixels.shape is [3, 8, 8] in shard.json, [3, 16, 16] in manifest.json" in str(err.value)
    assert "schema.proprio.dtype is <f4 in shard.json, <f8 in manifest.json" in str(err.value)
    r = _show(str(root))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "schema.pixels.shape" in r.output


# ----------------------------------------------------------------------------- files are closed

def test_datasets_show_closes_the_files_of_a_truncated_zip(tmp_path):
    src, _ = synthetic(tmp_path / "d", obs=("pixels",))
    root = write_ncrl(src, tmp_path / "ncrl")
    truncate(ncrl_files(root)[0], 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = _show(str(root), "--verify")
        gc.collect()
    assert r.exit_code == 0, r.output
    assert "unclosed" not in r.output and "ResourceWarning" not in r.output
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    assert "damaged parts skipped: 1" in r.output and "checksums: zip crc32 per file" in r.output


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors in /proc")
def test_datasets_are_closable_and_openers_close_on_errors(tmp_path):
    root, _ = synthetic(tmp_path / "d", shard_steps=40)   # several shards
    before = _open_fds()
    with open_dataset(root, ["pixels", "proprio"]) as ds:
        ds.sample(4, 5, np.random.default_rng(0))
        assert _open_fds() > before
    assert _open_fds() == before
    # A shard that contradicts the manifest, found after others were opened: their files are closed too.
    last = sorted((root / SHARDS_DIR).iterdir())[-1] / SHARD_FILE
    info = json.loads(last.read_text())
    info["schema"]["proprio"]["shape"] = [7]
    last.write_text(json.dumps(info))
    with pytest.raises(HarnessError, match="schema.proprio.shape is \\[7\\]"):
        open_dataset(root)
    assert _open_fds() == before


# ----------------------------------------------------------------------------- pre-training reports what it met

def test_pretrain_logs_the_damage_it_met_while_reading(tmp_path, mlflow_uri, one_torch_thread):
    from harness.pretraining import pretrain
    from methods.gsa.pretrain import make_config
    root, _ = synthetic(tmp_path / "d", lengths=(16,) * 8, obs=("proprio",), compression="none")
    victims = []
    for i in range(4):   # half the episodes, a bit in each of their two chunks: any window of them is damaged
        victims.append(_flip_in_episode(root, "proprio", index=i, row=2))
        _flip_in_episode(root, "proprio", index=i, row=10)
    lines: list[str] = []
    cfg = make_config("debug", {"grad_updates": "6", "log_every": "3", "openloop_every": "100",
                                "checkpoint_every": "100"})
    res = pretrain(root, cfg, obs_keys=["proprio"], out=tmp_path / "pt", echo=lines.append)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(res.run_id)
    m = run.data.metrics
    assert run.data.params["data.episodes"] == "8"   # the summary taken before reading ...
    assert 1 <= m["data/damaged"] <= 4                 # ... and what reading met
    assert m["data/damaged"] == m["data/damaged_while_reading"] == m["data/episodes_skipped"]
    assert m["data/episodes_used"] == 8 - m["data/episodes_skipped"]
    assert m["data/steps_used"] == 16 * m["data/episodes_used"]
    assert m["data/episodes_read"] >= 1 and m["data/steps_read"] >= 6 * 4 * 8
    assert [x.step for x in client.get_metric_history(res.run_id, "data/damaged")][:2] == [3, 6]
    report = json.loads(Path(client.download_artifacts(res.run_id, "data_damage.json", str(tmp_path))).read_text())
    assert report["damaged"] == m["data/damaged"] and report["episodes_used"] == m["data/episodes_used"]
    assert all(any(v in e for v in victims) for e in report["damaged_examples"])
    # Each damaged part printed once, as one readable line.
    warned = [line for line in lines if "skipping damaged data" in line]
    assert len(warned) == len(set(warned)) == m["data/damaged"]
    assert all(line.startswith("  warning: skipping damaged data: shard-000000 episode ") and "\n" not in line
               and "crc32" in line for line in warned)
