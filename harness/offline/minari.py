"""Minari datasets: export an offline dataset as one (``cli.py datasets export DIR --minari ID``) and read one
wherever a dataset is read (``open_dataset("minari:ID")``: ``pretrain --data``, ``build-index``, retrieval).

Minari keeps datasets under ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``), one folder per id
``(namespace/)name-vN``. An exported dataset holds, per episode of ours (T stored steps):

- ``observations``: T rows, a Box (``pixels`` uint8 (3, H, W) or ``proprio`` float32 (D,)) or a Dict of both,
  stored losslessly (no JPEG);
- ``actions``: the T - 1 actions taken, zero-padded to the dataset's ``action_pad_dim``, Box [-1, 1];
- ``rewards``: NaN: our data is reward-free (GSA Section 3.1) and Minari has no "absent", so NaN says so;
- ``terminations`` / ``truncations``: at the last step, as our ``is_terminal`` says;
- episode metadata: ``uid``, ``embodiment``, ``task``, ``policy``, ``noise``, ``action_dim``, ``env_seed``
  (our :class:`~harness.offline.format.EpisodeMeta`; the uids keep a retrieval index valid across the trip).

The dataset's env spec is ``gsa/<task>-v0`` (``tasks/gym.py``) with the data's observation and padding
settings when every episode comes from one task; a multi-task dataset has none (Minari's convention for
data without one env), and each episode's task is in its metadata.

Read back, a Minari dataset is a store like the others (``harness.offline.store``): episodes are decoded whole
and kept in an LRU cache. Datasets made elsewhere load too when their observations are a 1-d Box (read as
``proprio``) or an image Box (``pixels``; (H, W, 3) is transposed) and their actions a 1-d Box; their episodes'
embodiment and task come from the env spec's name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.offline.format import FLAG_KEYS, OBS_KEYS, DamagedData, EpisodeMeta
from harness.offline.store import _WholeEpisodeStore

PREFIX = "minari:"
_CHUNK = 32                    # episodes handed to Minari per write
_META_FIELDS = ("uid", "embodiment", "task", "policy", "noise", "action_dim", "env_seed")


def is_minari_ref(data: Any) -> bool:
    return isinstance(data, str) and data.startswith(PREFIX)


def minari_root() -> Path:
    """Where Minari keeps datasets (``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``)."""
    from minari.storage.datasets_root_dir import get_dataset_path
    return Path(get_dataset_path())


def _check_id(dataset_id: str) -> str:
    from minari.dataset.minari_dataset import parse_dataset_id
    try:
        parse_dataset_id(dataset_id)
    except (TypeError, ValueError):   # minari 0.5.4 raises TypeError when the -vN is missing
        raise HarnessError(f"{dataset_id!r} is not a Minari dataset id: (namespace/)name-vN, e.g. "
                           "gsa/quick-proprio-v0") from None
    return dataset_id


def _local_ids() -> list[str]:
    import minari
    return sorted(minari.list_local_datasets())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Minari warns about every metadata field left out (author, code link, eval env); the export fills what
    it knows and says the rest in its description."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is set to None", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"env_spec is None", category=UserWarning)
        yield


# ============================================================================ export

def _spaces(obs_spec: dict[str, tuple[tuple[int, ...], str]], action_pad_dim: int) -> tuple[Any, Any]:
    from gymnasium import spaces
    boxes = {k: (spaces.Box(0, 255, shape, np.uint8) if np.dtype(dtype) == np.uint8
                 else spaces.Box(-np.inf, np.inf, shape, np.float32)) for k, (shape, dtype) in obs_spec.items()}
    obs_space = spaces.Dict(boxes) if len(boxes) > 1 else next(iter(boxes.values()))
    return obs_space, spaces.Box(-1.0, 1.0, (action_pad_dim,), np.float32)


def _env_spec(tasks: set[str], obs_spec: dict[str, tuple[tuple[int, ...], str]], action_pad_dim: int) -> Any:
    """``gsa/<task>-v0`` with the data's settings when the dataset holds one known task, else None."""
    if len(tasks) != 1:
        return None
    from tasks.catalog import TASKS
    task = next(iter(tasks))
    if task not in TASKS:
        return None
    import gymnasium

    from tasks.gym import env_id, register_envs
    register_envs()
    keys = set(obs_spec)
    kwargs: dict[str, Any] = {"obs_type": "both" if len(keys) == 2 else next(iter(keys)), "action_pad_dim": action_pad_dim}
    if "pixels" in obs_spec:
        kwargs["image_size"] = int(obs_spec["pixels"][0][-1])
    if "proprio" in obs_spec:
        kwargs["proprio_pad_dim"] = int(obs_spec["proprio"][0][0])
    spec = gymnasium.spec(env_id(task))
    return dataclasses.replace(spec, kwargs={**spec.kwargs, **kwargs})


