"""A built teacher-output cache on disk: checked when opened, read by rows.

Layout of a cache folder:

    manifest.json            what was cached, from what (the fingerprint), sizes, checksums
    view000/<entry>.<column>.bin, view001/...   one row per example (its dataset index)

`manifest.json` is written last, by an atomic rename of the whole folder, so
a folder without it was never completed. On opening, every file's length is
checked against the manifest (and, with `verify`, its CRC-32), so a truncated
or damaged file is refused instead of being read as numbers. Rows are read
with positional reads, never mapped, so a cache larger than memory trains
with the memory of one batch.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from kdkeras.cache.layout import Column, columns, decode
from kdkeras.keys import INDEX, LOGITS, TEACHER, strong_key

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 22


class CacheError(ValueError):
    """A teacher cache that cannot be used: missing, incomplete, or of another kind."""


class CacheMismatchError(CacheError):
    """A complete cache made from other inputs than the ones asked for (stale)."""


class CacheCorruptError(CacheError):
    """A cache file whose length or checksum is not the one the manifest records."""


def view_dir(view: int) -> str:
    return f"view{int(view):03d}"


def file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """`key: found != expected` for every key whose values differ (nested dicts walked)."""
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif _normal(a) != _normal(b):
            out.append(f"{prefix}{key}: cache has {_short(b)}, asked for {_short(a)}")
    return out


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def _short(value) -> str:
    text = repr(_normal(value))
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


class TeacherCache:
    """The teacher's outputs for every (view, example) of one data split.

    Open one with `TeacherCache.open(path)`; feed it to training through
    `kdkeras.data.load(..., teacher_cache=cache)` (the batches then carry
    `x["teacher"]`, the cached outputs of each example's view) and to
    `kdkeras.Distiller(None, student, methods, teacher_cache=cache)`, which
    then needs no teacher model.
    """

    def __init__(self, path: str, manifest: dict, only: Sequence[str] | None = None):
        self.path = path
        self.manifest = manifest
        self._columns = [
            Column(entry, c["name"], c["dtype"], tuple(c["shape"]))
            for entry, spec in manifest["entries"].items() for c in spec["columns"]
        ]
        # an entry selected brings its strong view's entry (MLKD) when the cache holds one
        wanted = None if only is None else [LOGITS, *only]
        self._only = None if wanted is None else tuple(dict.fromkeys(
            wanted + [strong_key(e) for e in wanted if strong_key(e) in manifest["entries"]]))
        self._fds: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def select(self, entries: Sequence[str]) -> "TeacherCache":
        """This cache reading only `entries` (and the logits): one cache built for
        the taps of a whole sweep serves each run the few it reads, at their I/O."""
        missing = [e for e in entries if e not in self.manifest["entries"]]
        if missing:
            raise CacheError(f"Teacher cache {self.path!r} holds no {missing} (it has {sorted(self.entries)}).")
        return type(self)(self.path, self.manifest, only=entries)

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str, expect: dict | None = None, verify: bool = True) -> "TeacherCache":
        """Open the cache at `path`; with `expect` (a fingerprint), refuse a cache made
        from anything else, naming what differs; with `verify`, check every file's CRC-32."""
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            partial = os.path.exists(path + ".partial")
            raise CacheError(
                f"No complete teacher cache at {path!r}"
                + (" (an interrupted build is in its .partial folder: build again to finish it)."
                   if partial else "; build one with kdkeras.cache.build_teacher_cache."))
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise CacheError(f"Teacher cache {path!r} has format {manifest.get('format')!r}; "
                             f"this kdkeras reads format {FORMAT}. Rebuild it.")
        cache = cls(path, manifest)
        cache.check_files(verify)
        if expect is not None:
            cache.check_fingerprint(expect)
        return cache

    def check_files(self, verify: bool = True) -> None:
        """Every file exists with the recorded length (and CRC-32 with `verify`)."""
        n = self.num_examples
        for view in range(self.views):
            for column in self._columns:
                rel = os.path.join(view_dir(view), f"{column.key}.bin")
                path = os.path.join(self.path, rel)
                want = n * column.row_bytes
                size = os.path.getsize(path) if os.path.exists(path) else None
                if size != want:
                    raise CacheCorruptError(
                        f"Teacher cache file {path!r} has {size} bytes, the manifest says {want} "
                        f"({n} examples x {column.row_bytes} bytes): truncated or replaced. Rebuild the cache.")
                if verify and file_crc32(path) != self.manifest["files"][rel]:
                    raise CacheCorruptError(
                        f"Teacher cache file {path!r} fails its CRC-32 check: damaged. Rebuild the cache.")

    def check_fingerprint(self, expect: dict) -> None:
        found = self.fingerprint
        diff = differences(expect, found)
        if diff:
            raise CacheMismatchError(
                f"Teacher cache {self.path!r} was made from other inputs (stale): "
                + "; ".join(diff) + ". Rebuild it (--rebuild_teacher_cache) or point to another folder.")

    def check_data(self, **spec: Any) -> None:
        """Refuse to feed this cache to a pipeline of other data (naming what differs)."""
        diff = differences(spec, self.fingerprint["data"])
        if diff:
            raise CacheMismatchError(
                f"Teacher cache {self.path!r} holds other data than this pipeline: " + "; ".join(diff) + ".")

    # -- what it holds ------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def num_examples(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def views(self) -> int:
        return int(self.manifest["views"])

    @property
    def storage(self) -> str:
        return self.fingerprint["storage"]

    @property
    def entries(self) -> dict[str, tuple]:
        """Each cached entry (`logits` and the tapped layers) read, and its per-example shape."""
        return {k: tuple(v["shape"]) for k, v in self.manifest["entries"].items()
                if self._only is None or k in self._only}

    @property
    def method_taps(self) -> dict[str, list[str]]:
        """The teacher layers each method of the build tapped, by method name (those
        whose layers this cache reads)."""
        entries = self.entries
        return {m: taps for m, taps in self.manifest.get("method_taps", {}).items()
                if all(t in entries for t in taps)}

    @property
    def teacher_top1(self) -> float | None:
        return self.manifest.get("teacher_top1")

    @property
    def bytes_per_example_view(self) -> int:
        """Bytes read per example per view (the selected entries)."""
        return sum(c.row_bytes for c in self._read_columns)

    @property
    def _read_columns(self) -> list[Column]:
        return [c for c in self._columns if self._only is None or c.entry in self._only]

    # -- reading -------------------------------------------------------------------------
    def _fd(self, view: int, column: Column) -> int:
        key = (view, column.key)
        with self._lock:
            if key not in self._fds:
                path = os.path.join(self.path, view_dir(view), f"{column.key}.bin")
                self._fds[key] = os.open(path, os.O_RDONLY)
            return self._fds[key]

    def read_columns(self, view: int, indices) -> dict[str, np.ndarray]:
        """The raw columns of the rows `indices` of one view, by column key."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        view = int(view) % self.views
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
            bad = indices[(indices < 0) | (indices >= self.num_examples)][0]
            raise IndexError(f"Example index {int(bad)} is outside the cache's 0..{self.num_examples - 1}.")
        out = {}
        for column in self._read_columns:
            fd, size = self._fd(view, column), column.row_bytes
            data = b"".join(os.pread(fd, size, int(i) * size) for i in indices)
            out[column.key] = np.frombuffer(data, column.dtype).reshape((len(indices),) + column.shape)
        return out

    def read(self, view: int, indices) -> dict[str, np.ndarray]:
        """The decoded float32 outputs of the rows `indices` of one view, by entry."""
        out = self.attach({INDEX: tf.constant(np.asarray(indices, np.int64))}, tf.constant(view, tf.int64))
        return {k: v.numpy() for k, v in out[TEACHER].items()}

    def attach(self, x: dict, view) -> dict:
        """`x` (a batch with its dataset `index`) plus `x["teacher"]`: the cached
        outputs of its examples in `view` (TF ops; used inside tf.data)."""
        cols = self._read_columns
        dtypes = [tf.as_dtype(c.dtype) for c in cols]

        def read(view_value, indices):
            got = self.read_columns(int(view_value), indices)
            return [got[c.key] for c in cols]

        arrays = tf.numpy_function(read, [view, x[INDEX]], dtypes, stateful=False)
        if not isinstance(arrays, (list, tuple)):  # one column comes back bare
            arrays = [arrays]
        by_entry: dict[str, dict[str, tf.Tensor]] = {}
        for column, array in zip(cols, arrays):
            array.set_shape((None,) + column.shape)
            by_entry.setdefault(column.entry, {})[column.name] = array
        teacher = {entry: decode(entry, parts, self.storage, self.entries[entry])
                   for entry, parts in by_entry.items()}
        for entry, value in teacher.items():
            value.set_shape((None,) + self.entries[entry])
        return {**x, TEACHER: teacher}

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (f"TeacherCache({self.path!r}, {self.num_examples} examples x {self.views} views, "
                f"entries {list(self.entries)}, {self.storage})")


def column_specs(entries: dict[str, tuple], storage: str, top_k: int | None) -> dict[str, dict]:
    """The manifest's `entries`: each entry's shape and its columns."""
    return {entry: {"shape": list(shape),
                    "columns": [{"name": c.name, "dtype": c.dtype, "shape": list(c.shape)}
                                for c in columns(entry, shape, storage, top_k)]}
            for entry, shape in entries.items()}
