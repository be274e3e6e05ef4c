"""Pre-trained world models in the MLflow model registry: register one, and use ``models:/NAME/VERSION`` (or
``models:/NAME@ALIAS``) wherever a pre-training folder is used (``run-stream --pretrained``, ``pipeline
--pretrained``, ``retrieve``).

A version (``pretrain --register NAME``, or ``cli.py models register DIR NAME``) holds what GSA fine-tunes from,
logged as the ``registered/`` artifacts of the pre-training run it came from:

    world_model.pt     the pre-trained weights with their config
    index/             the retrieval index over the dataset's first frames
    pretrain.json      the pre-training config, observation keys, seed and the dataset it read
    provenance.json    the dataset's manifest and checksums, sha256 of every file above, the commit that
                       trained it and the package versions

and tags that say the same in short (``dataset``, ``dataset_fingerprint``, ``git_commit``, ``preset``,
``grad_updates``, ``obs_keys``, ``world_model_sha256``). Resolving a ``models:/`` URI downloads the version
once into ``$GSA_MODELS_DIR`` (default ``~/.cache/gsa-harness/models``) as ``NAME/VERSION/``, checks the
world model's sha256 against the version's tag, and gives that folder, which is a pre-training folder like
any other. An alias is resolved to its version first, so a moved alias is a new download.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

PREFIX = "models:/"
ARTIFACT_DIR = "registered"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_FORMAT = "gsa-registered-model"
PROVENANCE_VERSION = 1
COMPLETE_MARK = ".complete"
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


def is_model_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def models_dir() -> Path:
    return Path(os.environ.get("GSA_MODELS_DIR") or Path.home() / ".cache" / "gsa-harness" / "models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _client(uri: str | None = None) -> Any:
    from harness.reporting import MlflowReporter
    return MlflowReporter(uri).client


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


# ============================================================================ provenance

def dataset_provenance(data: str) -> dict[str, Any]:
    """What identifies the dataset a model was pre-trained on: its manifest (or Minari metadata) and the
    checksums of the files that hold its episode tables (which hold the columns' crc32s)."""
    from harness.offline import MANIFEST_FILE, SHARD_FILE, SHARDS_DIR
    from harness.offline.minari import is_minari_ref, minari_root
    out: dict[str, Any] = {"ref": data}
    if is_minari_ref(data):
        meta = minari_root() / data[len("minari:"):] / "data" / "metadata.json"
        if not meta.is_file():
            return out | {"available": False}
        return out | {"format": "minari", "metadata": json.loads(meta.read_text()),
                      "checksums": {"data/metadata.json": _sha256(meta)}}
    root = Path(data)
    if (root / MANIFEST_FILE).is_file():
        manifest = json.loads((root / MANIFEST_FILE).read_text())
        sums = {MANIFEST_FILE: _sha256(root / MANIFEST_FILE)}
        for shard in manifest.get("shards", []):
            f = root / SHARDS_DIR / str(shard.get("name")) / SHARD_FILE
            if f.is_file():
                sums[f.relative_to(root).as_posix()] = _sha256(f)
        return out | {"format": "gsa-offline", "manifest": manifest, "checksums": sums}
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.npz"))
        return out | {"format": "ncrl", "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return out | {"available": False}


def _provenance(pdir: Path, info: dict[str, Any], run: Any) -> dict[str, Any]:
    from harness.provenance import git_commit, versions
    files = sorted(p for p in pdir.iterdir() if p.name in ("world_model.pt", "pretrain.json")) + \
        sorted((pdir / "index").rglob("*"))
    return {"format": PROVENANCE_FORMAT, "version": PROVENANCE_VERSION,
            "pretrain_run_id": info.get("run_id"), "trained_at_commit": run.data.tags.get("git_commit", "unknown"),
            "registered_at_commit": git_commit(), "versions": versions(), "config": info.get("config"),
            "preset": info.get("preset"), "seed": info.get("seed"), "obs_keys": info.get("obs_keys"),
            "dataset": dataset_provenance(str(info.get("data"))) | {"fingerprint": info.get("dataset_fingerprint"),
                                                                     "sha256": info.get("dataset_sha256")},
            "files": {p.relative_to(pdir).as_posix(): _sha256(p) for p in files if p.is_file()}}


# ============================================================================ registering

def check_names(name: str, aliases: tuple[str, ...] = ()) -> None:
    """A registered model name and aliases that ``models:/`` URIs can name; a clear error otherwise."""
    if not re.fullmatch(r"[\w.-]+", name or ""):
        raise HarnessError(f"registered model name {name!r}: use letters, digits, '_', '-' and '.'")
    for alias in aliases:
        if not re.fullmatch(r"[A-Za-z_][\w-]*", alias) or re.fullmatch(r"[vV]\d+|latest", alias):
            raise HarnessError(f"alias {alias!r}: letters, digits, '_' and '-', not starting with a digit "
                               "(and not 'latest' or vN)")


def register_pretrained(pretrain_dir: str | Path, name: str, *, aliases: tuple[str, ...] = (),
                        echo: Callable[[str], None] = print, tracking_uri: str | None = None) -> str:
    """Register the pre-training run in ``pretrain_dir`` (world model, index, provenance) as a new version of
    the registered model ``name``; returns its ``models:/NAME/VERSION`` URI."""
    from methods.backbone.checkpoint import load
    from methods.gsa.pretrain import PRETRAIN_FILE, WORLD_MODEL_FILE
    from methods.gsa.retrieval import INDEX_DIR
    check_names(name, aliases)
    pdir = Path(pretrain_dir).resolve()
    for need, how in ((pdir / PRETRAIN_FILE, "a pre-training run folder (`cli.py pretrain --out DIR`)"),
                      (pdir / WORLD_MODEL_FILE, "a trained world model (run `pretrain` until its first checkpoint)"),
                      (pdir / INDEX_DIR / "index.json", f"a retrieval index: `cli.py build-index {pdir}`")):
        if not need.is_file():
            raise HarnessError(f"cannot register {pdir}: missing {need.name}; it needs {how}")
    info = json.loads((pdir / PRETRAIN_FILE).read_text())
    client = _client(tracking_uri)
    try:
        run = client.get_run(info["run_id"])
    except Exception:
        raise HarnessError(f"{pdir}: its pre-training run {info.get('run_id')!r} is not in the MLflow store "
                           f"{client.tracking_uri}; register from the store it was trained with") from None
    payload = load(pdir / WORLD_MODEL_FILE)
    prov = _provenance(pdir, info, run)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / ARTIFACT_DIR
        stage.mkdir()
        shutil.copy2(pdir / WORLD_MODEL_FILE, stage / WORLD_MODEL_FILE)
        shutil.copy2(pdir / PRETRAIN_FILE, stage / PRETRAIN_FILE)
        shutil.copytree(pdir / INDEX_DIR, stage / INDEX_DIR, ignore=shutil.ignore_patterns("*.tmp"))
        (stage / PROVENANCE_FILE).write_text(json.dumps(prov, indent=1, default=str))
        existing = len(client.search_model_versions(f"name='{name}'")) if _registered(client, name) else 0
        version_dir = f"{ARTIFACT_DIR}/{name}-{existing + 1}"
        with _no_progress_bars():
            client.log_artifacts(run.info.run_id, str(stage), version_dir)
    if not _registered(client, name):
        client.create_registered_model(name, description="GSA pre-trained world models (gsa-harness)")
    tags = {"dataset": str(info.get("data")), "dataset_fingerprint": str(info.get("dataset_fingerprint")),
            "git_commit": prov["trained_at_commit"], "preset": str(info.get("preset")),
            "grad_updates": str(payload.get("grad_updates")), "obs_keys": ",".join(info.get("obs_keys", [])),
            "world_model_sha256": prov["files"][WORLD_MODEL_FILE]}
    version = client.create_model_version(name, f"{run.info.artifact_uri}/{version_dir}", run_id=run.info.run_id,
                                          tags=tags, description=f"pre-trained on {info.get('data')}")
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    uri = f"{PREFIX}{name}/{version.version}"
    echo(f"registered {uri}" + "".join(f" (alias {PREFIX}{name}@{a})" for a in aliases)
         + f": world model, index and provenance of pre-training run {run.info.run_id}")
    return uri


def _registered(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:
        return False


# ============================================================================ resolving

def resolve_pretrained(value: str, *, echo: Callable[[str], None] = print, tracking_uri: str | None = None) -> str:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> the local folder of that version (downloaded once);
    anything else is returned as it is."""
    if not is_model_uri(value):
        return value
    m = _URI_RE.match(value)
    if not m:
        raise HarnessError(f"{value!r} is not a model URI: models:/NAME/VERSION or models:/NAME@ALIAS")
    name, version, alias = m.group("name", "version", "alias")
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception:
        known = sorted(rm.name for rm in client.search_registered_models())
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise HarnessError(f"{value}: no {what} of a registered model {name!r} in {client.tracking_uri}; "
                           f"registered models there: {', '.join(known) or '(none)'}") from None
    dest = models_dir() / name / str(mv.version)
    if (dest / COMPLETE_MARK).is_file():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dest.parent))
    try:
        from mlflow.artifacts import download_artifacts
        with _no_progress_bars():
            download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=client.tracking_uri)
        got = tmp / Path(mv.source.rstrip("/")).name if not (tmp / "world_model.pt").is_file() else tmp
        want = mv.tags.get("world_model_sha256")
        if not (got / "world_model.pt").is_file() or (want and _sha256(got / "world_model.pt") != want):
            raise HarnessError(f"{value}: the downloaded world model is missing or does not match the version's "
                               "world_model_sha256 tag")
        (got / COMPLETE_MARK).write_text(json.dumps({"uri": value, "version": mv.version, "source": mv.source}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    echo(f"{value} -> version {mv.version}, in {dest}")
    return str(dest)