def _buffer(ep: dict[str, np.ndarray], keys: Sequence[str], episode_id: int) -> Any:
    from minari.data_collector.episode_buffer import EpisodeBuffer
    t = len(ep["is_first"])
    if t < 2:
        raise HarnessError("an episode of one stored step has no transition; Minari needs at least one")
    obs = {k: ep[k] for k in keys} if len(keys) > 1 else ep[keys[0]]
    terminal = bool(ep["is_terminal"][-1])
    done = np.zeros(t - 1, bool)
    done[-1] = True
    return EpisodeBuffer(id=episode_id, observations=obs, actions=ep["action"][:-1].astype(np.float32),
                         rewards=np.full(t - 1, np.nan, np.float32), terminations=done & terminal,
                         truncations=done & (not terminal))


def export_minari(data: str | Path, dataset_id: str, *, author: str | None = None, author_email: str | None = None,
                  description: str | None = None, echo: Callable[[str], None] = print) -> Path:
    """Write the dataset at ``data`` (any layout ``open_dataset`` reads) as the Minari dataset ``dataset_id``.
    Damaged episodes are skipped and counted. Returns the Minari dataset's folder."""
    import minari

    from harness.offline.dataset import open_dataset
    from harness.provenance import git_commit
    _check_id(dataset_id)
    if dataset_id in _local_ids():
        raise HarnessError(f"Minari dataset {dataset_id!r} already exists in {minari_root()}; choose another id "
                           f"(or version), or delete it with `minari delete {dataset_id}`")
    notes: list[str] = []
    with open_dataset(data, "all", on_damage=notes.append) as ds:
        keys = list(ds.obs_keys)
        obs_space, act_space = _spaces(ds.obs_spec, ds.action_pad_dim)
        ids = [int(i) for i in ds.episode_ids]
        tasks = {ds.meta(i).task for i in ids}
        env_spec = _env_spec(tasks, ds.obs_spec, ds.action_pad_dim)
        summary = ds.summary(disk=False)
        desc = description or (f"Reward-free offline data exported from {summary['path']} ({summary['format']}) by "
                               f"gsa-harness: {summary['episodes']} episodes of {', '.join(sorted(tasks))}. Rewards "
                               "are NaN (absent); per-episode metadata holds the source task, embodiment, policy "
                               "and noise.")
        made: Any = None
        written, skipped = 0, 0
        try:
            with _quiet():
                for start in range(0, len(ids), _CHUNK):
                    buffers, metas = [], []
                    for i in ids[start:start + _CHUNK]:
                        try:
                            ep = ds.episode(i)
                        except HarnessError:
                            skipped += 1   # damaged: reported through on_damage, counted here
                            continue
                        buffers.append(_buffer(ep, keys, written + len(buffers)))
                        m = ds.meta(i)
                        metas.append({"uid": m.uid, "embodiment": m.embodiment, "task": m.task, "policy": m.policy,
                                      "noise": m.noise, "action_dim": m.action_dim, "env_seed": m.seed})
                    if not buffers:
                        continue
                    if made is None:
                        made = minari.create_dataset_from_buffers(
                            dataset_id, buffers, env=env_spec, observation_space=obs_space, action_space=act_space,
                            algorithm_name="gsa-harness collect (reward-free: " + ", ".join(summary["policies"]) + ")",
                            author=author, author_email=author_email, code_permalink=f"gsa-harness@{git_commit()}",
                            description=desc, data_format="arrow", jpeg_encoding=False)
                    else:
                        made.update_dataset_from_buffer(buffers)
                    made.storage.update_episode_metadata(metas, range(written, written + len(buffers)))
                    written += len(buffers)
        except BaseException:
            if made is not None or (minari_root() / dataset_id).exists():
                import shutil
                shutil.rmtree(minari_root() / dataset_id, ignore_errors=True)
            raise
    if made is None:
        raise HarnessError(f"no readable episode in {data} to export")
    path = minari_root() / dataset_id
    echo(f"wrote Minari dataset {dataset_id}: {written} episodes, {made.total_steps:,} steps"
         + (f" ({skipped} damaged episodes skipped)" if skipped else "")
         + (f", env spec {env_spec.id}" if env_spec is not None else ", no env spec (several tasks)") + f" -> {path}")
    return path


