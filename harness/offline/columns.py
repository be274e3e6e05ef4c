"""Column files of one shard: writing, positioned reads, and their crc32 checksums.

A column holds one key's rows, episodes back to back: ``<key>.npy`` (a fixed 128-byte .npy header, then
the rows) or, compressed, ``<key>.zlib`` (zlib chunks of ``chunk_steps`` rows) with the chunk offsets in
``<key>.zindex.npy``.

Checksums: the writer records a crc32 per checksum chunk in the column's entry of ``shard.json``::

    "checksum": {"algorithm": "crc32", "rows": 16, "values": [...]}

A checksum chunk is ``rows`` consecutive rows of the column (the shard's ``chunk_steps``; the last chunk may
be shorter). For ``.npy`` columns the crc is of the chunk's raw row bytes; for ``.zlib`` columns it is of the
compressed chunk, so a check costs a crc32 of bytes a read fetches anyway. Every read checks the chunks it
touches and remembers the ones that passed (later reads of them skip the crc), so sampling costs what it
did before once a chunk has been seen. A mismatch raises :class:`DamagedData`: the store skips the episode.
A column written before checksums existed has no ``checksum`` entry and is read unverified.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from harness.offline.format import DamagedData

CHECKSUM = "crc32"
_NPY_HEADER_BYTES = 128      # fixed-size .npy header, rewritten with the final row count on commit


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header padded to exactly ``_NPY_HEADER_BYTES`` (np.load reads it as usual)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(int(s) for s in shape)})
    body = _NPY_HEADER_BYTES - 10
    if len(text) + 1 > body:
        raise ValueError(f"npy header too long for shape {shape}")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode("latin1")


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if fortran or dtype.hasobject:
        raise ValueError("fortran-ordered or object arrays are not accepted")
    return tuple(shape), dtype


class _ColumnWriter:
    """Appends rows of one key to a column file; ``finish`` makes it complete and returns its shard.json entry."""

    def __init__(self, directory: Path, key: str, row_shape: tuple[int, ...], dtype: np.dtype,
                 compression: str, chunk_steps: int):
        self.key, self.row_shape, self.dtype = key, tuple(row_shape), np.dtype(dtype)
        self.compressed = compression == "zlib"
        self.rows = 0
        self.chunk_steps = chunk_steps
        self.crcs: list[int] = []
        if self.compressed:
            self.path = directory / f"{key}.zlib"
            self.f = open(self.path, "wb")
            self.offsets = [0]
            self.pending: list[np.ndarray] = []
            self.pending_rows = 0
        else:
            self.path = directory / f"{key}.npy"
            self.f = open(self.path, "wb")
            self.f.write(_npy_header(self.dtype, (0, *self.row_shape)))
            self._crc, self._crc_rows = 0, 0   # the open checksum chunk

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.shape[1:] == self.row_shape, f"{self.key}: rows {rows.shape[1:]} vs column {self.row_shape}"
        self.rows += len(rows)
        if not self.compressed:
            raw = rows.tobytes()
            self.f.write(raw)
            row_bytes = len(raw) // max(len(rows), 1)
            i = 0
            while i < len(rows):   # crc32 per chunk_steps rows, chunks counted from the column's first row
                n = min(self.chunk_steps - self._crc_rows, len(rows) - i)
                self._crc = zlib.crc32(raw[i * row_bytes:(i + n) * row_bytes], self._crc)
                self._crc_rows += n
                i += n
                if self._crc_rows == self.chunk_steps:
                    self.crcs.append(self._crc)
                    self._crc, self._crc_rows = 0, 0
            return
        self.pending.append(rows)
        self.pending_rows += len(rows)
        while self.pending_rows >= self.chunk_steps:
            self._flush_chunk(self.chunk_steps)

    def _flush_chunk(self, n: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        chunk, rest = block[:n], block[n:]
        blob = zlib.compress(chunk.tobytes(), 1)   # level 1: 2-7x on rendered frames, fast to write
        self.f.write(blob)
        self.crcs.append(zlib.crc32(blob))
        self.offsets.append(self.offsets[-1] + len(blob))
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)

    def finish(self) -> dict[str, Any]:
        if self.compressed:
            if self.pending_rows:
                self._flush_chunk(self.pending_rows)
            np.save(self.path.with_name(f"{self.key}.zindex.npy"), np.asarray(self.offsets, np.int64))
        else:
            if self._crc_rows:
                self.crcs.append(self._crc)
                self._crc, self._crc_rows = 0, 0
            self.f.seek(0)
            self.f.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"storage": "zlib" if self.compressed else "npy", "rows": self.rows,
                "shape": list(self.row_shape), "dtype": self.dtype.str,
                **({"chunk_steps": self.chunk_steps} if self.compressed else {}),
                "checksum": {"algorithm": CHECKSUM, "rows": self.chunk_steps, "values": self.crcs}}

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()


class _FileCache:
    """At most ``max_open`` read-only file descriptors, least recently used closed first.

    Reads happen under the lock, so a descriptor is never closed while another thread reads it."""

    def __init__(self, max_open: int = 128):
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()

    def pread(self, path: Path, nbytes: int, offset: int) -> bytes:
        key = str(path)
        with self.lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = os.open(key, os.O_RDONLY)
                self._fds[key] = fd
                while len(self._fds) > self.max_open:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(key)
            data = os.pread(fd, nbytes, offset)
        if len(data) != nbytes:
            raise DamagedData(f"{path}: short read ({len(data)} of {nbytes} bytes at offset {offset})")
        return data

    def close(self) -> None:
        with self.lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:   # a dataset that was never closed still gives its descriptors back
        try:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        except Exception:
            pass


def _name(path: Path) -> str:
    """``shard-000003/pixels.zlib``: enough to find the file from the dataset's root."""
    return f"{path.parent.name}/{path.name}"


