"""Retrieval (Eq. 4): a faiss index over first-frame encoder features of real collected trajectories."""
import json
import shutil

import numpy as np
import pytest
import torch
from offline_data import collected, pretrain_debug, write_ncrl

from harness.errors import HarnessError
from harness.offline import open_dataset
from methods.backbone.checkpoint import save_world_model
from methods.gsa.pretrain import load_pretrained
from methods.gsa.retrieval import RetrievalConfig, RetrievalIndex, Retriever, build_index, encoder_fingerprint

QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return collected(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(dataset_dir, tmp_path_factory):
    """A debug-size world model pre-trained for a few updates, with its index."""
    return pretrain_debug(dataset_dir, tmp_path_factory.mktemp("pretrained"), updates=4)


def test_each_trajectory_is_its_own_nearest_neighbour(dataset_dir, pretrained):
    ret = Retriever(pretrained, cfg=RetrievalConfig(threads=1))
    ds = open_dataset(dataset_dir)
    assert len(ret.index) == ds.num_episodes == 10 and ret.index.dim == ret.wm.embed_dim
    for ep in ds.episode_ids:
        meta = ds.meta(int(ep))
        first = ds.episode(int(ep))["pixels"][0]
        for embodiment in (meta.embodiment, None):
            hits = ret.query({"pixels": first}, k=4, embodiment=embodiment)[0]
            assert hits.uids[0] == meta.uid and hits.distances[0] < 1e-3
            assert np.all(np.diff(hits.distances) >= 0)
    # A batch of queries gives one neighbour list per row.
    firsts, ids = ds.first_observations(ds.episode_ids)
    lists = ret.query(firsts, k=1)
    assert [h.uids[0] for h in lists] == [ds.meta(int(i)).uid for i in ids]


def test_embodiment_filter_tells_walker_from_cheetah_unlike_the_action_mask(dataset_dir, pretrained):
    ret = Retriever(pretrained, cfg=RetrievalConfig(threads=1))
    ds = open_dataset(dataset_dir)
    walker = next(int(i) for i in ds.episode_ids if ds.meta(int(i)).embodiment == "walker")
    obs = {"pixels": ds.episode(walker)["pixels"][0]}
    by_embodiment = ret.query(obs, k=10, embodiment="walker")[0]
    assert set(by_embodiment.embodiments) == {"walker"} and len(by_embodiment.uids) == 4
    mask6 = (np.arange(6) < 6).astype(np.float32)
    by_mask = ret.query(obs, k=10, action_mask=mask6)[0]   # ncrl's rule: same action dim
    assert set(by_mask.embodiments) == {"walker", "cheetah"} and len(by_mask.uids) == 8
    sawyer = ret.query(obs, k=10, action_mask=(np.arange(6) < 4).astype(np.float32))[0]
    assert set(sawyer.embodiments) == {"sawyer"}
    both = ret.query(obs, k=10, embodiment=["walker", "sawyer"])[0]
    assert set(both.embodiments) == {"walker", "sawyer"} and len(both.uids) == 6
    with pytest.raises(HarnessError, match="no trajectory of embodiment quadruped in the index; embodiments there: "
                                           "cheetah, sawyer, walker"):
        ret.query(obs, embodiment="quadruped")
    with pytest.raises(HarnessError, match="no trajectory of embodiment sawyer with action dim 6"):
        ret.query(obs, embodiment="sawyer", action_mask=mask6)
    # The retrieved trajectories as a SequenceSource for rehearsal.
    sub = ret.retrieve(obs, ds, k=3, embodiment="walker")
    assert sub.num_episodes == 3 and {e.embodiment for e in sub.episodes} == {"walker"}
    b = sub.sample(8, 6, np.random.default_rng(0), extras=("episode_id",))
    assert set(b["episode_id"].tolist()) <= set(sub.episode_ids.tolist())


def test_index_files_and_fp16_index(dataset_dir, pretrained, tmp_path):
    meta = json.loads((pretrained / "index" / "index.json").read_text())
    assert meta["index_type"] == "flat" and meta["ntotal"] == 10 and meta["metric"] == "L2"
    assert meta["embodiment_ranges"] == {"cheetah": [0, 4], "sawyer": [4, 6], "walker": [6, 10]}
    import faiss
    assert isinstance(faiss.read_index(str(pretrained / "index" / "index.faiss")), faiss.IndexFlatL2)
    other = shutil.copytree(pretrained, tmp_path / "pt16", ignore=shutil.ignore_patterns("index"))
    build_index(other, index_type="fp16", **QUIET)
    ret = Retriever(other)
    ds = open_dataset(dataset_dir)
    for ep in ds.episode_ids[:4]:
        hits = ret.query({"pixels": ds.episode(int(ep))["pixels"][0]}, k=2)[0]
        assert hits.uids[0] == ds.meta(int(ep)).uid


def test_index_encoder_mismatch_and_missing_pieces_are_clear_errors(pretrained, tmp_path):
    other = shutil.copytree(pretrained, tmp_path / "pt")
    wm, _ = load_pretrained(other)
    assert RetrievalIndex(other).meta["encoder_fingerprint"] == encoder_fingerprint(wm)
    with torch.no_grad():
        next(iter(wm.encoders.parameters())).add_(0.01)   # "trained further": the encoder changed
    payload = torch.load(other / "world_model.pt", weights_only=True)
    save_world_model(other / "world_model.pt", wm, extra={k: v for k, v in payload.items()
                                                           if k not in ("meta", "world_model")})
    with pytest.raises(HarnessError, match="index/encoder mismatch: .* was built with encoder .* rebuild it with "
                                           "`cli.py build-index`"):
        Retriever(other)
    build_index(other, **QUIET)
    Retriever(other)   # rebuilt: accepted
    shutil.rmtree(other / "index")
    with pytest.raises(HarnessError, match="no retrieval index in"):
        Retriever(other)
    (other / "world_model.pt").unlink()
    with pytest.raises(HarnessError, match="missing pre-trained world model"):
        build_index(other, **QUIET)


def test_index_over_the_ncrl_layout(dataset_dir, pretrained, tmp_path):
    ncrl = write_ncrl(dataset_dir, tmp_path / "ncrl")
    other = shutil.copytree(pretrained, tmp_path / "pt", ignore=shutil.ignore_patterns("index"))
    build_index(other, data=ncrl, **QUIET)
    ret = Retriever(other)
    ds = open_dataset(ncrl, action_pad_dim=6)
    assert sorted(ret.index.ranges) == ["cheetah", "sawyer", "walker"]
    for ep in ds.episode_ids:
        hits = ret.query({"pixels": ds.episode(int(ep))["pixels"][0]}, k=1, embodiment=ds.meta(int(ep)).embodiment)[0]
        assert hits.uids == [ds.meta(int(ep)).uid]