# ============================================================================ reading

def _obs_layout(space: Any, dataset_id: str) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """Our observation key -> (row shape, dtype, transpose HWC->CHW) for a Minari observation space."""
    from gymnasium import spaces

    def one(box: Any, key: str | None) -> tuple[str, tuple[tuple[int, ...], str, bool]]:
        if not isinstance(box, spaces.Box):
            raise HarnessError(f"Minari dataset {dataset_id}: observation space {box} is not a Box")
        shape = tuple(int(x) for x in box.shape)
        if len(shape) == 1 and key in (None, "proprio"):
            return "proprio", (shape, "float32", False)
        if len(shape) == 3 and box.dtype == np.uint8 and key in (None, "pixels"):
            if shape[0] == 3:
                return "pixels", (shape, "uint8", False)
            if shape[-1] == 3:
                return "pixels", ((3, shape[0], shape[1]), "uint8", True)
        raise HarnessError(f"Minari dataset {dataset_id}: observation {key or ''} {box} is neither a state vector "
                           "(1-d Box) nor an RGB image (uint8 Box (3, H, W) or (H, W, 3))")

    if isinstance(space, spaces.Dict):
        unknown = set(space.spaces) - set(OBS_KEYS)
        if unknown:
            raise HarnessError(f"Minari dataset {dataset_id}: observation keys {sorted(unknown)} are not ours "
                               f"({', '.join(OBS_KEYS)})")
        return dict(one(space.spaces[k], k) for k in OBS_KEYS if k in space.spaces)
    return dict([one(space, None)])


