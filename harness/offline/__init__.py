"""Offline, non-curated datasets (GSA Section 3.1/4 "Dataset"): storage, streaming reads, sampling.

Two on-disk layouts are read; one is written.

**gsa-offline (ours)**: episodes appended to shards, with a manifest::

    DIR/manifest.json                  format, schema (obs shapes, padded action dim), committed shards
    DIR/shards/shard-000000/shard.json this shard's schema, storage, checksums and episode table (metadata)
    DIR/shards/shard-000000/<key>.npy  one column per key, rows = stored steps, episodes back to back
    DIR/shards/shard-000000/pixels.zlib + pixels.zindex.npy   (compressed columns: zlib chunks + offsets)

Columns: ``pixels`` uint8 (3, H, W) and/or ``proprio`` float32 (D,); ``action`` float32 (A,) zero-padded
(the action taken at that step, zeros on the last step: the replay's convention); ``is_first``, ``is_last``,
``is_terminal`` bool. No reward is stored. Per episode, the shard's table records embodiment, task, source
policy, noise sigma, native action dim (the action mask is its first ``action_dim`` entries), seed and
where its rows lie. A shard is written in ``shard-N.tmp/`` and renamed when complete, then the manifest
is replaced atomically, so a crashed collection leaves a loadable dataset of its completed shards.

Reads are positioned reads (``os.pread``) of just the rows a sequence needs: nothing is memory-mapped or
loaded whole, so resident memory does not grow with the dataset (``benchmarks/bench_offline_data.py``).
Compressed pixel columns hold zlib chunks of ``chunk_steps`` rows; a sequence decompresses the chunks it
touches. Every column records a crc32 per ``chunk_steps`` rows in ``shard.json``, checked by every read
that touches the chunk (once per chunk per opened dataset); datasets written before checksums load
unverified (``summary()["checksums"] == "none"``).

**ncrl (the paper code's public data)**: one ``.npz`` per episode (``harness.offline.ncrl``).

Damaged data: an unreadable, truncated, inconsistent or checksum-failing episode is skipped with a
:class:`DamagedEpisodeWarning` (one line, once) and counted (``dataset.damaged``,
``dataset.damage_report()``); the rest loads. A dataset with no usable episode, or whose parts disagree on
the schema (the manifest with itself or with a shard), is a :class:`~harness.errors.HarnessError`.

Modules (one job each, after ``minari/dataset/``): ``format`` (names, episode record, manifest and its
checks), ``columns`` (column files, positioned reads, checksums), ``store`` (the reading interface and its
damage bookkeeping), ``shards`` (the writer and the shard store), ``ncrl`` (the paper code's npz reader),
``dataset`` (:func:`open_dataset`, the view and sampling), ``prefetch`` (:class:`Prefetcher`).
"""
from harness.offline.columns import CHECKSUM, _Column, _ColumnWriter, _FileCache, _npy_header, _read_npy_header
from harness.offline.dataset import OfflineDataset, _choose_obs, image_grid, open_dataset
from harness.offline.format import (
                                    COMPRESSIONS,
                                    FLAG_KEYS,
                                    FORMAT,
                                    FORMAT_VERSION,
                                    MANIFEST_FILE,
                                    NCRL_NAME,
                                    OBS_KEYS,
                                    SAMPLE_EXTRAS,
                                    SHARD_FILE,
                                    SHARDS_DIR,
                                    DamagedData,
                                    DamagedEpisodeWarning,
                                    EpisodeMeta,
                                    _atomic_write_json,
                                    _read_manifest,
                                    _schema,
                                    _schema_diff,
                                    check_shard_schema,
                                    schema_conflicts,
)
from harness.offline.ncrl import _NcrlStore, _npz_member_prefix
from harness.offline.prefetch import Prefetcher
from harness.offline.shards import DatasetWriter, _ShardStore
from harness.offline.store import _MAX_WARNINGS, _Store

__all__ = [
    # the public interface
    "CHECKSUM", "COMPRESSIONS", "FLAG_KEYS", "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "NCRL_NAME", "OBS_KEYS",
    "SAMPLE_EXTRAS", "SHARD_FILE", "SHARDS_DIR", "DamagedData", "DamagedEpisodeWarning", "DatasetWriter",
    "EpisodeMeta", "OfflineDataset", "Prefetcher", "check_shard_schema", "image_grid", "open_dataset",
    "schema_conflicts",
    # internal names, importable from here as from the former single module (the collector and the
    # benchmarks use _atomic_write_json and _read_manifest)
    "_atomic_write_json", "_read_manifest", "_schema", "_schema_diff", "_choose_obs", "_Column", "_ColumnWriter",
    "_FileCache", "_npy_header", "_read_npy_header", "_NcrlStore", "_npz_member_prefix", "_ShardStore", "_Store",
    "_MAX_WARNINGS",
]