class _Column:
    """Reads rows [a, b) of one key of one shard with positioned reads, checking the chunks' checksums."""

    def __init__(self, directory: Path, key: str, info: dict[str, Any], files: _FileCache):
        self.key, self.files = key, files
        self.row_shape = tuple(int(x) for x in info["shape"])
        self.dtype = np.dtype(info["dtype"])
        self.row_items = int(np.prod(self.row_shape, dtype=np.int64))
        self.row_bytes = self.row_items * self.dtype.itemsize
        self.rows = int(info["rows"])
        self.compressed = info["storage"] == "zlib"
        if self.compressed:
            self.path = directory / f"{key}.zlib"
            self.chunk = int(info["chunk_steps"])
            index_path = directory / f"{key}.zindex.npy"
            try:
                self.offsets = np.load(index_path, allow_pickle=False)
            except Exception as exc:
                raise DamagedData(f"{_name(index_path)} unreadable ({type(exc).__name__}: {exc})") from None
            if self.offsets.ndim != 1 or len(self.offsets) != -(-self.rows // max(self.chunk, 1)) + 1:
                raise DamagedData(f"{_name(index_path)} holds {self.offsets.shape} offsets; {self.rows} rows in "
                                  f"chunks of {self.chunk} need {-(-self.rows // max(self.chunk, 1)) + 1}")
            size = self.path.stat().st_size if self.path.exists() else 0
            complete = int(np.searchsorted(self.offsets, size, side="right")) - 1  # whole chunks on disk
            self.readable_rows = min(self.rows, max(complete, 0) * self.chunk)
        else:
            self.path = directory / f"{key}.npy"
            if not self.path.exists():
                raise DamagedData(f"{_name(self.path)} is missing")
            with open(self.path, "rb") as f:
                try:
                    shape, dtype = _read_npy_header(f)
                except Exception as exc:
                    raise DamagedData(f"{_name(self.path)}: bad .npy header ({exc})") from None
                self.data_offset = f.tell()
            if tuple(shape[1:]) != self.row_shape or dtype != self.dtype:
                raise DamagedData(f"{_name(self.path)} holds {dtype} {shape}, shard.json says "
                                  f"{self.dtype} {self.row_shape}")
            size = self.path.stat().st_size
            self.readable_rows = min(self.rows, shape[0], (size - self.data_offset) // max(self.row_bytes, 1))
        self._init_checksums(info.get("checksum"))

    def _init_checksums(self, ck: Any) -> None:
        self.crcs: list[int] | None = None
        if ck is None:
            return   # written before checksums existed: read unverified
        try:
            if ck["algorithm"] != CHECKSUM:
                raise ValueError(f"unknown checksum algorithm {ck['algorithm']!r}")
            self.crc_rows = int(ck["rows"])
            crcs = [int(v) for v in ck["values"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedData(f"{_name(self.path)}: malformed checksum entry in shard.json ({exc})") from None
        if self.crc_rows < 1 or (self.compressed and self.crc_rows != self.chunk):
            raise DamagedData(f"{_name(self.path)}: checksum chunks of {self.crc_rows} rows do not fit the column")
        n = -(-self.rows // self.crc_rows)
        if len(crcs) != n:
            raise DamagedData(f"{_name(self.path)}: shard.json holds {len(crcs)} checksums, {self.rows} rows in "
                              f"chunks of {self.crc_rows} need {n}")
        self.crcs = crcs
        self.verified = bytearray(n)   # 1: this chunk's bytes matched its checksum (races only repeat a check)
        if not self.compressed and self.readable_rows < self.rows:
            # A truncated file: a chunk cut short cannot be verified, so it is not readable either.
            self.readable_rows = self.readable_rows // self.crc_rows * self.crc_rows

    @property
    def checksummed(self) -> bool:
        return self.crcs is not None

    def _check(self, k: int, data: Any, rows: str) -> None:
        assert self.crcs is not None
        got = zlib.crc32(data)
        if got != self.crcs[k]:
            raise DamagedData(f"{_name(self.path)}: {rows} is corrupt (crc32 {got:08x}, shard.json records "
                              f"{self.crcs[k]:08x})")

    def read(self, a: int, b: int) -> np.ndarray:
        if b > self.readable_rows:
            raise DamagedData(f"{_name(self.path)}: rows {a}:{b} lie beyond the {self.readable_rows} readable rows")
        if not self.compressed:
            return self._read_npy(a, b)
        c0, c1 = a // self.chunk, (b - 1) // self.chunk
        lo, hi = int(self.offsets[c0]), int(self.offsets[c1 + 1])
        if hi < lo:
            raise DamagedData(f"{_name(self.path)}: chunk offsets {lo} > {hi} in its zindex")
        raw = self.files.pread(self.path, hi - lo, lo)
        view = memoryview(raw)
        parts = []
        for c in range(c0, c1 + 1):
            s, e = int(self.offsets[c]) - lo, int(self.offsets[c + 1]) - lo
            if self.crcs is not None and not self.verified[c]:
                self._check(c, view[s:e], f"chunk {c}")
                self.verified[c] = 1
            try:
                parts.append(zlib.decompress(view[s:e]))   # releases the GIL: prefetch threads overlap
            except zlib.error as exc:
                raise DamagedData(f"{_name(self.path)}: chunk {c} is corrupt ({exc})") from None
        buf = b"".join(parts) if len(parts) > 1 else parts[0]
        skip = (a - c0 * self.chunk) * self.row_bytes
        if len(buf) < skip + (b - a) * self.row_bytes:
            raise DamagedData(f"{_name(self.path)}: chunks {c0}:{c1 + 1} decompress to {len(buf)} bytes, "
                              f"rows {a}:{b} need {skip + (b - a) * self.row_bytes}")
        out = np.frombuffer(buf, self.dtype, count=(b - a) * self.row_items, offset=skip)
        return out.reshape(b - a, *self.row_shape)

    def _read_npy(self, a: int, b: int) -> np.ndarray:
        rb = self.row_bytes
        if self.crcs is None:
            raw = self.files.pread(self.path, (b - a) * rb, self.data_offset + a * rb)
            return np.frombuffer(raw, self.dtype).reshape(b - a, *self.row_shape)
        n = self.crc_rows
        k0, k1 = a // n, (b - 1) // n
        if self.verified.find(0, k0, k1 + 1) < 0:   # every chunk touched was checked already: just the rows
            raw = self.files.pread(self.path, (b - a) * rb, self.data_offset + a * rb)
            return np.frombuffer(raw, self.dtype).reshape(b - a, *self.row_shape)
        lo, hi = k0 * n, min((k1 + 1) * n, self.rows)   # whole chunks, to check them
        raw = self.files.pread(self.path, (hi - lo) * rb, self.data_offset + lo * rb)
        view = memoryview(raw)
        for k in range(k0, k1 + 1):
            if not self.verified[k]:
                r0, r1 = k * n, min((k + 1) * n, self.rows)
                self._check(k, view[(r0 - lo) * rb:(r1 - lo) * rb], f"checksum chunk {k} (rows {r0}:{r1})")
                self.verified[k] = 1
        out = np.frombuffer(raw, self.dtype, count=(b - a) * self.row_items, offset=(a - lo) * rb)
        return out.reshape(b - a, *self.row_shape)

    def read_all(self) -> np.ndarray:
        return self.read(0, self.readable_rows) if self.readable_rows else np.zeros((0, *self.row_shape), self.dtype)

    def read_all_tolerant(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The readable rows, with chunks that fail their checksum zeroed: ``(rows, bad row mask, reasons)``.
        For the small flag columns read whole at opening: a damaged chunk costs only its episodes."""
        try:
            data = self.read_all()
            return data, np.zeros(len(data), bool), []
        except DamagedData as exc:
            if self.crcs is None and not self.compressed:
                raise
            first_error = str(exc)
        step = self.chunk if self.compressed else self.crc_rows
        data = np.zeros((self.readable_rows, *self.row_shape), self.dtype)
        bad = np.zeros(self.readable_rows, bool)
        reasons = []
        for r0 in range(0, self.readable_rows, step):
            r1 = min(r0 + step, self.readable_rows)
            try:
                data[r0:r1] = self.read(r0, r1)
            except DamagedData as exc:
                bad[r0:r1] = True
                reasons.append(str(exc))
        return data, bad, reasons or [first_error]