class _MinariStore(_WholeEpisodeStore):
    """A Minari dataset as a store; episodes are decoded whole and cached (LRU by bytes)."""
    format = "minari"

    def __init__(self, dataset_id: str, obs_keys: Sequence[str] | str | None, action_pad_dim: int | None,
                 cache_bytes: int, on_damage: Callable[[str], None] | None = None):
        super().__init__(cache_bytes, on_damage)
        import minari
        from gymnasium import spaces

        from harness.offline.dataset import _choose_obs
        _check_id(dataset_id)
        try:
            self.dataset = minari.load_dataset(dataset_id)
        except FileNotFoundError:
            local = ", ".join(_local_ids()) or "(none)"
            raise HarnessError(f"no Minari dataset {dataset_id!r} in {minari_root()} (MINARI_DATASETS_PATH); "
                               f"there: {local}") from None
        except Exception as exc:
            raise HarnessError(f"Minari dataset {dataset_id!r} cannot be opened ({type(exc).__name__}: {exc})") from None
        self.id = dataset_id
        self.root = Path(self.dataset.storage.data_path).parent
        self.layout = _obs_layout(self.dataset.observation_space, dataset_id)
        self.obs_spec = {k: (v[0], v[1]) for k, v in self.layout.items()}
        self.keys = _choose_obs(obs_keys, [k for k in OBS_KEYS if k in self.layout], self.root)
        act = self.dataset.action_space
        if not isinstance(act, spaces.Box) or len(act.shape) != 1:
            raise HarnessError(f"Minari dataset {dataset_id}: action space {act} is not a 1-d Box")
        stored = int(act.shape[0])
        if action_pad_dim is not None and action_pad_dim < stored:
            raise HarnessError(f"action_pad_dim {action_pad_dim} is smaller than Minari dataset {dataset_id}'s "
                               f"action dim {stored}")
        self.action_pad_dim = int(action_pad_dim or stored)
        spec = self.dataset.env_spec
        default_task = spec.kwargs.get("task", spec.name) if spec is not None else "unknown"
        from tasks.catalog import TASKS
        default_emb = TASKS.get(default_task).embodiment if default_task in TASKS else (
            spec.name if spec is not None else "unknown")
        indices = [int(i) for i in self.dataset.episode_indices]
        self.episode_index: list[int] = []
        self.episodes: list[EpisodeMeta] = []
        for meta in self.dataset.storage.get_episode_metadata(indices):
            i = int(meta["id"])
            try:
                length = int(meta["total_steps"]) + 1
                fields = {k: meta.get(k) for k in _META_FIELDS}
                em = EpisodeMeta(uid=str(fields["uid"] or f"{dataset_id}/{i}"),
                                 embodiment=str(fields["embodiment"] or default_emb),
                                 task=str(fields["task"] or default_task), policy=str(fields["policy"] or "unknown"),
                                 noise=None if fields["noise"] is None else float(fields["noise"]),
                                 action_dim=int(fields["action_dim"] or stored), length=length,
                                 seed=None if fields["env_seed"] is None else int(fields["env_seed"]),
                                 source=f"{dataset_id} episode {i}", offset=0)
            except (KeyError, TypeError, ValueError) as exc:
                self.damage(f"{dataset_id} episode {i}", f"malformed metadata ({type(exc).__name__}: {exc})")
                continue
            self.uid_to_id[em.uid] = len(self.episodes)
            self.episodes.append(em)
            self.episode_index.append(i)
        self.opened()

    def _decode(self, ep: int) -> dict[str, np.ndarray]:
        meta = self.episodes[ep]
        try:
            raw = next(iter(self.dataset.storage.get_episodes([self.episode_index[ep]])))
        except Exception as exc:
            raise DamagedData(f"unreadable ({type(exc).__name__}: {exc})") from None
        t = meta.length
        obs = raw["observations"]
        out: dict[str, np.ndarray] = {}
        for k in self.keys:
            v = np.asarray(obs[k] if isinstance(obs, dict) else obs)
            shape, dtype, hwc = self.layout[k]
            if hwc:
                v = v.transpose(0, 3, 1, 2)
            if v.shape != (t, *shape):
                raise DamagedData(f"{k} has shape {v.shape}, expected {(t, *shape)}")
            out[k] = np.ascontiguousarray(v, dtype=dtype)
        actions = np.asarray(raw["actions"], np.float32)
        if actions.shape[0] != t - 1 or actions.ndim != 2:
            raise DamagedData(f"actions have shape {actions.shape}, expected ({t - 1}, A)")
        out["action"] = np.zeros((t, self.action_pad_dim), np.float32)
        out["action"][:-1, :actions.shape[1]] = actions
        flags = np.zeros((3, t), bool)
        flags[0, 0] = flags[1, -1] = True
        flags[2, -1] = bool(np.asarray(raw["terminations"])[-1])
        out.update(zip(FLAG_KEYS, flags))
        return out

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def storage(self) -> dict[str, Any]:
        return {"compressed_columns": ["none"], "minari_id": self.id}

    def checksums(self) -> str:
        return "none"


